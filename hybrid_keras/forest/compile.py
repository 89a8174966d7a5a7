"""Turn a trained YDF / TF-DF forest into flat arrays a Keras layer can evaluate.

Every tree is laid out in breadth-first order and padded to the same node count, so
node ``n`` of tree ``t`` sits at ``t * nodes_per_tree + n`` in flat arrays:

- ``feature``  int32: input column the node tests (0 for leaves),
- ``threshold`` float32: the node goes to its positive child when ``x >= threshold``
  (YDF's ``NumericalHigherThanCondition``),
- ``positive`` / ``negative`` int32: flat indices of the children (a leaf points to
  itself, so a fixed number of traversal steps is harmless),
- ``missing_positive`` bool: where a NaN goes (YDF's ``missing`` flag),
- ``leaf_values`` float32 [nodes, outputs]: what a leaf contributes.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile

import numpy as np

# How the per-tree leaf vectors combine into the prediction.
AGGREGATIONS = ("mean", "sigmoid_of_sum", "softmax_of_sum", "sum")


class UnsupportedForestError(ValueError):
    """The forest uses something the compiled layer cannot evaluate."""


@dataclasses.dataclass
class CompiledForest:
    feature: np.ndarray
    threshold: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    missing_positive: np.ndarray
    leaf_values: np.ndarray  # [num_trees * nodes_per_tree, num_outputs]
    bias: np.ndarray  # [num_outputs], added after the tree sum (GBT initial predictions)
    num_trees: int
    nodes_per_tree: int
    max_depth: int
    aggregation: str
    feature_names: list[str]
    class_names: list[str] | None
    task: str  # "classification" or "regression"


def as_ydf_model(model):
    """The YDF model behind ``model``: a ydf model as is, or a TF-DF Keras model converted."""
    import ydf

    if isinstance(model, ydf.GenericModel):
        return model
    if type(model).__module__.startswith("tensorflow_decision_forests"):

        try:
            model.make_inspector()
        except Exception as error:  # TF-DF raises plain exceptions for untrained models
            raise ValueError(f"the TF-DF model is not trained yet ({error})") from None
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "tfdf_model")
            model.save(path)
            return ydf.from_tensorflow_decision_forests(path)
    raise TypeError(f"expected a trained ydf or TF-DF model, got {type(model).__name__} (a learner must be trained first)")


def _kind(model) -> str:
    name = type(model).__name__
    if "RandomForest" in name:
        return "random_forest"
    if "GradientBoosted" in name:
        return "gradient_boosted_trees"
    raise UnsupportedForestError(f"{name} is not supported; the compiled layer handles random forests and gradient boosted trees")


def compile_forest(model, mode: str = "native", smoothing: float = 1.0, num_classes: int | None = None) -> CompiledForest:
    """Flatten ``model`` (ydf or TF-DF, trained) into a :class:`CompiledForest`.

    ``num_classes``: for integer labels 0..num_classes-1, output one column per label
    in label order even when some label never occurred in the training sample (a rare
    class missed by pixel sampling); those columns get probability ~0.

    ``mode="native"`` keeps the library's own prediction rule (random-forest voting or
    averaging, GBT logits through the link function); ``mode="log_sum"`` stores log
    class distributions (Laplace-smoothed with ``smoothing``) to be summed and
    softmaxed, as residual forests do (for GBT classification the leaves already are
    logit contributions, so they are kept and softmaxed).
    """
    import ydf

    if mode not in ("native", "log_sum"):
        raise ValueError(f"mode must be 'native' or 'log_sum', got {mode!r}")
    model = as_ydf_model(model)
    kind = _kind(model)
    task = model.task()
    if task not in (ydf.Task.CLASSIFICATION, ydf.Task.REGRESSION):
        raise UnsupportedForestError(f"task {task} is not supported (classification and regression are)")
    is_classification = task == ydf.Task.CLASSIFICATION
    if mode == "log_sum" and not is_classification:
        raise ValueError("mode='log_sum' is for classification forests; use mode='native' for regression")
    class_names = list(model.label_classes()) if is_classification else None
    forest_classes = len(class_names) if class_names else 1

    features = sorted(model.input_features(), key=_training_order(model.input_features()))
    for feature in features:
        if feature.semantic != ydf.Semantic.NUMERICAL:
            raise UnsupportedForestError(f"feature {feature.name!r} is {feature.semantic.name}; only numerical features are supported")
    position = {feature.column_idx: i for i, feature in enumerate(features)}

    trees = model.get_all_trees()
    if not trees:
        raise ValueError("the forest has no trees (untrained?)")
    winner_takes_all = kind == "random_forest" and is_classification and model.winner_takes_all()

    # Output layout and aggregation.
    if kind == "random_forest":
        aggregation = "mean" if mode == "native" else "softmax_of_sum"
        num_outputs = (1 if forest_classes == 2 and mode == "native" else forest_classes) if is_classification else 1
        bias = np.zeros(num_outputs, np.float32)
    else:
        initial = np.asarray(model.initial_predictions(), np.float32).reshape(-1)
        if not is_classification:
            aggregation, num_outputs = "sum", 1
        elif forest_classes == 2:
            aggregation = "sigmoid_of_sum" if mode == "native" else "softmax_of_sum"
            num_outputs = 1 if mode == "native" else 2
        else:
            aggregation, num_outputs = "softmax_of_sum", forest_classes
        bias = initial if num_outputs == len(initial) else np.concatenate([[0.0], initial]).astype(np.float32)

    def leaf_vector(value, tree_index: int) -> np.ndarray:
        out = np.zeros(num_outputs, np.float32)
        if kind == "random_forest" and is_classification:
            probability = np.asarray(value.probability, np.float64)
            if mode == "log_sum":
                counts = probability * value.num_examples
                return np.log((counts + smoothing) / (counts.sum() + smoothing * forest_classes)).astype(np.float32)
            if winner_takes_all:
                probability = np.eye(forest_classes)[int(np.argmax(probability))]
            return (probability[1:] if num_outputs == 1 else probability).astype(np.float32)
        if kind == "random_forest":
            out[0] = value.value
            return out
        # GBT: tree t adds to class t % (number of per-iteration trees).
        per_iteration = len(bias) if not (mode == "log_sum" and forest_classes == 2) else 1
        slot = tree_index % per_iteration
        out[slot + (1 if mode == "log_sum" and forest_classes == 2 else 0)] = value.value
        return out

    flattened = []
    for t, tree in enumerate(trees):
        nodes, order = [], [tree.root]
        while order:  # breadth first
            node = order.pop(0)
            nodes.append(node)
            if hasattr(node, "condition"):
                order += [node.pos_child, node.neg_child]
        flattened.append(nodes)
    nodes_per_tree = max(len(nodes) for nodes in flattened)
    total = len(trees) * nodes_per_tree

    feature = np.zeros(total, np.int32)
    threshold = np.zeros(total, np.float32)
    positive = np.arange(total, dtype=np.int32)
    negative = np.arange(total, dtype=np.int32)
    missing_positive = np.zeros(total, bool)
    leaf_values = np.zeros((total, num_outputs), np.float32)
    max_depth = 0
    for t, nodes in enumerate(flattened):
        base = t * nodes_per_tree
        index = {id(node): base + i for i, node in enumerate(nodes)}
        depth = {id(nodes[0]): 0}
        for i, node in enumerate(nodes):
            flat = base + i
            if hasattr(node, "condition"):
                condition = node.condition
                if type(condition).__name__ != "NumericalHigherThanCondition":
                    raise UnsupportedForestError(f"tree {t} uses a {type(condition).__name__}; only numerical thresholds are supported")
                feature[flat] = position[condition.attribute]
                threshold[flat] = np.float32(condition.threshold)
                positive[flat] = index[id(node.pos_child)]
                negative[flat] = index[id(node.neg_child)]
                missing_positive[flat] = bool(condition.missing)
                for child in (node.pos_child, node.neg_child):
                    depth[id(child)] = depth[id(node)] + 1
            else:
                leaf_values[flat] = leaf_vector(node.value, t)
                max_depth = max(max_depth, depth[id(node)])
    if aggregation == "mean":
        leaf_values /= len(trees)  # the mean becomes a sum, so every strategy just adds
    forest = CompiledForest(
        feature=feature, threshold=threshold, positive=positive, negative=negative, missing_positive=missing_positive,
        leaf_values=leaf_values, bias=bias.astype(np.float32), num_trees=len(trees), nodes_per_tree=nodes_per_tree,
        max_depth=max_depth, aggregation=aggregation, feature_names=[f.name for f in features],
        class_names=class_names, task="classification" if is_classification else "regression",
    )
    return forest if num_classes is None else _spread_to_labels(forest, num_classes)


# Logit bias of a label the forest never saw: exp(-30) ~ 1e-13, zero for any purpose,
# yet finite so that gradients and softmax stay well defined.
_ABSENT_LOGIT = -30.0


def _spread_to_labels(forest: CompiledForest, num_classes: int) -> CompiledForest:
    """Re-index the output columns from the forest's classes to integer labels 0..num_classes-1."""
    if forest.task != "classification":
        raise ValueError("num_classes is for classification forests")
    try:
        labels = [int(name) for name in forest.class_names]
    except ValueError:
        raise ValueError(f"num_classes needs integer class labels; the forest has {forest.class_names[:5]}") from None
    if min(labels) < 0 or max(labels) >= num_classes:
        raise ValueError(f"the forest's labels {labels} do not fit in 0..{num_classes - 1}")
    leaf_values, bias, aggregation = forest.leaf_values, forest.bias, forest.aggregation
    if leaf_values.shape[1] == 1:  # binary forests keep only the positive column; restore both
        if aggregation == "mean":  # per-tree leaf value v = P(positive) / T
            leaf_values = np.concatenate([1.0 / forest.num_trees - leaf_values, leaf_values], axis=1)
            bias = np.zeros(2, np.float32)
        else:  # sigmoid(z) == softmax([0, z])[1]
            leaf_values = np.concatenate([np.zeros_like(leaf_values), leaf_values], axis=1)
            bias, aggregation = np.concatenate([[0.0], bias]).astype(np.float32), "softmax_of_sum"
    spread_leaves = np.zeros((len(leaf_values), num_classes), np.float32)
    spread_leaves[:, labels] = leaf_values
    spread_bias = np.full(num_classes, 0.0 if aggregation == "mean" else _ABSENT_LOGIT, np.float32)
    spread_bias[labels] = bias
    return dataclasses.replace(forest, leaf_values=spread_leaves, bias=spread_bias, aggregation=aggregation,
                               class_names=[str(i) for i in range(num_classes)])


