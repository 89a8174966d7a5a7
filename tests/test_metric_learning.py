"""Metric learning: the losses against hand-computed values and a NumPy reference of the
published mining rules, mining on constructed cases, FANNG-mined negatives against
brute force, batches built around mined negatives, training steps, and bad input."""

import keras
import numpy as np
import pytest

from hybrid_keras.metric_learning import (
    ContrastiveLoss,
    HardNegativeBatches,
    TripletHardLoss,
    TripletSemiHardLoss,
    embedding_model,
    nearest_other_class,
    pairwise_distances,
    siamese,
)

agnostic = pytest.mark.backend_agnostic

# 1-D embeddings: a = 0 and p = 1 of class 0, n1 = 1.5 and n2 = 3 of class 1.
LINE = np.array([[0.0], [1.0], [1.5], [3.0]], "float32")
LINE_LABELS = np.array([0, 0, 1, 1])


def _np(x):
    return keras.ops.convert_to_numpy(x)


def _compiled(fn):
    """``fn`` giving NumPy; under JAX jitted: one XLA compilation instead of one per operation.
    TensorFlow and PyTorch call it eagerly."""
    if keras.backend.backend() == "jax":
        import jax

        jitted = jax.jit(fn)
        return lambda *args: np.asarray(jitted(*args))
    return lambda *args: _np(fn(*args))


def _numpy_distances(x, distance):
    if distance == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        return 1.0 - unit @ unit.T
    squared = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return squared if distance == "squared_l2" else np.sqrt(squared)


def _semi_hard_reference(x, labels, margin, distance):
    """FaceNet's semi-hard rule by loops: for each (anchor, positive), the closest negative
    farther than the positive, else the farthest negative."""
    d = _numpy_distances(x.astype(np.float64), distance)
    losses = []
    for a in range(len(x)):
        negatives = [n for n in range(len(x)) if labels[n] != labels[a]]
        if not negatives:
            continue
        for p in range(len(x)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [d[a, n] for n in negatives if d[a, n] > d[a, p]]
            chosen = min(farther) if farther else max(d[a, n] for n in negatives)
            losses.append(max(d[a, p] - chosen + margin, 0.0))
    return np.mean(losses) if losses else 0.0


@agnostic
@pytest.mark.parametrize("distance", ["l2", "squared_l2", "cosine"])
def test_pairwise_distances(distance):
    x = np.random.default_rng(0).normal(size=(7, 5)).astype("float32")
    np.testing.assert_allclose(_np(pairwise_distances(x, distance)), _numpy_distances(x, distance), atol=2e-5)


@agnostic
def test_contrastive_loss_by_hand():
    loss = ContrastiveLoss(margin=1.0)
    # 1/2 * 0.25 (matching), 1/2 * max(0, 1 - 0.25), 1/2 * max(0, 1 - 2): mean of 0.125, 0.375, 0.
    value = loss(np.array([1.0, 0.0, 0.0]), np.array([0.25, 0.25, 2.0]))
    assert float(_np(value)) == pytest.approx(0.5 / 3, rel=1e-6)


@agnostic
def test_triplet_losses_by_hand():
    # Semi-hard: (a, p) takes n1 (1.5 > 1): 0.5; (p, a) takes n2 (2 > 1): 0; (n1, n2) has no
    # negative farther than 1.5, so the farthest, 1.5: 1.0; (n2, n1) takes p (2 > 1.5): 0.5.
    assert float(_np(TripletSemiHardLoss(1.0)(LINE_LABELS, LINE))) == pytest.approx(0.5)
    # Hard: per anchor (farthest positive, closest negative): (1, 1.5), (1, 0.5), (1.5, 0.5), (1.5, 2).
    assert float(_np(TripletHardLoss(1.0)(LINE_LABELS, LINE))) == pytest.approx((0.5 + 1.5 + 2.0 + 0.5) / 4)
    soft = np.log1p(np.exp(np.array([-0.5, 0.5, 1.0, -0.5]))).mean()
    assert float(_np(TripletHardLoss(soft=True)(LINE_LABELS, LINE))) == pytest.approx(soft, rel=1e-5)


@agnostic
@pytest.mark.parametrize("distance", ["l2", "squared_l2", "cosine"])
def test_semi_hard_equals_the_loop_reference(distance):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 8)).astype("float32")
    labels = rng.integers(0, 5, 24)
    expected = _semi_hard_reference(x, labels, 0.5, distance)
    actual = float(_np(TripletSemiHardLoss(0.5, distance=distance)(labels, x)))
    assert actual == pytest.approx(expected, rel=1e-4, abs=1e-6)


@agnostic
def test_batches_without_triplets_give_zero():
    x = np.random.default_rng(2).normal(size=(4, 3)).astype("float32")
    assert float(_np(TripletSemiHardLoss()(np.zeros(4), x))) == 0.0  # no negative
    assert float(_np(TripletSemiHardLoss()(np.arange(4), x))) == 0.0  # no positive
    assert float(_np(TripletHardLoss()(np.arange(4), x))) == 0.0


