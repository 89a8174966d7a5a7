"""A k-nearest-neighbour classification head over labelled embeddings.

The talk's solver: P(c | x) is proportional to the sum, over the K nearest stored
embeddings e_i of class c, of exp(-||x - e_i||^2 / 2 sigma^2). Classes are added by
pushing examples through the network (:meth:`KNNClassifier.add_examples`), with no
retraining.

The stored examples are non-trainable layer weights, so ``.keras`` files and SavedModel
exports carry them. Weights have fixed shapes, so the layer holds ``capacity`` rows of
which the first ``count`` are in use. Two backends:

- ``"exact"``: distances by one matrix product and ``top_k`` in ``keras.ops``, so it runs
  under every Keras backend (TensorFlow, JAX, PyTorch), under XLA/jit, on GPUs, and in
  stock TF Serving. Each query is compared with all ``capacity`` rows (unused rows are
  masked), which keeps shapes static: size ``capacity`` near what you will store.
- ``"fanng"``: the FANNG TensorFlow custom op over a graph stored in the weights;
  sublinear on CPU for large example sets. TensorFlow only (``KERAS_BACKEND=tensorflow``).
  A SavedModel using it needs ``tf.load_op_library`` on the library
  (``hybrid_keras.fanng.ops.library_path()``) or a model server built with the op.

Input checks. Eager calls refuse NaN or infinite queries, zero queries under
``metric="cosine"`` (no direction; ``FanngIndex`` refuses them too) and a head with no
examples, with a ValueError. Traced calls (``model.predict``, ``tf.function``, ``jax.jit``,
SavedModel serving) cannot raise on values, so there a query row with NaN or infinite
values gives a row of NaN, and a row with no evidence (a zero query under cosine, or a
head with no examples) gives uniform probabilities. Finite queries never give NaN: the
exact backend computes distances in power-of-two scaled units, so embeddings up to
float32's limit neither overflow nor cancel to inf - inf.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from hybrid_keras.layers.normalization import l2_normalize

BACKENDS = ("exact", "fanng")
METRICS = ("l2", "cosine")
# Smallest normal float32: magnitudes are floored here before taking log2.
_TINY = float(np.finfo(np.float32).tiny)


def _unit_rows_numpy(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64 norms, so values near float32's limit do not overflow)."""
    wide = vectors.astype(np.float64)
    return (wide / np.linalg.norm(wide, axis=1, keepdims=True)).astype(np.float32)


def _validated_examples(embeddings, labels, dim: int | None, num_classes: int, metric: str):
    """``(embeddings [N, D] float32, labels [N] int32)`` checked, or a ValueError naming the argument."""
    try:
        embeddings = np.asarray(embeddings, np.float32)
    except (TypeError, ValueError):
        raise ValueError(f"embeddings must be numeric [examples, D], got {type(embeddings).__name__} "
                         f"of dtype {np.asarray(embeddings).dtype}") from None
    labels = np.asarray(labels)
    expected = "[examples, D]" if dim is None else f"[examples, {dim}]"
    if embeddings.ndim in (1, 2) and len(embeddings) == 0:
        raise ValueError(f"embeddings must hold at least one example {expected}, got shape {embeddings.shape}")
    if embeddings.ndim != 2 or (dim is not None and embeddings.shape[1] != dim):
        raise ValueError(f"embeddings must be {expected}, got shape {embeddings.shape}")
    if labels.ndim != 1 and not (labels.ndim == 2 and labels.shape[1] == 1):
        raise ValueError(f"labels must be [examples] integers, got shape {labels.shape}")
    labels = labels.reshape(-1)
    if len(labels) != len(embeddings):
        raise ValueError(f"labels must have one entry per embedding: {len(embeddings)} embeddings but "
                         f"{len(labels)} labels")
    if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be integers in [0, {num_classes}), got dtype {labels.dtype} and values "
                         f"{np.unique(labels)[:10]}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or infinite values")
    if metric == "cosine":
        zero = np.flatnonzero(~np.any(embeddings != 0, axis=1))
        if len(zero):
            raise ValueError(f"embeddings: cosine metric: zero vectors have no direction (rows {zero[:10].tolist()})")
        embeddings = _unit_rows_numpy(embeddings)
    return embeddings, labels.astype(np.int32)


