"""A trained decision forest as a Keras 3 layer of plain tensor ops.

The forest's arrays (split feature, threshold, children, leaf values) are layer
weights, so the layer runs on any device, saves in ``.keras`` files and exports to a
SavedModel that stock TensorFlow Serving loads (no custom op). Two evaluation
strategies, after Hummingbird:

- ``"gather"``: every row walks all trees at once, one level per step (``max_depth``
  steps of gathers); cost grows with depth, not with the number of nodes.
- ``"gemm"``: all split conditions are evaluated at once and matched against each
  leaf's path with a matrix product. Its work grows with the number of leaves
  (2^depth); on CPU it was slower than gather even at depth 3 (see
  ``benchmarks/forest``), so gather is the default.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from hybrid_keras.forest.compile import AGGREGATIONS, CompiledForest, compile_forest, gemm_arrays, traversal_table

STRATEGIES = ("gather", "gemm")

_GEMM_WEIGHTS = ("select", "threshold", "missing_positive", "paths", "path_lengths")


@keras.saving.register_keras_serializable(package="hybrid_keras")
class ForestLayer(keras.layers.Layer):
    """Evaluates a compiled decision forest on [batch, F] rows or [B, H, W, F] feature maps.

    Build it with :meth:`from_model`. Input columns are the forest's features in the
    order they were given at training; a dict of named features is accepted too.
    Output: class probabilities [..., classes] for classification, [..., 1] for
    regression.

    ``mode="native"`` reproduces the library's own predictions (random-forest voting
    or averaging, GBT link functions, NaN routed as the trained model routes missing
    values). ``mode="log_sum"`` holds log class distributions per leaf, sums them over
    the trees and applies softmax; its leaf values are trainable, so ``model.fit``
    fine-tunes them (split structure stays fixed), and non-finite features are an
    error, since features from a network are never legitimately missing.
    """

    def __init__(self, *, num_trees, nodes_per_tree, max_depth, num_features, num_outputs, aggregation, mode,
                 task, feature_names, class_names=None, strategy="gather", gemm_shape=None, allow_missing=None,
                 **kwargs):
        super().__init__(**kwargs)
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy == "gemm" and not gemm_shape:
            raise ValueError("strategy='gemm' needs gemm_shape=(internal_nodes, leaves)")
        self.num_trees, self.nodes_per_tree, self.max_depth = int(num_trees), int(nodes_per_tree), int(max_depth)
        self.num_features, self.num_outputs = int(num_features), int(num_outputs)
        self.aggregation, self.mode, self.task, self.strategy = aggregation, mode, task, strategy
        self.feature_names = list(feature_names)
        self.class_names = list(class_names) if class_names is not None else None
        self.gemm_shape = tuple(int(x) for x in gemm_shape) if gemm_shape else None
        self.allow_missing = (mode == "native") if allow_missing is None else bool(allow_missing)
        self._create_forest_weights()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model, mode: str = "native", strategy: str = "gather", smoothing: float = 1.0,
                   num_classes: int | None = None, **kwargs):
        """Compile a trained TF-DF Keras model or ydf model (random forest or GBT).

        ``num_classes``: give the output one column per integer label 0..num_classes-1
        even if some label is missing from the training data.
        """
        forest = compile_forest(model, mode=mode, smoothing=smoothing, num_classes=num_classes)
        return cls.from_compiled(forest, mode=mode, strategy=strategy, **kwargs)

    @classmethod
    def from_compiled(cls, forest: CompiledForest, mode: str = "native", strategy: str = "gather", **kwargs):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        gemm = gemm_arrays(forest) if strategy == "gemm" else None
        layer = cls(
            num_trees=forest.num_trees, nodes_per_tree=forest.nodes_per_tree, max_depth=forest.max_depth,
            num_features=len(forest.feature_names), num_outputs=forest.leaf_values.shape[1],
            aggregation=forest.aggregation, mode=mode, task=forest.task, feature_names=forest.feature_names,
            class_names=forest.class_names, strategy=strategy,
            gemm_shape=gemm["paths"].shape[1:] if gemm else None, **kwargs,
        )
        if gemm:
            values = {name: gemm[name] for name in _GEMM_WEIGHTS}
            values["leaf_values"] = gemm["leaf_values"]
        else:
            values = {"nodes": traversal_table(forest), "leaf_values": forest.leaf_values}
        values["bias"] = forest.bias
        for name, value in values.items():
            weight = getattr(layer, name)
            weight.assign(np.asarray(value).astype(weight.dtype).reshape(weight.shape))
        return layer

    def _create_forest_weights(self):
        T, M, O = self.num_trees, self.nodes_per_tree, self.num_outputs

        def constant(name, shape, dtype, trainable=False):
            return self.add_weight(name=name, shape=shape, dtype=dtype, initializer="zeros", trainable=trainable)

        trainable_leaves = self.mode == "log_sum"
        if self.strategy == "gather":
            self.nodes = constant("nodes", (T * M, 4), "int32")  # see compile.traversal_table
            self.leaf_values = constant("leaf_values", (T * M, O), "float32", trainable_leaves)
        else:
            I, L = self.gemm_shape
            self.select = constant("select", (T, I), "int32")
            self.threshold = constant("threshold", (T, I), "float32")
            self.missing_positive = constant("missing_positive", (T, I), "bool")
            self.paths = constant("paths", (T, I, L), "float32")
            self.path_lengths = constant("path_lengths", (T, L), "float32")
            self.leaf_values = constant("leaf_values", (T, L, O), "float32", trainable_leaves)
        self.bias = constant("bias", (O,), "float32")

    # ------------------------------------------------------------------ evaluation
    def build(self, input_shape):
        if not isinstance(input_shape, dict) and input_shape[-1] is not None and input_shape[-1] != self.num_features:
            raise ValueError(
                f"ForestLayer: the forest was trained on {self.num_features} features but the input has "
                f"{input_shape[-1]} (shape {tuple(input_shape)})"
            )
        self.built = True

    def _as_matrix(self, inputs):
        if isinstance(inputs, dict):
            missing = [name for name in self.feature_names if name not in inputs]
            if missing:
                raise ValueError(f"ForestLayer: the input dict lacks features {missing[:5]} (expects {len(self.feature_names)})")
            return tf.stack([tf.cast(tf.reshape(inputs[name], [-1]), tf.float32) for name in self.feature_names], axis=1)
        return tf.cast(inputs, tf.float32)

    def call(self, inputs):
        x = self._as_matrix(inputs)
        tf.debugging.assert_equal(
            tf.shape(x)[-1], self.num_features,
            message=f"ForestLayer: the number of features must be {self.num_features}",
        )
        if not self.allow_missing:
            x = tf.debugging.check_numerics(x, "ForestLayer (log_sum) got NaN or infinite features")
        leading = tf.shape(x)[:-1]
        rows = tf.reshape(x, [-1, self.num_features])
        if self.allow_missing:
            # NaN routing costs three extra element-wise ops per step; skip it when the
            # batch has no NaN (the usual case, and always so for network features).
            scores = tf.cond(tf.reduce_any(tf.math.is_nan(rows)), lambda: self._scores(rows, missing=True),
                             lambda: self._scores(rows, missing=False))
        else:
            scores = self._scores(rows, missing=False)
        outputs = self._aggregate(scores + self.bias)
        return tf.reshape(outputs, tf.concat([leading, [outputs.shape[-1]]], axis=0))

    @staticmethod
    def _goes_positive(values, threshold, missing_positive, missing):
        # YDF's rule: x >= threshold goes to the positive child; NaN follows the node's
        # missing-value direction (NaN >= t is False, so only that case needs care).
        if not missing:
            return values >= threshold
        return tf.logical_or(values >= threshold, tf.logical_and(tf.math.is_nan(values), missing_positive))

    def _scores(self, rows, missing: bool):
        return self._gather_scores(rows, missing) if self.strategy == "gather" else self._gemm_scores(rows, missing)

    def _gather_scores(self, rows, missing):
        batch = tf.shape(rows)[0]
        roots = tf.range(self.num_trees, dtype=tf.int32) * self.nodes_per_tree
        node = tf.tile(roots[None, :], [batch, 1])  # [rows, trees]
        # Reading x[row, feature] from the flat rows with one plain gather is cheaper
        # than a batched gather.
        flat_rows = tf.reshape(rows, [-1])
        row_offsets = (tf.range(batch, dtype=tf.int32) * self.num_features)[:, None]
        for _ in range(self.max_depth):
            info = tf.gather(self.nodes, node)  # [rows, trees, 4]
            values = tf.gather(flat_rows, row_offsets + info[..., 0])
            threshold = tf.bitcast(info[..., 2], tf.float32)
            positive = self._goes_positive(values, threshold, tf.cast(info[..., 3], tf.bool), missing)
            node = info[..., 1] + 1 - tf.cast(positive, tf.int32)
        return tf.reduce_sum(tf.gather(self.leaf_values, node), axis=1)  # [rows, outputs]

    def _gemm_scores(self, rows, missing):
        values = tf.gather(rows, self.select, axis=1)  # [rows, trees, internal]
        conditions = tf.cast(self._goes_positive(values, self.threshold, self.missing_positive, missing), tf.float32)
        matched = tf.einsum("bti,til->btl", conditions, self.paths)
        reached = tf.cast(tf.equal(matched, self.path_lengths), tf.float32)  # one leaf per tree
        return tf.einsum("btl,tlo->bo", reached, self.leaf_values)

    def _aggregate(self, scores):
        if self.aggregation in ("mean", "sum"):  # "mean" was folded into the leaf values
            if self.task == "classification" and self.num_outputs == 1:  # binary: P(positive)
                return tf.concat([1.0 - scores, scores], axis=-1)
            return scores
        if self.aggregation == "sigmoid_of_sum":
            positive = tf.sigmoid(scores)
            return tf.concat([1.0 - positive, positive], axis=-1)
        return tf.nn.softmax(scores, axis=-1)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, dict):
            return (None, self.output_width)
        return tuple(input_shape[:-1]) + (self.output_width,)

    @property
    def output_width(self) -> int:
        return len(self.class_names) if self.task == "classification" else 1

    def get_config(self):
        config = super().get_config()
        config.update(
            num_trees=self.num_trees, nodes_per_tree=self.nodes_per_tree, max_depth=self.max_depth,
            num_features=self.num_features, num_outputs=self.num_outputs, aggregation=self.aggregation,
            mode=self.mode, task=self.task, feature_names=self.feature_names, class_names=self.class_names,
            strategy=self.strategy, gemm_shape=list(self.gemm_shape) if self.gemm_shape else None,
            allow_missing=self.allow_missing,
        )
        return config
