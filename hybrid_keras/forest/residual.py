"""Fast residual forests: randomised trees grown in seconds, their leaves trained jointly by SGD.

After Zuo & Drummond, "Fast Residual Forests: Rapid Ensemble Learning for Semantic
Segmentation" (CoRL 2017) and their "Residual Likelihood Forests" (2020). What sets them
apart from a random forest compiled with ``ForestLayer(mode="log_sum")``:

- The trees are not grown greedily to purity by an exhaustive search. Each node draws a few
  random (feature, threshold) candidates and keeps the best by weighted Gini impurity on a
  class-balanced bootstrap (extremely randomised trees), so a whole forest on 100k feature
  vectors grows in seconds with NumPy alone.
- A leaf holds a log-likelihood vector, not an observed class histogram. The trees combine
  multiplicatively (their log-likelihoods add, then a softmax), and all leaves are trained
  *jointly* with SGD on the global cross-entropy: each tree learns what the others leave
  unexplained (the "residual"), instead of each measuring its own distribution.
- Leaves start at the trees' smoothed log histograms divided by the number of trees (the
  geometric mean of the trees' distributions), so SGD starts from a sound ensemble.
- Or the forest corrects another solver: with ``base_logits`` (an FCN's class scores) the
  probabilities are ``softmax(base + sum of leaves)`` (:class:`ResidualSoftmax`), leaves
  start at zero, and SGD learns only what the base gets wrong.

The forest becomes a plain :class:`~hybrid_keras.forest.ForestLayer` (``mode="log_sum"``,
trainable leaves), so it runs under every Keras backend and exports with no custom op.
The papers also train the CNN through derivatives of the forest; here the backbone stays
frozen (its features are computed once), which is where the speed comes from.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from hybrid_keras.forest.compile import CompiledForest
from hybrid_keras.forest.layer import ForestLayer


@keras.saving.register_keras_serializable(package="hybrid_keras")
class ResidualSoftmax(keras.layers.Layer):
    """``softmax(base_logits + log(forest_probabilities))``: a forest's log-likelihoods as a
    correction to another solver's scores (a log_sum forest's probabilities are the softmax of
    its summed leaves, so this is ``softmax(base + sum of leaves)``). Inputs ``[base_logits,
    forest_probabilities]`` of the same shape ``[..., classes]``."""

    def call(self, inputs):
        base, probabilities = inputs
        # The floor only keeps log() finite; a probability that small is 69 nats from the rest.
        log_likelihoods = keras.ops.log(keras.ops.maximum(probabilities, 1e-30))
        return keras.ops.softmax(keras.ops.cast(base, log_likelihoods.dtype) + log_likelihoods, axis=-1)

    def compute_output_shape(self, input_shapes):
        return input_shapes[1]


def class_balanced_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-sample weights that give every present class the same total weight (mean weight 1)."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    per_class = np.divide(1.0, counts, out=np.zeros_like(counts), where=counts > 0)
    weights = per_class[labels]
    return (weights * len(labels) / weights.sum()).astype(np.float32)


def _check(features, labels, num_classes):
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [N, F] and labels [N]. Received: features {features.shape}, "
                         f"labels {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices. Received: dtype {labels.dtype}")
    if len(labels) == 0:
        raise ValueError("no training samples")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}); found {labels.min()}..{labels.max()} "
                         "(leave ignored pixels out before training)")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or infinite values")
    return features, labels.astype(np.int64)


def grow_random_forest(features, labels, num_classes: int, *, num_trees: int = 32, max_depth: int = 10,
                       candidates: int = 16, min_samples_leaf: int = 5, samples_per_tree: int | None = None,
                       smoothing: float | None = 1.0, seed: int = 0, feature_names=None) -> CompiledForest:
    """Grow ``num_trees`` randomised trees on ``features`` [N, F] / ``labels`` [N] (log_sum leaves).

    Each tree sees a bootstrap of ``samples_per_tree`` rows (default N) weighted so every
    class counts equally; each node tries ``candidates`` random features, each with the
    value of a random row of the node as threshold, and keeps the lowest weighted Gini
    impurity. A node stops at ``max_depth``, when pure, or when no candidate leaves
    ``min_samples_leaf`` rows on both sides. Leaves hold ``log`` of the class-balanced
    histogram (``smoothing`` added to each class) divided by ``num_trees``, or zeros with
    ``smoothing=None`` (for a forest that starts as no correction to a base solver's scores).
    """
    features, labels = _check(features, labels, num_classes)
    if num_trees < 1 or max_depth < 1 or candidates < 1 or min_samples_leaf < 1:
        raise ValueError("num_trees, max_depth, candidates and min_samples_leaf must be >= 1. Received: "
                         f"{num_trees}, {max_depth}, {candidates}, {min_samples_leaf}")
    rng = np.random.default_rng(seed)
    n, num_features = features.shape
    samples_per_tree = samples_per_tree or n
    weights = class_balanced_weights(labels, num_classes)
    nodes_per_tree = 2 ** (max_depth + 1) - 1  # a complete binary tree, heap order
    total = num_trees * nodes_per_tree
    feature = np.zeros(total, np.int32)
    threshold = np.zeros(total, np.float32)
    positive = np.arange(total, dtype=np.int32)  # a node that is its own child is a leaf
    negative = np.arange(total, dtype=np.int32)
    leaf_values = np.zeros((total, num_classes), np.float32)
    for tree in range(num_trees):
        rows = rng.integers(0, n, samples_per_tree)
        base = tree * nodes_per_tree
        tree_slice = slice(base, base + nodes_per_tree)
        splits, leaf_of_row = _grow_tree(features[rows], labels[rows], weights[rows], num_classes, max_depth,
                                         candidates, min_samples_leaf, rng, feature[tree_slice], threshold[tree_slice])
        # Heap order: node i's children are 2i + 1 (x < threshold) and 2i + 2 (x >= threshold).
        negative[base + splits] = base + 2 * splits + 1
        positive[base + splits] = base + 2 * splits + 2
        histogram = np.bincount(leaf_of_row * num_classes + labels[rows], weights=weights[rows],
                                minlength=nodes_per_tree * num_classes).reshape(nodes_per_tree, num_classes)
        if smoothing is not None:
            histogram += smoothing
            leaf_values[tree_slice] = np.log(histogram / histogram.sum(1, keepdims=True)) / num_trees
    names = list(feature_names) if feature_names is not None else [f"f{i}" for i in range(num_features)]
    if len(names) != num_features:
        raise ValueError(f"feature_names has {len(names)} names for {num_features} features")
    return CompiledForest(
        feature=feature, threshold=threshold, positive=positive, negative=negative,
        missing_positive=np.zeros(total, bool), leaf_values=leaf_values, bias=np.zeros(num_classes, np.float32),
        num_trees=num_trees, nodes_per_tree=nodes_per_tree, max_depth=max_depth, aggregation="softmax_of_sum",
        feature_names=names, class_names=[str(c) for c in range(num_classes)], task="classification")


def _grow_tree(x, y, w, num_classes, max_depth, candidates, min_samples_leaf, rng, feature_out, threshold_out):
    """One tree, level by level with array ops: every open node's candidates are scored in one
    ``bincount``. Writes the split feature and threshold of each internal node into the given
    views; returns the internal nodes and each row's leaf."""
    n, num_features = x.shape
    node = np.zeros(n, np.int64)
    open_rows = np.arange(n)  # rows whose node may still split
    internal = []
    for _ in range(max_depth):
        if not len(open_rows):
            break
        ids, local, counts = np.unique(node[open_rows], return_inverse=True, return_counts=True)
        num_open = len(ids)
        row_labels = y[open_rows]
        present = np.bincount(local * num_classes + row_labels, minlength=num_open * num_classes)
        impure = (present.reshape(num_open, num_classes) > 0).sum(1) > 1
        # Candidates: a random feature, thresholded at the value of a random row of the node.
        candidate_feature = rng.integers(0, num_features, (num_open, candidates))
        by_node = open_rows[np.argsort(local, kind="stable")]
        starts = np.cumsum(counts) - counts
        member = by_node[starts[:, None] + (rng.random((num_open, candidates)) * counts[:, None]).astype(np.int64)]
        candidate_threshold = x[member, candidate_feature]
        goes_right = x[open_rows[:, None], candidate_feature[local]] >= candidate_threshold[local]  # [rows, K]
        side = (local[:, None] * candidates + np.arange(candidates)) * 2 + goes_right
        mass = np.bincount((side * num_classes + row_labels[:, None]).ravel(),
                           weights=np.repeat(w[open_rows], candidates),
                           minlength=num_open * candidates * 2 * num_classes)
        mass = mass.reshape(num_open, candidates, 2, num_classes)
        sizes = np.bincount(side.ravel(), minlength=num_open * candidates * 2).reshape(num_open, candidates, 2)
        side_mass = mass.sum(-1)
        squares = np.divide((mass ** 2).sum(-1), side_mass, out=np.zeros_like(side_mass), where=side_mass > 0)
        impurity = np.where(sizes.min(-1) >= min_samples_leaf, (side_mass - squares).sum(-1), np.inf)
        best = impurity.argmin(1)
        splits = impure & np.isfinite(impurity[np.arange(num_open), best])
        feature_out[ids[splits]] = candidate_feature[splits, best[splits]]
        threshold_out[ids[splits]] = candidate_threshold[splits, best[splits]]
        internal.append(ids[splits])
        keep = splits[local]
        right = goes_right[np.arange(len(open_rows)), best[local]]
        node[open_rows[keep]] = 2 * node[open_rows[keep]] + 1 + right[keep]
        open_rows = open_rows[keep]
    return np.concatenate(internal) if internal else np.zeros(0, np.int64), node


def fit_leaves(layer: ForestLayer, features, labels, *, base_logits=None, sample_weight=None, validation_data=None,
               epochs: int = 20, batch_size: int = 2048, learning_rate: float = 0.01, patience: int = 3,
               verbose: int = 0):
    """Train all leaves of a ``log_sum`` ForestLayer jointly (Adam on the cross-entropy of the summed
    log-likelihoods); the splits stay fixed.

    ``base_logits`` [N, classes]: another solver's scores the forest corrects
    (:class:`ResidualSoftmax`). ``validation_data``: ``(features, labels)``, or
    ``(features, labels, base_logits)`` with a base; the leaves of the epoch with the lowest
    validation loss are kept. Returns the Keras history.
    """
    if layer.mode != "log_sum":
        raise ValueError(f"only a log_sum forest has trainable leaves. Received: mode={layer.mode!r}")
    inputs = keras.Input((layer.num_features,), name="features")
    outputs = layer(inputs)
    x = np.asarray(features, np.float32)
    if base_logits is not None:
        base = keras.Input((layer.output_width,), name="base_logits")
        outputs = ResidualSoftmax()([base, outputs])
        inputs, x = [inputs, base], [x, np.asarray(base_logits, np.float32)]
    model = keras.Model(inputs, outputs, name="forest_leaves")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  weighted_metrics=[])
    callbacks = []
    if validation_data is not None:
        if (len(validation_data) == 3) != (base_logits is not None):
            raise ValueError("validation_data must be (features, labels, base_logits) with base_logits, "
                             "(features, labels) without")
        val_x = validation_data[0] if base_logits is None else [validation_data[0], validation_data[2]]
        validation_data = (val_x, validation_data[1])
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                                       restore_best_weights=True))
    return model.fit(x, np.asarray(labels), sample_weight=sample_weight, validation_data=validation_data,
                     epochs=epochs, batch_size=batch_size, shuffle=True, callbacks=callbacks, verbose=verbose)