# Libraries split a multi-column input "x" into one feature per column and name them
# "x.003_of_128" (ydf) or "data:0.3" / "x.3" (TF-DF, whose data spec sorts them as
# strings: "x.10" before "x.2"). The layer takes the columns in their original order.
_COLUMN_NAME = re.compile(r"^(?P<base>.*?)[.](?P<index>\d+)(?:_of_\d+)?$")


def _training_order(features):
    """Sort key restoring the column order the features had when the model was trained."""
    first_seen = {}
    for feature in features:
        match = _COLUMN_NAME.match(feature.name)
        first_seen.setdefault(match["base"] if match else feature.name, len(first_seen))

    def key(feature):
        match = _COLUMN_NAME.match(feature.name)
        if match:
            return (first_seen[match["base"]], int(match["index"]))
        return (first_seen[feature.name], 0)

    return key


def traversal_table(forest: CompiledForest) -> np.ndarray:
    """One int32 row per node for the gather strategy: one gather fetches all a step needs.

    Columns: input feature, positive child, threshold (float32 bits), NaN goes positive.
    Breadth-first order puts a node's negative child right after its positive one, so
    the next node is ``positive + (0 if the test passes else 1)``. Leaves get threshold
    -inf and NaN-positive, so every row stays on them once there.
    """
    internal = forest.positive != np.arange(len(forest.positive))
    if not np.array_equal(forest.negative[internal], forest.positive[internal] + 1):
        raise ValueError("children are not adjacent; the forest was not laid out breadth first")
    threshold = np.where(internal, forest.threshold, -np.inf).astype(np.float32)
    missing_positive = np.where(internal, forest.missing_positive, True)
    return np.stack([forest.feature, forest.positive, threshold.view(np.int32), missing_positive.astype(np.int32)],
                    axis=1).astype(np.int32)


