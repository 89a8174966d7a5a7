"""A trained decision forest as a Keras 3 layer of plain tensor ops.

The forest's arrays (tested column, threshold, child step, leaf values) are layer
weights and the evaluation is ``keras.ops`` (plus each backend's plain gather, see
``_take_rows``), so the layer runs under the
TensorFlow, JAX and PyTorch backends, on any device, saves in ``.keras`` files and
exports to a SavedModel that stock TensorFlow Serving loads (no custom op). Two
evaluation strategies, after Hummingbird:

- ``"gather"``: every row walks all trees at once, one level per step (``max_depth``
  steps of two gathers each); cost grows with depth, not with the number of nodes.
- ``"gemm"``: all split conditions are evaluated at once and matched against each
  leaf's path with a matrix product. Its work grows with the number of leaves
  (2^depth); on CPU it was slower than gather even at depth 3 (see
  ``benchmarks/forest``), so gather is the default.

Both have a fixed number of steps and no data-dependent shapes, so they compile
well under ``jax.jit`` and XLA. Missing values (NaN) cost nothing extra: every test
is written so that NaN fails it and takes the branch the trained model sends it to
(see :mod:`hybrid_keras.forest.compile`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from hybrid_keras.forest.compile import AGGREGATIONS, CompiledForest, compile_forest, gemm_arrays, traversal_arrays

STRATEGIES = ("gather", "gemm")

_GEMM_WEIGHTS = ("select", "threshold", "paths", "path_lengths", "leaf_values")


@keras.saving.register_keras_serializable(package="hybrid_keras")
class ForestLayer(keras.layers.Layer):
    """Evaluates a compiled decision forest on [batch, F] rows or [B, H, W, F] feature maps.

    Build it with :meth:`from_model`. Output: class probabilities [..., classes] for
    classification, [..., 1] for regression.

    Input columns. ``layer.feature_names`` is the order the layer reads array columns
    in: the training column order, or the ``feature_names=`` given to
    :meth:`from_model`. A dict ``{name: column}`` (or ``dict(dataframe)``) is matched
    by name and always works. A TF-DF model trained on individually named features (a
    DataFrame or dict) does not keep their order (TF-DF sorts names as strings: f0,
    f1, f10, ...), so such a layer refuses arrays until ``from_model(model,
    feature_names=[...])`` states the arrays' column order.

    ``mode="native"`` reproduces the library's own predictions (random-forest voting
    or averaging, GBT link functions, NaN routed as the trained model routes missing
    values). ``mode="log_sum"`` holds log class distributions per leaf, sums them over
    the trees and applies softmax; its leaf values are trainable, so ``model.fit``
    fine-tunes them (split structure stays fixed). Features from a network are never
    legitimately missing, so in log_sum mode a row with a NaN or infinite feature gets
    NaN probabilities (a NaN loss shows it at once) instead of a silently routed guess.
    """

    def __init__(self, *, num_trees, nodes_per_tree, max_depth, num_features, num_outputs, aggregation, mode,
                 task, feature_names, class_names=None, strategy="gather", gemm_shape=None, allow_missing=None,
                 feature_order_known=True, **kwargs):
        # The thresholds must be compared in float32 even under a mixed-precision policy.
        kwargs.setdefault("autocast", False)
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
        self.feature_order_known = bool(feature_order_known)
        self.class_names = list(class_names) if class_names is not None else None
        self.gemm_shape = tuple(int(x) for x in gemm_shape) if gemm_shape else None
        self.allow_missing = (mode == "native") if allow_missing is None else bool(allow_missing)
        self._create_forest_weights()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model, mode: str = "native", strategy: str = "gather", smoothing: float = 1.0,
                   num_classes: int | None = None, feature_names=None, **kwargs):
        """Compile a trained TF-DF Keras model or ydf model (random forest or GBT).

        ``num_classes``: give the output one column per integer label 0..num_classes-1
        even if some label is missing from the training data.
        ``feature_names``: the column order of the arrays this layer will take (every
        input feature of the model, once), e.g. ``list(df.columns.drop("label"))``
        for a forest trained from that DataFrame. Default: the training order where
        the library kept it.
        """
        forest = compile_forest(model, mode=mode, smoothing=smoothing, num_classes=num_classes,
                                feature_names=feature_names)
        return cls.from_compiled(forest, mode=mode, strategy=strategy, **kwargs)

    @classmethod
    def from_compiled(cls, forest: CompiledForest, mode: str = "native", strategy: str = "gather", **kwargs):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        values = gemm_arrays(forest) if strategy == "gemm" else traversal_arrays(forest)
        layer = cls(
            num_trees=forest.num_trees, nodes_per_tree=forest.nodes_per_tree, max_depth=forest.max_depth,
            num_features=len(forest.feature_names), num_outputs=forest.leaf_values.shape[1],
            aggregation=forest.aggregation, mode=mode, task=forest.task, feature_names=forest.feature_names,
            class_names=forest.class_names, strategy=strategy, feature_order_known=forest.feature_order_known,
            gemm_shape=values["paths"].shape[1:] if strategy == "gemm" else None, **kwargs,
        )
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
            self.nodes = constant("nodes", (T * M, 3), "float32")  # see compile.traversal_arrays
            self.leaf_values = constant("leaf_values", (T * M, O), "float32", trainable_leaves)
        else:
            I, L = self.gemm_shape
            self.select = constant("select", (T, I), "int32")
            self.threshold = constant("threshold", (T, I), "float32")
            self.paths = constant("paths", (T, I, L), "float32")
            self.path_lengths = constant("path_lengths", (T, L), "float32")
            self.leaf_values = constant("leaf_values", (T, L, O), "float32", trainable_leaves)
        self.bias = constant("bias", (O,), "float32")

    # ------------------------------------------------------------------ evaluation
    def build(self, input_shape):
        if not isinstance(input_shape, dict):
            self._check_array_columns(input_shape)
        self.built = True

    def __call__(self, inputs, *args, **kwargs):
        # Keras turns a DataFrame into a bare array before call(); match it by name instead
        # (and leave other columns, such as the label, out).
        if _is_dataframe(inputs):
            inputs = {name: inputs[name].to_numpy() for name in self.feature_names if name in inputs.columns}
        return super().__call__(inputs, *args, **kwargs)

    def _as_matrix(self, inputs):
        if isinstance(inputs, dict):
            missing = [name for name in self.feature_names if name not in inputs]
            if missing:
                raise ValueError(f"ForestLayer: the input dict lacks features {missing[:5]} "
                                 f"(expects all of layer.feature_names, {len(self.feature_names)} names)")
            return ops.stack([ops.reshape(ops.cast(inputs[name], "float32"), (-1,)) for name in self.feature_names],
                             axis=1)
        x = ops.cast(inputs, "float32")
        self._check_array_columns(x.shape)
        return x

    def _check_array_columns(self, shape):
        """Array input: the order of its columns must be known, and their number right."""
        if not self.feature_order_known:
            raise ValueError(
                "ForestLayer: this forest was trained on individually named features whose column order the "
                "library did not keep (TF-DF sorts names as strings), so the columns of an array input cannot be "
                f"matched to them. layer.feature_names = {self.feature_names[:12]}"
                f"{' ...' if len(self.feature_names) > 12 else ''}. Pass a dict {{name: column}} or a DataFrame, "
                "or compile with ForestLayer.from_model(model, feature_names=<your arrays' column order>)."
            )
        if shape[-1] is not None and shape[-1] != self.num_features:
            raise ValueError(f"ForestLayer: the forest was trained on {self.num_features} features but the input "
                             f"has {shape[-1]} (shape {tuple(shape)}); its columns are layer.feature_names")

    def call(self, inputs):
        x = self._as_matrix(inputs)
        leading = ops.shape(x)[:-1]
        rows = ops.reshape(x, (-1, self.num_features))
        # Every test reads a column of [x, -x] (see compile.traversal_arrays): NaN then
        # takes the trained direction with no extra op per level and no branch.
        both = ops.concatenate([rows, ops.negative(rows)], axis=1)
        scores = self._gather_scores(both) if self.strategy == "gather" else self._gemm_scores(both)
        outputs = self._aggregate(scores + self.bias)
        if not self.allow_missing:
            finite = ops.all(ops.isfinite(rows), axis=1, keepdims=True)
            outputs = ops.where(finite, outputs, ops.full_like(outputs, np.nan))
        return ops.reshape(outputs, tuple(leading) + (self.output_width,))

    def _gather_scores(self, both):
        # node[row, tree] walks down one level per step; x[row, column] is read from the
        # flat rows with one plain gather, which is cheaper than a batched gather.
        width = 2 * self.num_features
        flat = ops.reshape(both, (-1,))
        row_offsets = ops.expand_dims(ops.arange(ops.shape(both)[0], dtype="int32") * width, 1)
        roots = ops.convert_to_tensor(np.arange(self.num_trees, dtype=np.int32) * self.nodes_per_tree)
        info = ops.expand_dims(ops.take(self.nodes, roots, axis=0), 0)  # level 0: every row is at the roots
        node = ops.expand_dims(roots, 0)
        for level in range(self.max_depth):
            if level:
                info = _take_rows(self.nodes, node)  # [rows, trees, 3]
            values = _take_rows(flat, row_offsets + ops.cast(info[..., 0], "int32"))
            goes_true = ops.cast(ops.greater_equal(values, info[..., 1]), "int32")
            node = node + ops.cast(info[..., 2], "int32") - goes_true  # true child first, false child next
        return ops.sum(_take_rows(self.leaf_values, node), axis=1)  # [rows, outputs]

    def _gemm_scores(self, both):
        values = ops.take(both, self.select, axis=1)  # [rows, trees, internal]
        conditions = ops.cast(ops.greater_equal(values, self.threshold), "float32")
        matched = ops.einsum("bti,til->btl", conditions, self.paths)
        reached = ops.cast(ops.equal(matched, self.path_lengths), "float32")  # one leaf per tree
        return ops.einsum("btl,tlo->bo", reached, self.leaf_values)

    def _aggregate(self, scores):
        if self.aggregation in ("mean", "sum"):  # "mean" was folded into the leaf values
            if self.task == "classification" and self.num_outputs == 1:  # binary: P(positive)
                return ops.concatenate([1.0 - scores, scores], axis=-1)
            return scores
        if self.aggregation == "sigmoid_of_sum":
            positive = ops.sigmoid(scores)
            return ops.concatenate([1.0 - positive, positive], axis=-1)
        return ops.softmax(scores, axis=-1)

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
            allow_missing=self.allow_missing, feature_order_known=self.feature_order_known,
        )
        return config


def _take_rows(table, indices):
    """``table[indices]`` along axis 0, for indices known to be in range.

    ``keras.ops.take`` first wraps negative indices. The traversal does two gathers
    per level and never has a negative index, so the backends where the gather's form
    changes the speed get their own (the module still imports neither):

    - TensorFlow: ``tf.gather``; the extra pass over the indices cost about a fifth
      of the layer's CPU throughput in graph mode.
    - JAX: ``jnp.take`` with ``mode="fill"`` (its default) on a GPU and
      ``mode="clip"`` elsewhere. On an H200, fill ran the 100-tree, depth-16 forest
      at 72M rows/s against 43M for clip; on a CPU, clip was ten times faster.
    """
    table = ops.convert_to_tensor(table)  # a Keras variable becomes the backend's array
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.gather(table, indices)
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return jnp.take(table, indices, axis=0, mode="fill" if jax.default_backend() == "gpu" else "clip")
    return ops.take(table, indices, axis=0)


def _is_dataframe(inputs) -> bool:
    return type(inputs).__name__ == "DataFrame" and hasattr(inputs, "columns")