def train_residual_forest(features, labels, num_classes: int, *, base_logits=None, validation_data=None,
                          num_trees: int = 32, max_depth: int = 10, candidates: int = 16, min_samples_leaf: int = 5,
                          samples_per_tree: int | None = None, epochs: int = 20, batch_size: int = 2048,
                          learning_rate: float = 0.01, seed: int = 0, feature_names=None, verbose: int = 0):
    """Grow a randomised forest, then train its leaves jointly; both class-balanced.

    ``features`` [N, F], ``labels`` [N] in ``[0, num_classes)`` (leave ignored pixels out).
    ``base_logits`` [N, num_classes]: scores of another solver (an FCN's) that the forest
    corrects; its leaves then start at zero, so training starts from that solver's
    predictions. ``validation_data``: see :func:`fit_leaves`.
    Returns ``(ForestLayer, info)``: a ``log_sum`` layer of class probabilities (combine it
    with the base through :class:`ResidualSoftmax`), and a dict with ``grow_seconds``,
    ``fit_seconds`` and the epochs run.
    """
    features, labels = _check(features, labels, num_classes)
    if base_logits is not None and np.shape(base_logits) != (len(labels), num_classes):
        raise ValueError(f"base_logits must be [N, {num_classes}]. Received: {np.shape(base_logits)}")
    start = time.perf_counter()
    forest = grow_random_forest(features, labels, num_classes, num_trees=num_trees, max_depth=max_depth,
                                candidates=candidates, min_samples_leaf=min_samples_leaf,
                                samples_per_tree=samples_per_tree, seed=seed, feature_names=feature_names,
                                smoothing=None if base_logits is not None else 1.0)
    layer = ForestLayer.from_compiled(forest, mode="log_sum", name="residual_forest")
    grown = time.perf_counter()
    keras.utils.set_random_seed(seed)
    history = fit_leaves(layer, features, labels, base_logits=base_logits,
                         sample_weight=class_balanced_weights(labels, num_classes), validation_data=validation_data,
                         epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, verbose=verbose)
    info = {"grow_seconds": grown - start, "fit_seconds": time.perf_counter() - grown,
            "epochs_run": len(history.history["loss"]), "num_trees": num_trees, "max_depth": max_depth,
            "candidates": candidates}
    return layer, info