def test_mining_picks_the_nearest_other_class():
    found = nearest_other_class(LINE, LINE_LABELS, k=2)
    np.testing.assert_array_equal(found, [[2, 3], [2, 3], [1, 0], [1, 0]])
    # Class 0 has two examples, so a third other-class neighbour of a class-1 example does not exist.
    assert nearest_other_class(LINE, LINE_LABELS, k=3)[2].tolist() == [1, 0, -1]


def test_fanng_mining_equals_brute_force():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 16)) * 4
    labels = rng.integers(0, 10, 600)
    x = (centres[labels] + rng.normal(size=(600, 16))).astype("float32")
    exact = nearest_other_class(x, labels, k=3, search="exact")
    fanng = nearest_other_class(x, labels, k=3, search="fanng", ef=600)
    assert np.mean(exact == fanng) > 0.99


def test_hard_negative_batches_hold_each_anchor_with_a_positive_and_its_negative():
    labels = np.repeat(np.arange(4), 5)
    images = np.arange(20, dtype="float32")[:, None] * np.ones((1, 3), "float32")  # image i is all i
    batches = HardNegativeBatches(images, labels, batch_size=12, negatives=2, search="exact", seed=0)

    class Identity:  # "embeds" image i as i: the nearest other-class examples are the neighbours in i
        def predict(self, x, **kwargs):
            return x[:, :1]

    batches.remine(Identity())
    np.testing.assert_array_equal(batches.mined[5], [4, 3])  # image 5 (class 1 = 5..9): 4 and 3 of class 0
    anchors_seen = []
    for i in range(len(batches)):
        x, y = batches[i]
        assert x.shape == (12, 3) and y.shape == (12,)
        count = min(batches.anchors_per_batch, 20 - i * batches.anchors_per_batch)  # the last batch has fewer
        anchors = x[:count, 0].astype(int)
        positives, negatives = y[count:2 * count], y[2 * count:4 * count].reshape(count, 2)
        np.testing.assert_array_equal(positives, labels[anchors])
        assert np.all(negatives != labels[anchors][:, None])
        anchors_seen += anchors.tolist()
    assert sorted(anchors_seen) == list(range(20))


def _small_backbone(name="small_backbone"):
    """Two convolutions: enough to learn these separable images, and quick to compile on every
    backend (the zoo-backbone path of embedding_model has its own test, below)."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(keras.layers.Lambda(lambda v: v / 255.0)(inputs))
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    return keras.Model(inputs, x, name=name)


@agnostic
@pytest.mark.parametrize("loss", [TripletSemiHardLoss(0.5), TripletHardLoss(0.5)], ids=["semi_hard", "hard"])
def test_training_steps_lower_the_triplet_loss(loss):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 64)
    images = (rng.uniform(0, 60, (64, 32, 32, 3)) + labels[:, None, None, None] * 50).astype("float32")
    model = embedding_model(_small_backbone(), dim=16)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    history = model.fit(images, labels, batch_size=32, epochs=6, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


@agnostic
def test_siamese_contrastive_training_lowers_the_loss():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    first = rng.uniform(0, 255, (48, 32, 32, 3)).astype("float32")
    match = rng.integers(0, 2, 48)
    second = np.where(match[:, None, None, None] == 1, first, rng.uniform(0, 255, first.shape)).astype("float32")
    model = siamese(embedding_model(_small_backbone(), dim=8))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ContrastiveLoss(margin=1.0))
    history = model.fit([first, second], match.astype("float32"), batch_size=16, epochs=4, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert model.output_shape == (None,)


@agnostic
def test_embedding_model_on_a_zoo_backbone_gives_unit_vectors():
    model = embedding_model("mobilenet_v2", dim=8, alpha=0.35, input_shape=(32, 32, 3))
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    embeddings = _compiled(model)(images)
    assert embeddings.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_bad_input():
    with pytest.raises(ValueError, match="margin must be >= 0"):
        TripletSemiHardLoss(margin=-1)
    with pytest.raises(ValueError, match="distance must be one of"):
        TripletHardLoss(distance="manhattan")
    with pytest.raises(ValueError, match="k must be a positive integer"):
        nearest_other_class(LINE, LINE_LABELS, k=0)
    with pytest.raises(ValueError, match="NaN"):
        nearest_other_class(np.full((2, 2), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"embeddings must be \[N, D\]"):
        nearest_other_class(LINE, LINE_LABELS[:3])
    with pytest.raises(ValueError, match="search must be one of"):
        nearest_other_class(LINE, LINE_LABELS, search="hnsw")
    with pytest.raises(ValueError, match="batch_size must hold"):
        HardNegativeBatches(LINE, LINE_LABELS, batch_size=2)
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        embedding_model("mobilenet_v2", dim=0, alpha=0.35)


def test_losses_round_trip_through_config():
    for loss in (ContrastiveLoss(0.7), TripletSemiHardLoss(0.3, distance="cosine"), TripletHardLoss(0.2, soft=True)):
        again = type(loss).from_config(loss.get_config())
        assert again.get_config() == loss.get_config()
