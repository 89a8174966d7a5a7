"""A k-nearest-neighbour classification head over labelled embeddings.

The talk's solver: P(c | x) is proportional to the sum, over the K nearest stored
embeddings e_i of class c, of exp(-||x - e_i||^2 / 2 sigma^2). Classes are added by
pushing examples through the network (:meth:`KNNClassifier.add_examples`), with no
retraining.

The stored examples are non-trainable layer weights, so ``.keras`` files and SavedModel
exports carry them. Weights have fixed shapes, so the layer holds ``capacity`` rows of
which the first ``count`` are in use. Two backends:

- ``"exact"``: distances by one matrix product and ``top_k``, in plain TF ops: right on
  GPUs, and the one stock TF Serving can load.
- ``"fanng"``: the FANNG custom op over a graph stored in the weights; sublinear on CPU
  for large example sets. A SavedModel using it needs ``tf.load_op_library`` on the
  library (``hybrid_keras.fanng.ops.library_path()``) or a model server built with the op.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hybrid_keras.fanng.index import FanngIndex

BACKENDS = ("exact", "fanng")
METRICS = ("l2", "cosine")


def typical_neighbour_distance(embeddings: np.ndarray, k: int, metric: str = "l2", sample: int = 1000,
                               seed: int = 0) -> float:
    """Median distance from (a sample of) the examples to their k-th nearest other example."""
    if metric == "cosine":
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    probes = embeddings[rng.choice(len(embeddings), min(sample, len(embeddings)), replace=False)]
    squared = ((probes ** 2).sum(1)[:, None] - 2 * probes @ embeddings.T + (embeddings ** 2).sum(1)[None, :])
    kth = min(k, len(embeddings) - 1)  # column 0 is the probe itself
    distance = float(np.sqrt(np.median(np.sort(np.maximum(squared, 0), axis=1)[:, kth])))
    return distance if distance > 0 else 1.0


@keras.saving.register_keras_serializable(package="hybrid_keras")
class KNNClassifier(keras.layers.Layer):
    """Gaussian-kernel kNN over stored (embedding, label) pairs: [batch, D] -> [batch, num_classes].

    ``sigma`` is the kernel width in embedding units; ``k`` the neighbours that vote;
    ``ef`` and ``budget`` the FANNG search's stopping rules (see ``FanngIndex.search``;
    budget None: no cap). ``metric="cosine"``
    normalises embeddings and queries, so ||x - e||^2 = 2 - 2 cos.
    """

    def __init__(self, num_classes: int, dim: int, capacity: int, *, k: int = 10, sigma: float = 1.0,
                 backend: str = "exact", metric: str = "l2", ef: int = 64, budget: int | None = None, max_degree: int = 32,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if int(k) < 1 or int(num_classes) < 1 or int(capacity) < 1 or float(sigma) <= 0:
            raise ValueError("k, num_classes and capacity must be >= 1 and sigma > 0")
        if int(ef) < 0 or (budget is not None and int(budget) < 1):
            raise ValueError(f"ef must be >= 0 and budget None or >= 1, got ef={ef}, budget={budget}")
        self.num_classes, self.dim, self.capacity = int(num_classes), int(dim), int(capacity)
        self.k, self.sigma, self.backend, self.metric = int(k), float(sigma), backend, metric
        self.ef, self.budget = int(ef), None if budget is None else int(budget)
        self.max_degree, self.seed = int(max_degree), int(seed)

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
        embeddings = np.asarray(embeddings, np.float32)
        if embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [examples, D], got shape {embeddings.shape}")
        if sigma == "auto":
            sigma = typical_neighbour_distance(embeddings, kwargs.get("k", 10), kwargs.get("metric", "l2"))
        layer = cls(num_classes, embeddings.shape[1], capacity or 2 * len(embeddings), sigma=sigma, **kwargs)
        layer.add_examples(embeddings, labels)
        return layer

    def add_examples(self, embeddings, labels) -> None:
        """Store more labelled embeddings (a new class, or more of a known one); no retraining."""
        embeddings = np.asarray(embeddings, np.float32)
        labels = np.asarray(labels).reshape(-1)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(f"embeddings must be [examples, {self.dim}], got shape {embeddings.shape}")
        if len(labels) != len(embeddings):
            raise ValueError(f"{len(embeddings)} embeddings but {len(labels)} labels")
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(f"labels must be integers in [0, {self.num_classes}), got {np.unique(labels)[:10]}")
        if not np.all(np.isfinite(embeddings)):
            raise ValueError("embeddings contain NaN or infinite values")
        count = int(self.count.numpy())
        if count + len(embeddings) > self.capacity:
            raise ValueError(f"the head holds at most {self.capacity} examples ({count} stored, {len(embeddings)} more "
                             "given); build it with a larger capacity")
        if self.metric == "cosine":
            embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        stored = self.embeddings.numpy()
        stored[count: count + len(embeddings)] = embeddings
        self.embeddings.assign(stored)
        all_labels = self.labels.numpy()
        all_labels[count: count + len(labels)] = labels
        self.labels.assign(all_labels)
        self.count.assign(count + len(embeddings))
        if self.backend == "fanng":
            self._extend_graph(stored[:count], embeddings)

    def _extend_graph(self, old: np.ndarray, new: np.ndarray) -> None:
        """Link ``new`` into the graph over ``old``: a few examples are inserted into the
        existing graph, many (a quarter of the stored ones or more) rebuild it."""
        if len(old):
            index = FanngIndex.from_graph(old, self.neighbours.numpy()[: len(old)], int(self.entry.numpy()),
                                          seed=self.seed, verbose=False)
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

    def _neighbours(self, queries, k, count):
        vectors = tf.convert_to_tensor(self.embeddings)[:count]
        if self.backend == "exact":
            squared = (tf.reduce_sum(queries * queries, 1, keepdims=True) - 2.0 * tf.matmul(queries, vectors, transpose_b=True)
                       + tf.reduce_sum(vectors * vectors, 1)[None, :])
            negative, rows = tf.math.top_k(-tf.maximum(squared, 0.0), k=k)
            return rows, -negative
        from hybrid_keras.fanng import ops

        rows, distances = ops.load_library().hybrid_keras_fanng_search(
            vectors=vectors, neighbours=tf.convert_to_tensor(self.neighbours)[:count],
            entry=tf.convert_to_tensor(self.entry), queries=queries,
            k=k, budget=tf.constant(np.iinfo(np.int32).max if self.budget is None else self.budget, tf.int32),
            ef=tf.constant(self.ef, tf.int32), metric="l2",
            check_vectors=False)  # add_examples checked them; rescanning every call costs more than the search
        return rows, distances

    def call(self, inputs):
        queries = tf.cast(inputs, tf.float32)
        if self.metric == "cosine":
            queries = tf.math.l2_normalize(queries, axis=-1)
        queries = tf.debugging.check_numerics(queries, "KNNClassifier got NaN or infinite embeddings")
        count = tf.convert_to_tensor(self.count)
        tf.debugging.assert_positive(count, message="KNNClassifier holds no examples: call add_examples first")
        k = tf.minimum(self.k, count)
        rows, squared = self._neighbours(queries, k, count)
        found = rows >= 0  # the graph search pads with -1 when it finds fewer than k
        # Subtracting the nearest distance first keeps exp() from underflowing to 0/0;
        # the common factor cancels in the normalisation.
        nearest = tf.reduce_min(tf.where(found, squared, np.inf), axis=1, keepdims=True)
        weights = tf.where(found, tf.exp(-(squared - nearest) / (2.0 * self.sigma ** 2)), 0.0)
        labels = tf.gather(tf.convert_to_tensor(self.labels), tf.maximum(rows, 0))
        votes = tf.reduce_sum(tf.one_hot(labels, self.num_classes) * weights[..., None], axis=1)
        return votes / tf.reduce_sum(votes, axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.num_classes,)

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, dim=self.dim, capacity=self.capacity, k=self.k, sigma=self.sigma,
                      backend=self.backend, metric=self.metric, ef=self.ef, budget=self.budget, max_degree=self.max_degree,
                      seed=self.seed)
        return config
