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

The layer evaluates these through :func:`traversal_arrays` or :func:`gemm_arrays`,
which rewrite each test so that NaN needs no special case: a node whose NaN goes to
the positive child tests ``-x >= -t'`` (``t'`` the float32 just below ``t``, so this
is ``x < t``) on a negated copy of the columns, with its children swapped. A NaN
fails every comparison, so it always takes the "false" branch, which is where the
trained model sends it.
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
    # True when ``feature_names`` is the column order of the training arrays. False for
    # individually named features whose order the library did not keep (TF-DF sorts
    # names as strings: f0, f1, f10, ...); arrays are then refused (see ForestLayer).
    feature_order_known: bool = True


def _is_tfdf(model) -> bool:
    return type(model).__module__.startswith("tensorflow_decision_forests")


def as_ydf_model(model):
    """The YDF model behind ``model``: a ydf model as is, or a TF-DF Keras model converted."""
    import ydf

    if isinstance(model, ydf.GenericModel):
        return model
    if _is_tfdf(model):

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


def compile_forest(model, mode: str = "native", smoothing: float = 1.0, num_classes: int | None = None,
                   feature_names=None) -> CompiledForest:
    """Flatten ``model`` (ydf or TF-DF, trained) into a :class:`CompiledForest`.

    ``feature_names``: the column order of the arrays the layer will take, when it
    differs from the training order or that order is unknown (a TF-DF model trained
    from a DataFrame or dict: TF-DF sorts the names as strings). Must name every
    input feature of the model exactly once.

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
    from_tfdf = _is_tfdf(model)
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
    # ydf keeps the column order it was given; TF-DF sorts names, which only the
    # "x.<column>" names of a split multi-column input let us undo.
    order_known = not from_tfdf or len({_column_base(f.name) for f in features}) == 1
    if feature_names is not None:
        features = _reorder(features, feature_names)
        order_known = True
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
        feature_order_known=order_known,
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


def _reorder(features, feature_names):
    """``features`` in the order of ``feature_names``, which must name each of them once."""
    if isinstance(feature_names, str):
        raise TypeError(f"feature_names must be a list of names, got the string {feature_names!r}")
    names = [str(name) for name in feature_names]
    by_name = {feature.name: feature for feature in features}
    missing = [name for name in by_name if name not in names]
    unknown = [name for name in names if name not in by_name]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if missing or unknown or repeated:
        raise ValueError(
            f"feature_names must name each of the model's {len(by_name)} input features once; "
            f"missing {missing[:5]}, not features of the model {unknown[:5]}, repeated {repeated[:5]}. "
            f"The model's features: {sorted(by_name)[:20]}"
        )
    return [by_name[name] for name in names]


def _column_base(name: str) -> str:
    """"x" for the columns "x.3" / "x.003_of_128" of a split input; the name itself otherwise."""
    match = _COLUMN_NAME.match(name)
    return match["base"] if match else name


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


def _false_branch_tests(forest: CompiledForest, num_features: int):
    """Per node: the column of [x, -x] to test and the threshold, such that NaN needs no case.

    A node tests ``value >= threshold``; the trained model's NaN routing becomes
    "NaN takes the false branch" (every comparison with NaN is false). Nodes whose NaN
    goes negative test ``x >= t`` (true: positive child). Nodes whose NaN goes positive
    test ``-x >= -nextafter(t, -inf)``, i.e. ``x < t`` (true: negative child), reading
    column ``num_features + f`` of the negated copy. Returns (column, threshold,
    true_child, false_child) over all flat nodes (leaves: meaningless).
    """
    flipped = forest.missing_positive
    column = np.where(flipped, forest.feature + num_features, forest.feature).astype(np.int32)
    below = np.nextafter(forest.threshold.astype(np.float32), np.float32(-np.inf))
    threshold = np.where(flipped, -below, forest.threshold).astype(np.float32)
    true_child = np.where(flipped, forest.negative, forest.positive)
    false_child = np.where(flipped, forest.positive, forest.negative)
    return column, threshold, true_child, false_child


def _is_leaf(forest: CompiledForest) -> np.ndarray:
    return forest.positive == np.arange(len(forest.positive))


def traversal_arrays(forest: CompiledForest) -> dict[str, np.ndarray]:
    """The gather strategy's arrays: ``nodes`` [T * M, 3] float32 and ``leaf_values`` [T * M, outputs].

    One row per node, so one gather per level fetches all a step needs: the column of
    ``[x, -x]`` to read, the threshold, and the step to the node's first child
    (``first_child - node + 1``). Each tree is laid out breadth first again with a
    node's "true" child right before its "false" child, so from node ``n`` the next
    node is ``n + step - (value >= threshold)``. Leaves have threshold NaN and step 0:
    the test is always false and a row stays on its leaf. Columns and steps are small
    integers, exact in float32 (below 2^24 features and 2^24 nodes per tree), so the
    table needs no bitcast and one gather reads it on every backend.
    """
    T, M = forest.num_trees, forest.nodes_per_tree
    if M >= 2**24 or 2 * len(forest.feature_names) >= 2**24:
        raise UnsupportedForestError(f"{M} nodes per tree and {len(forest.feature_names)} features: the float32 node "
                                     "table holds exact integers below 2^24 only")
    column, threshold, true_child, false_child = _false_branch_tests(forest, len(forest.feature_names))
    leaf = _is_leaf(forest)
    nodes = np.zeros((T * M, 3), np.float32)
    nodes[:, 1] = np.nan  # padding slots behave as leaves
    leaf_values = np.zeros_like(forest.leaf_values)
    for t in range(T):
        base = t * M
        order, slot = [base], 0  # breadth first, true child first
        while slot < len(order):
            node = order[slot]
            new = base + slot
            if leaf[node]:
                leaf_values[new] = forest.leaf_values[node]
            else:
                nodes[new] = (column[node], threshold[node], len(order) - slot + 1)  # first child lands at len(order)
                order += [true_child[node], false_child[node]]
            slot += 1
    return {"nodes": nodes, "leaf_values": leaf_values}


def gemm_arrays(forest: CompiledForest) -> dict[str, np.ndarray]:
    """Hummingbird's GEMM form, per tree: internal nodes I, leaves L.

    ``select`` [T, I]: the column of ``[x, -x]`` each internal node tests and
    ``threshold`` [T, I] (as in :func:`traversal_arrays`: NaN fails the test and takes
    the false branch); ``paths`` [T, I, L]: +1 when the leaf lies under the node's
    true child, -1 under its false child; ``path_lengths`` [T, L]: the number of +1
    per leaf; ``leaf_values`` [T, L, outputs]. A row reaches leaf l of a tree exactly
    when ``conditions @ paths[:, l] == path_lengths[l]``.
    """
    T, M = forest.num_trees, forest.nodes_per_tree
    column, threshold, true_child, false_child = _false_branch_tests(forest, len(forest.feature_names))
    leaf = _is_leaf(forest)
    internal = [[n for n in range(M) if not leaf[t * M + n]] for t in range(T)]
    leaves = [[n for n in range(M) if leaf[t * M + n] and (n == 0 or t * M + n in children)]
              for t, children in ((t, _child_slots(forest, t)) for t in range(T))]
    I = max(1, max(len(x) for x in internal))
    L = max(len(x) for x in leaves)
    outputs = forest.leaf_values.shape[1]
    select = np.zeros((T, I), np.int32)
    gemm_threshold = np.full((T, I), np.nan, np.float32)  # padding nodes: condition false, path entries 0
    paths = np.zeros((T, I, L), np.float32)
    path_lengths = np.full((T, L), -1.0, np.float32)  # padding leaves: never matched
    leaf_values = np.zeros((T, L, outputs), np.float32)
    for t in range(T):
        base = t * M
        for j, n in enumerate(leaves[t]):
            leaf_values[t, j] = forest.leaf_values[base + n]
            path_lengths[t, j] = 0.0
        leaf_slot = {n: j for j, n in enumerate(leaves[t])}
        for i, n in enumerate(internal[t]):
            select[t, i] = column[base + n]
            gemm_threshold[t, i] = threshold[base + n]
            for child, sign in ((true_child[base + n] - base, 1.0), (false_child[base + n] - base, -1.0)):
                for leaf_node in _leaves_under(forest, t, child):
                    paths[t, i, leaf_slot[leaf_node]] = sign
                    if sign > 0:
                        path_lengths[t, leaf_slot[leaf_node]] += 1.0
    return {"select": select, "threshold": gemm_threshold, "paths": paths, "path_lengths": path_lengths,
            "leaf_values": leaf_values}


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