def typical_neighbour_distance(embeddings: np.ndarray, k: int, metric: str = "l2", sample: int = 1000,
                               seed: int = 0) -> float:
    """Median distance from (a sample of) the examples to their k-th nearest other example.

    Computed in float64, so embeddings anywhere in float32's range give a finite answer.
    """
    embeddings = np.asarray(embeddings, np.float64)
    if metric == "cosine":
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-300)
    rng = np.random.default_rng(seed)
    probes = embeddings[rng.choice(len(embeddings), min(sample, len(embeddings)), replace=False)]
    kth = min(k, len(embeddings) - 1)  # column 0 is the probe itself
    norms = (embeddings ** 2).sum(1)
    kth_squared = []
    for start in range(0, len(probes), 128):  # blocks bound the memory at 128 x N distances
        block = probes[start: start + 128]
        squared = np.maximum((block ** 2).sum(1)[:, None] - 2 * block @ embeddings.T + norms[None, :], 0)
        kth_squared.append(np.partition(squared, kth, axis=1)[:, kth])
    distance = float(np.sqrt(np.median(np.concatenate(kth_squared))))
    return distance if 0 < distance < np.finfo(np.float32).max else 1.0


def _holds_values(tensor) -> bool:
    """Whether ``tensor`` has values now (an eager call), rather than being traced."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # already imported by Keras under this backend

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    if backend == "torch":
        import torch

        return tensor.device.type != "meta" and not torch.compiler.is_compiling()
    return False


def _divide_by_power_of_two(x, exponent):
    """``x / 2**exponent`` in two steps of at most 2**64 each: XLA divides by multiplying
    with the reciprocal, and flushes the reciprocal of 2**127 (subnormal) to 0."""
    half = ops.floor(exponent / 2.0)
    return x / ops.power(2.0, half) / ops.power(2.0, exponent - half)


def _power_of_two_exponent(magnitude):
    """floor(log2(magnitude)) as float32, magnitudes floored at the smallest normal float32.

    Dividing by 2**exponent brings the magnitude into [1, 2) (at most one step off where
    log2 rounds); scaling by a power of two changes no significant bits.
    """
    return ops.floor(ops.log2(ops.maximum(magnitude, _TINY)))


@keras.saving.register_keras_serializable(package="hybrid_keras")
class KNNClassifier(keras.layers.Layer):
    """Gaussian-kernel kNN over stored (embedding, label) pairs: [batch, D] -> [batch, num_classes].

    ``sigma`` is the kernel width in embedding units; ``k`` the neighbours that vote;
    ``ef`` and ``budget`` the FANNG search's stopping rules (see ``FanngIndex.search``;
    budget None: no cap). ``metric="cosine"`` normalises embeddings and queries, so
    ||x - e||^2 = 2 - 2 cos. See the module docstring for the backends and input checks.
    """

    def __init__(self, num_classes: int, dim: int, capacity: int, *, k: int = 10, sigma: float = 1.0,
                 backend: str = "exact", metric: str = "l2", ef: int = 64, budget: int | None = None, max_degree: int = 32,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "fanng" and keras.backend.backend() != "tensorflow":
            raise ValueError(f"backend='fanng' runs the FANNG TensorFlow op and needs KERAS_BACKEND=tensorflow "
                             f"(this process uses {keras.backend.backend()!r}); use backend='exact'")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        for name, value in (("k", k), ("num_classes", num_classes), ("capacity", capacity), ("dim", dim)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value!r}")
        if not 0 < float(sigma) < math.inf:
            raise ValueError(f"sigma must be positive and finite, got {sigma!r}")
        if int(ef) < 0 or (budget is not None and int(budget) < 1):
            raise ValueError(f"ef must be >= 0 and budget None or >= 1, got ef={ef}, budget={budget}")
        self.num_classes, self.dim, self.capacity = int(num_classes), int(dim), int(capacity)
        self.k, self.sigma, self.backend, self.metric = int(k), float(sigma), backend, metric
        self.ef, self.budget = int(ef), None if budget is None else int(budget)
        self.max_degree, self.seed = int(max_degree), int(seed)
        self.supports_jit = backend == "exact"  # XLA cannot compile the custom op

        def stored(name, shape, dtype, value="zeros"):
            return self.add_weight(name=name, shape=shape, dtype=dtype, initializer=value, trainable=False)

        self.embeddings = stored("embeddings", (self.capacity, self.dim), "float32")
        self.labels = stored("labels", (self.capacity,), "int32")
        self.count = stored("count", (), "int32")
        if backend == "fanng":
            self.neighbours = stored("neighbours", (self.capacity, self.max_degree), "int32",
                                     keras.initializers.Constant(-1))
            self.entry = stored("entry", (), "int32")

    # ------------------------------------------------------------------ the stored examples
    @classmethod
    def from_examples(cls, embeddings, labels, num_classes: int, *, capacity: int | None = None,
                      sigma: float | str = "auto", **kwargs):
        """A head holding ``embeddings`` [N, D] with integer ``labels`` [N].

        ``capacity`` (default 2N) bounds later :meth:`add_examples` calls.
        ``sigma="auto"`` sets the kernel width to the typical distance of an example
        to its k-th nearest neighbour, so the k votes are neither all equal nor all
        but one negligible.
        """
        embeddings, labels = _validated_examples(embeddings, labels, None, num_classes, kwargs.get("metric", "l2"))
        if sigma == "auto":
            sigma = typical_neighbour_distance(embeddings, kwargs.get("k", 10), kwargs.get("metric", "l2"))
        layer = cls(num_classes, embeddings.shape[1], capacity or 2 * len(embeddings), sigma=sigma, **kwargs)
        layer.add_examples(embeddings, labels)
        return layer

    def add_examples(self, embeddings, labels) -> None:
        """Store more labelled embeddings (a new class, or more of a known one); no retraining."""
        embeddings, labels = _validated_examples(embeddings, labels, self.dim, self.num_classes, self.metric)
        count = int(ops.convert_to_numpy(self.count))
        if count + len(embeddings) > self.capacity:
            raise ValueError(f"the head holds at most {self.capacity} examples ({count} stored, {len(embeddings)} more "
                             "given); build it with a larger capacity")
        stored = ops.convert_to_numpy(self.embeddings).copy()
        stored[count: count + len(embeddings)] = embeddings
        self.embeddings.assign(stored)
        all_labels = ops.convert_to_numpy(self.labels).copy()
        all_labels[count: count + len(labels)] = labels
        self.labels.assign(all_labels)
        self.count.assign(count + len(embeddings))
        if self.backend == "fanng":
            self._extend_graph(stored[:count], embeddings)

    def _extend_graph(self, old: np.ndarray, new: np.ndarray) -> None:
        """Link ``new`` into the graph over ``old``: a few examples are inserted into the
        existing graph, many (a quarter of the stored ones or more) rebuild it."""
        from hybrid_keras.fanng.index import FanngIndex  # TensorFlow: only the fanng backend needs it

        if len(old):
            index = FanngIndex.from_graph(old, ops.convert_to_numpy(self.neighbours)[: len(old)],
                                          int(ops.convert_to_numpy(self.entry)), seed=self.seed, verbose=False)
            index.add(new)
        else:
            index = FanngIndex(self.dim, "l2", max_degree=self.max_degree, seed=self.seed, verbose=False)
            index.add(new)
            index.build()
        neighbours = np.full((self.capacity, self.max_degree), -1, np.int32)
        neighbours[: len(index)] = index.neighbours
        self.neighbours.assign(neighbours)
        self.entry.assign(index.entry)

    # ------------------------------------------------------------------ inference
    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.dim:
            raise ValueError(f"KNNClassifier stores {self.dim}-D embeddings but the input has {input_shape[-1]} dims")
        self.built = True

    def _check_eager_queries(self, queries) -> None:
        if not bool(ops.convert_to_numpy(ops.all(ops.isfinite(queries)))):
            raise ValueError("KNNClassifier got NaN or infinite embeddings (the layer's input)")
        if self.metric == "cosine" and not bool(ops.convert_to_numpy(ops.all(ops.any(queries != 0, axis=-1)))):
            raise ValueError("KNNClassifier input: cosine metric: zero vectors have no direction")
        if int(ops.convert_to_numpy(self.count)) == 0:
            raise ValueError("KNNClassifier holds no examples: call add_examples first")

    def _exact_neighbours(self, queries, count):
        """Rows [B, k'] of the nearest stored examples, and (d^2 - d_nearest^2) / (2 sigma^2) for each.

        Queries and stored vectors are divided by powers of two (one for the stored set,
        one per query row, never below the stored one) so every product and sum stays far
        from float32's limits; ranking uses 2 q.e - |e|^2, which leaves out |q|^2 and
        with it the cancellation of two huge terms.
        """
        vectors = ops.convert_to_tensor(self.embeddings)
        stored_exponent = _power_of_two_exponent(ops.max(ops.abs(vectors)))  # rows past count are zeros
        row_exponent = ops.maximum(
            stored_exponent, _power_of_two_exponent(ops.max(ops.abs(queries), axis=1, keepdims=True)))  # [B, 1]
        scaled_vectors = _divide_by_power_of_two(vectors, stored_exponent)
        scaled_queries = _divide_by_power_of_two(queries, row_exponent)
        shrink = ops.power(2.0, stored_exponent - row_exponent)  # <= 1; flushed to 0 only where negligible
        # closeness = (2 q.e - |e|^2) / 2^(stored + row exponents): larger is nearer.
        closeness = (2.0 * ops.matmul(scaled_queries, ops.transpose(scaled_vectors))
                     - shrink * ops.sum(ops.square(scaled_vectors), axis=1)[None, :])
        in_use = ops.arange(self.capacity, dtype="int32")[None, :] < count
        closeness = ops.where(in_use, closeness, -np.inf)
        best, rows = ops.top_k(closeness, min(self.k, self.capacity))
        gap = ops.maximum(best[:, :1] - best, 0.0)  # (d^2 - d_nearest^2) in scaled units
        # Back to embedding units over 2 sigma^2, as one power of two (inf when beyond float32: weight 0).
        to_exponent = ops.power(2.0, stored_exponent + row_exponent - 1.0 - 2.0 * math.log2(self.sigma))
        return rows, ops.where(gap > 0, gap * to_exponent, 0.0)

    def _fanng_neighbours(self, queries, count):
        """As :meth:`_exact_neighbours`, by the FANNG op (TensorFlow); rows are -1 where it found fewer than k.

        The op returns squared distances; ones beyond float32's range come back as inf
        and tie with each other.
        """
        import tensorflow as tf

        from hybrid_keras.fanng import ops as fanng_ops

        count = tf.convert_to_tensor(count)
        vectors = tf.convert_to_tensor(self.embeddings)[:count]
        rows, squared = fanng_ops.load_library().hybrid_keras_fanng_search(
            vectors=vectors, neighbours=tf.convert_to_tensor(self.neighbours)[:count],
            entry=tf.convert_to_tensor(self.entry), queries=queries,
            k=tf.minimum(self.k, count), budget=tf.constant(np.iinfo(np.int32).max if self.budget is None else self.budget,
                                                            tf.int32),
            ef=tf.constant(self.ef, tf.int32), metric="l2",
            check_vectors=False)  # add_examples checked them; rescanning every call costs more than the search
        nearest = tf.reduce_min(tf.where(rows >= 0, squared, np.inf), axis=1, keepdims=True)
        gap = tf.where(squared > nearest, squared - nearest, 0.0)
        return rows, gap / self.sigma / self.sigma / 2.0

    def call(self, inputs):
        queries = ops.cast(inputs, "float32")
        if self.metric == "cosine":
            queries = l2_normalize(queries, axis=-1)
        if _holds_values(queries):
            self._check_eager_queries(queries)
        count = self.count.value
        if self.backend == "exact":
            rows, exponent = self._exact_neighbours(queries, count)
        else:
            rows, exponent = self._fanng_neighbours(queries, count)
        found = ops.logical_and(rows >= 0, rows < count)
        # Measured from the nearest neighbour, so exp() cannot underflow to 0/0; the
        # common factor cancels in the normalisation.
        weights = ops.where(found, ops.exp(-exponent), 0.0)
        labels = ops.take(ops.convert_to_tensor(self.labels), ops.clip(rows, 0, self.capacity - 1))
        votes = ops.sum(ops.one_hot(labels, self.num_classes) * weights[..., None], axis=1)
        total = ops.sum(votes, axis=1, keepdims=True)
        probabilities = ops.where(total > 0, votes / ops.where(total > 0, total, 1.0), 1.0 / self.num_classes)
        if self.metric == "cosine":  # a zero query has no direction: no evidence for any class
            has_direction = ops.any(queries != 0, axis=1, keepdims=True)
            probabilities = ops.where(has_direction, probabilities, 1.0 / self.num_classes)
        finite = ops.all(ops.isfinite(queries), axis=1, keepdims=True)
        return ops.where(finite, probabilities, np.nan)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, dim=self.dim, capacity=self.capacity, k=self.k, sigma=self.sigma,
                      backend=self.backend, metric=self.metric, ef=self.ef, budget=self.budget, max_degree=self.max_degree,
                      seed=self.seed)
        return config