def gemm_arrays(forest: CompiledForest) -> dict[str, np.ndarray]:
    """Hummingbird's GEMM form, per tree: internal nodes I, leaves L.

    ``select`` [T, I]: the input column each internal node tests; ``threshold``,
    ``missing_positive`` [T, I]; ``paths`` [T, I, L]: +1 when the leaf lies under the
    node's positive child, -1 under its negative child; ``path_lengths`` [T, L]: the
    number of +1 per leaf; ``leaf_values`` [T, L, outputs]. A row reaches leaf l of a
    tree exactly when ``conditions @ paths[:, l] == path_lengths[l]``.
    """
    T, M = forest.num_trees, forest.nodes_per_tree
    internal = [[n for n in range(M) if forest.positive[t * M + n] != t * M + n] for t in range(T)]
    leaves = [[n for n in range(M) if forest.positive[t * M + n] == t * M + n and (n == 0 or t * M + n in children)]
              for t, children in ((t, _child_slots(forest, t)) for t in range(T))]
    I = max(1, max(len(x) for x in internal))
    L = max(len(x) for x in leaves)
    outputs = forest.leaf_values.shape[1]
    select = np.zeros((T, I), np.int32)
    threshold = np.full((T, I), np.inf, np.float32)  # padding nodes: condition false, path entries 0
    missing_positive = np.zeros((T, I), bool)
    paths = np.zeros((T, I, L), np.float32)
    path_lengths = np.full((T, L), -1.0, np.float32)  # padding leaves: never matched
    leaf_values = np.zeros((T, L, outputs), np.float32)
    for t in range(T):
        base = t * M
        node_slot = {n: i for i, n in enumerate(internal[t])}
        for j, leaf in enumerate(leaves[t]):
            leaf_values[t, j] = forest.leaf_values[base + leaf]
            path_lengths[t, j] = 0.0
        leaf_slot = {n: j for j, n in enumerate(leaves[t])}
        for n, i in node_slot.items():
            select[t, i] = forest.feature[base + n]
            threshold[t, i] = forest.threshold[base + n]
            missing_positive[t, i] = forest.missing_positive[base + n]
            for child, sign in ((forest.positive[base + n] - base, 1.0), (forest.negative[base + n] - base, -1.0)):
                for leaf in _leaves_under(forest, t, child):
                    paths[t, i, leaf_slot[leaf]] = sign
                    if sign > 0:
                        path_lengths[t, leaf_slot[leaf]] += 1.0
    return {"select": select, "threshold": threshold, "missing_positive": missing_positive, "paths": paths,
            "path_lengths": path_lengths, "leaf_values": leaf_values}


def _leaves_under(forest: CompiledForest, t: int, node: int) -> list[int]:
    base = t * forest.nodes_per_tree
    stack, found = [node], []
    while stack:
        n = stack.pop()
        pos, neg = forest.positive[base + n] - base, forest.negative[base + n] - base
        if pos == n:
            found.append(n)
        else:
            stack += [pos, neg]
    return found


def _child_slots(forest: CompiledForest, t: int) -> set:
    """Flat indices some node of tree t points to; padding slots (self-looping 'leaves') are not among them."""
    span = slice(t * forest.nodes_per_tree, (t + 1) * forest.nodes_per_tree)
    return set(forest.positive[span].tolist()) | set(forest.negative[span].tolist())
