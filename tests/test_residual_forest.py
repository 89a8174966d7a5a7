"""The residual forest: trees against a NumPy traversal of their arrays, a stump by hand, the
class prior when no split is allowed, joint leaf training against the grown leaves, the FCN
hypercolumn and forest head's shapes, and bad input."""

import keras
import numpy as np
import pytest

from hybrid_keras.forest import ForestLayer
from hybrid_keras.forest.residual import (
    class_balanced_weights,
    fit_leaves,
    grow_random_forest,
    train_residual_forest,
)

agnostic = pytest.mark.backend_agnostic


def _np(x):
    return keras.ops.convert_to_numpy(x)  # detaches PyTorch tensors of trainable leaves


def _compiled(model):
    """``model``'s output as NumPy; under JAX jitted: one XLA compilation instead of one per
    operation. TensorFlow and PyTorch call it eagerly."""
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(model)
        return lambda *args: np.asarray(jitted(*args))
    return lambda *args: _np(model(*args))


def _numpy_forest(forest, rows):
    """softmax(sum over trees of the reached leaf's values), walking the CompiledForest arrays."""
    total = np.zeros((len(rows), forest.leaf_values.shape[1]))
    for t in range(forest.num_trees):
        for i, row in enumerate(rows):
            node = t * forest.nodes_per_tree
            while forest.positive[node] != node:
                node = forest.positive[node] if row[forest.feature[node]] >= forest.threshold[node] else forest.negative[node]
            total[i] += forest.leaf_values[node]
    e = np.exp(total - total.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _blobs(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + 2 * (x[:, 1] * x[:, 2] > 0)  # 4 classes, one an XOR
    return x, y


@agnostic
def test_layer_equals_a_numpy_walk_of_the_trees():
    x, y = _blobs()
    forest = grow_random_forest(x, y, 4, num_trees=5, max_depth=6, seed=3)
    layer = ForestLayer.from_compiled(forest, mode="log_sum")
    np.testing.assert_allclose(_np(layer(x[:200])), _numpy_forest(forest, x[:200]), atol=1e-5)


@agnostic
def test_stump_by_hand():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = (x[:, 0] >= 5).astype(np.int64)
    # Every row once (a bootstrap of 10 draws would repeat some): sample the rows exactly.
    forest = grow_random_forest(x, y, 2, num_trees=1, max_depth=1, candidates=64, min_samples_leaf=1,
                                samples_per_tree=10_000, seed=0)
    assert forest.feature[0] == 0 and forest.threshold[0] == 5.0
    # Leaves: class-balanced counts (equal classes: weight 1 per row, 1000 rows per class
    # in expectation) plus smoothing 1, normalised, logged, over 1 tree: nearly pure.
    left, right = forest.leaf_values[forest.negative[0]], forest.leaf_values[forest.positive[0]]
    assert left.argmax() == 0 and right.argmax() == 1
    np.testing.assert_allclose(np.exp(left).sum(), 1.0, rtol=1e-5)
    assert np.exp(left[1]) < 1e-3 and np.exp(right[0]) < 1e-3


@agnostic
def test_no_split_allowed_gives_the_balanced_prior():
    x, y = _blobs(400)
    forest = grow_random_forest(x, y, 4, num_trees=3, max_depth=4, min_samples_leaf=400)
    assert np.all(forest.positive == np.arange(len(forest.positive)))  # every root is a leaf
    probabilities = _np(ForestLayer.from_compiled(forest, mode="log_sum")(x[:5]))
    np.testing.assert_allclose(probabilities, 0.25, atol=0.02)  # classes weigh the same


@agnostic
def test_class_balanced_weights():
    weights = class_balanced_weights(np.array([0, 0, 0, 1]), 3)
    np.testing.assert_allclose(weights, [2 / 3, 2 / 3, 2 / 3, 2.0])
    assert weights.mean() == pytest.approx(1.0)


@agnostic
def test_joint_leaf_training_beats_the_grown_leaves():
    x, y = _blobs(6000, seed=1)
    (train_x, train_y), (val_x, val_y) = (x[:4000], y[:4000]), (x[4000:], y[4000:])
    options = dict(num_trees=8, max_depth=5, seed=0)
    grown = ForestLayer.from_compiled(grow_random_forest(train_x, train_y, 4, **options), mode="log_sum")
    trained, info = train_residual_forest(train_x, train_y, 4, validation_data=(val_x, val_y), epochs=15, **options)

    def loss(layer):
        p = _np(layer(val_x))
        return -np.mean(np.log(p[np.arange(len(val_y)), val_y]))

    assert loss(trained) < 0.9 * loss(grown)
    assert np.mean(_np(trained(val_x)).argmax(1) == val_y) > 0.85
    assert info["epochs_run"] >= 1


def test_bad_input():
    x, y = _blobs(100)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        grow_random_forest(x, y, 3)
    with pytest.raises(ValueError, match="NaN"):
        grow_random_forest(np.where(x > 2, np.nan, x), y, 4)
    with pytest.raises(ValueError, match=r"features must be \[N, F\]"):
        grow_random_forest(x[:, 0], y, 4)
    with pytest.raises(ValueError, match="integer class indices"):
        grow_random_forest(x, y.astype(float), 4)
    with pytest.raises(ValueError, match="must be >= 1"):
        grow_random_forest(x, y, 4, max_depth=0)
    native = ForestLayer.from_compiled(grow_random_forest(x, y, 4, num_trees=1, max_depth=2), mode="native")
    with pytest.raises(ValueError, match="log_sum"):
        fit_leaves(native, x, y)


@agnostic
@pytest.mark.parametrize("size", [(64, 64), (77, 101)])
def test_hypercolumn_and_forest_head_on_odd_sizes(size):
    import zoo
    from zoo.architectures.fcn import forest_head, hypercolumn

    fcn = zoo.load("fcn8s", classes=3, backbone="mobilenet_v2", alpha=0.35)
    images = np.random.default_rng(0).uniform(0, 255, (2, *size, 3)).astype(np.float32)
    features = _compiled(hypercolumn(fcn))(images)
    stride8 = _compiled(keras.Model(fcn.input, fcn.get_layer("block_5_add").output))(images)
    assert features.shape[:3] == tuple(stride8.shape[:3])  # on the stride-8 map's grid, whatever its rounding
    rows = features.reshape(-1, features.shape[-1])
    labels = np.arange(len(rows)) % 3
    forest = ForestLayer.from_compiled(grow_random_forest(rows, labels, 3, num_trees=2, max_depth=3), mode="log_sum")
    probabilities = _compiled(forest_head(fcn, forest))(images)
    assert probabilities.shape == (2, *size, 3)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="hypercolumn"):
        forest_head(fcn, ForestLayer.from_compiled(grow_random_forest(rows[:, :5], labels, 3, num_trees=1,
                                                                      max_depth=2), mode="log_sum"))


@agnostic
def test_residual_softmax_adds_the_summed_leaves_to_the_base():
    from hybrid_keras.forest.residual import ResidualSoftmax

    x, y = _blobs(500)
    forest = grow_random_forest(x, y, 4, num_trees=3, max_depth=4)
    layer = ForestLayer.from_compiled(forest, mode="log_sum")
    base = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    leaves = np.log(_numpy_forest(forest, x[:50]))  # the summed leaves, up to a constant per row
    expected = np.exp(base + leaves) / np.exp(base + leaves).sum(1, keepdims=True)
    np.testing.assert_allclose(_np(ResidualSoftmax()([base, layer(x[:50])])), expected, atol=1e-5)


@agnostic
def test_correcting_a_base_starts_from_it_and_improves_on_it():
    x, y = _blobs(6000, seed=2)
    # A base that knows only x0 (classes 0/1 vs 2/3 unknown): the forest must add the XOR part.
    positive = (x[:, 0] > 0).astype(np.float32)
    base = 2.0 * np.stack([-positive, positive, -positive, positive], 1)
    zero = grow_random_forest(x, y, 4, num_trees=4, max_depth=4, smoothing=None)
    assert not zero.leaf_values.any()
    layer, _ = train_residual_forest(x[:4000], y[:4000], 4, base_logits=base[:4000], epochs=20,
                                     validation_data=(x[4000:], y[4000:], base[4000:]), num_trees=16, max_depth=6)
    from hybrid_keras.forest.residual import ResidualSoftmax

    corrected = _np(ResidualSoftmax()([base[4000:], layer(x[4000:])])).argmax(1)
    assert np.mean(base[4000:].argmax(1) == y[4000:]) < 0.55 < 0.85 < np.mean(corrected == y[4000:])
    with pytest.raises(ValueError, match="base_logits must be"):
        train_residual_forest(x, y, 4, base_logits=base[:10])
    with pytest.raises(ValueError, match="validation_data must be"):
        train_residual_forest(x, y, 4, base_logits=base, validation_data=(x, y), num_trees=1, max_depth=2)


@agnostic
def test_residual_forest_head_uses_the_fcn_scores():
    import zoo
    from zoo.architectures.fcn import forest_head, hypercolumn

    fcn = zoo.load("fcn32s", classes=3, backbone="mobilenet_v2", alpha=0.35)
    images = np.random.default_rng(0).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
    features = _compiled(hypercolumn(fcn, scores=True))(images)
    rows = features.reshape(-1, features.shape[-1])
    labels = np.arange(len(rows)) % 3
    zero = ForestLayer.from_compiled(grow_random_forest(rows, labels, 3, num_trees=2, max_depth=3, smoothing=None),
                                     mode="log_sum")
    # Zero leaves: the residual head is FCN-32s's softmax (its score layer starts at zero: uniform).
    np.testing.assert_allclose(_compiled(forest_head(fcn, zero, residual=True))(images), 1 / 3, atol=1e-6)
