"""Custom layers against torch's definitions, keras.applications' preprocessing, NumPy and
hand-computed cases, and .keras round trips; on every backend."""

import keras
import numpy as np
import pytest
import torch
from keras import ops

from hybrid_keras.layers import AdaptiveAveragePooling2D, L2Normalize, LocalResponseNormalization, Preprocessing
from hybrid_keras.layers.normalization import l2_normalize

pytestmark = pytest.mark.backend_agnostic


def _numpy(x):
    return ops.convert_to_numpy(x)


def _nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.mark.parametrize("size", [1, 2, 3, 5, 6])
def test_lrn_matches_torch(size):
    x = np.random.default_rng(size).normal(size=(2, 4, 5, 9)).astype("float32")
    ours = _numpy(LocalResponseNormalization(size=size, alpha=1e-2, beta=0.75, k=2.0)(x))
    theirs = torch.nn.LocalResponseNorm(size, alpha=1e-2, beta=0.75, k=2.0)(_nchw(x))
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_lrn_hand_computed():
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 1, 1, 3)
    out = _numpy(LocalResponseNormalization(size=3, alpha=3.0, beta=1.0, k=1.0)(x)).ravel()
    # alpha / size = 1; windows: {1,2}, {1,2,3}, {2,3} -> sums of squares 5, 14, 13.
    np.testing.assert_allclose(out, [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


@pytest.mark.parametrize("size_in, size_out", [((14, 14), (4, 4)), ((7, 9), (3, 2)), ((6, 6), (6, 6)), ((5, 3), 1)])
def test_adaptive_average_pooling_matches_torch(size_in, size_out):
    x = np.random.default_rng(0).normal(size=(2, *size_in, 3)).astype("float32")
    ours = _numpy(AdaptiveAveragePooling2D(size_out)(x))
    theirs = torch.nn.AdaptiveAvgPool2d(size_out)(_nchw(x)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 1e-30, 1e30, 3e38], ids=["unit", "tiny", "huge", "float32-limit"])
def test_l2_normalize_matches_numpy_at_every_magnitude(scale):
    """NumPy in float64 is the reference; computed naively in float32, 1e-30 underflows the
    squared norm to 0 and 1e30 overflows it to inf."""
    x = np.random.default_rng(2).uniform(-1, 1, size=(4, 32)).astype("float32")
    x = np.clip(x.astype(np.float64) * scale, -3.4e38, 3.4e38).astype("float32")
    expected = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    ours = _numpy(L2Normalize()(x))
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


def test_l2_normalize_keeps_zero_vectors_and_gradients():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 4.0]], np.float32)
    np.testing.assert_allclose(_numpy(l2_normalize(x)), [[0, 0, 0], [0.6, 0, 0.8]], rtol=1e-6, atol=0)
    # d/dx of (x / |x|) . w, by the formula (w - (u . w) u) / |x| with u = x / |x|.
    inputs = keras.Input((3,))
    model = keras.Model(inputs, ops.sum(L2Normalize()(inputs) * np.array([1.0, 2.0, 3.0], np.float32), axis=-1))
    u, w = np.array([0.6, 0.0, 0.8]), np.array([1.0, 2.0, 3.0])
    expected = (w - (u @ w) * u) / 5.0
    np.testing.assert_allclose(_input_gradient(model, x[1:]), expected[None], rtol=1e-5, atol=1e-6)


def _input_gradient(model, x):
    """d sum(model(x)) / dx with the current backend's autodiff."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: model(v).sum())(x))
    if backend == "torch":
        v = torch.tensor(x, requires_grad=True)
        model(v).sum().backward()
        return v.grad.numpy()
    import tensorflow as tf

    v = tf.Variable(x)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(model(v))
    return tape.gradient(total, v).numpy()


PIXELS = np.random.default_rng(3).integers(0, 256, size=(2, 5, 6, 3))


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch"])
def test_preprocessing_matches_keras_applications(mode):
    """keras.applications' preprocess_input (NumPy path) is the reference for the three modes."""
    from keras.applications import imagenet_utils

    expected = imagenet_utils.preprocess_input(PIXELS.astype("float64"), mode=mode)
    for pixels in (PIXELS.astype("float32"), PIXELS.astype("uint8")):
        np.testing.assert_allclose(_numpy(Preprocessing(mode)(pixels)), expected, rtol=1e-5, atol=1e-4)


def test_preprocessing_torch_mode_matches_torchvision():
    import torchvision

    normalize = torchvision.transforms.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    expected = normalize(_nchw(PIXELS.astype("float32") / 255.0)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(_numpy(Preprocessing("torch")(PIXELS.astype("float32"))), expected, atol=1e-5)


def test_preprocessing_custom_and_none_hand_computed():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    custom = Preprocessing(channel_order="bgr", scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0,))
    assert custom.mode == "custom"
    np.testing.assert_allclose(_numpy(custom(pixel)).ravel(), [(15 - 1) / 2, (10 - 2) / 2, (5 - 3) / 2])
    np.testing.assert_array_equal(_numpy(Preprocessing("none")(pixel.astype("uint8"))), pixel)


LAYERS = {
    "lrn": lambda: LocalResponseNormalization(size=5, alpha=5e-4),
    "adaptive_pooling": lambda: AdaptiveAveragePooling2D((2, 3)),
    "l2_normalize": L2Normalize,
    "preprocessing_tf": lambda: Preprocessing("tf"),
    "preprocessing_custom": lambda: Preprocessing(channel_order="bgr", scale=2.0, mean=(1.0, 2.0, 3.0), std=(0.5,)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_keras_round_trip(tmp_path, name):
    inputs = keras.Input((6, 6, 3))
    model = keras.Model(inputs, LAYERS[name]()(inputs))
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).uniform(0, 255, size=(1, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(_numpy(again(x)), _numpy(model(x)))
    assert again.layers[-1].get_config() == model.layers[-1].get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        LocalResponseNormalization(size=0)
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAveragePooling2D((0, 2))
    with pytest.raises(ValueError, match="mode must be one of"):
        Preprocessing("imagenet")
    with pytest.raises(ValueError, match="std must not contain 0"):
        Preprocessing(std=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="needs 3 RGB channels last"):
        Preprocessing("caffe")(np.zeros((1, 2, 2, 1), np.float32))
