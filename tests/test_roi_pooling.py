"""RoIPooling against torchvision.ops.roi_pool (test-only torch), and spatial pyramid pooling
against a hand-computed case."""

import numpy as np
import pytest

import keras

from hybrid_keras.layers import RoIPooling, SpatialPyramidPooling

agnostic = pytest.mark.backend_agnostic

# Inside, across and past the borders, smaller than a bin, a point, wholly outside.
ROIS = np.array([[0, 1.3, 2.2, 9.7, 8.1], [1, -5, -3, 4, 6], [1, 10, 8, 30, 20], [0, 3, 3, 3.2, 3.1],
                 [1, 0, 0, 16, 12], [0, 5, 5, 5, 5], [1, 15.5, 11.5, 16.9, 12.8], [0, 40, 30, 50, 44]], np.float32)


def _features(seed=0):
    return np.random.default_rng(seed).normal(size=(2, 13, 17, 5)).astype("float32")


def _torchvision(features, rois, output_size, scale):
    import torch
    import torchvision

    nchw = torch.tensor(features).permute(0, 3, 1, 2)
    return torchvision.ops.roi_pool(nchw, torch.tensor(rois), output_size, scale).permute(0, 2, 3, 1).numpy()


@agnostic
@pytest.mark.parametrize("scale", [1.0, 0.5, 0.3])
@pytest.mark.parametrize("output_size", [(3, 4), (2, 2)])
def test_matches_torchvision(scale, output_size):
    features = _features()
    ours = keras.ops.convert_to_numpy(RoIPooling(output_size, scale)([features, ROIS]))
    np.testing.assert_allclose(ours, _torchvision(features, ROIS, output_size, scale), atol=1e-6)


@agnostic
def test_empty_roi_set():
    out = RoIPooling(2)([_features(), np.zeros((0, 5), np.float32)])
    assert tuple(out.shape) == (0, 2, 2, 5)


def test_gradient_matches_torchvision():
    import tensorflow as tf
    import torch
    import torchvision

    features = _features(1)
    weights = np.random.default_rng(2).normal(size=(len(ROIS), 3, 2, 5)).astype("float32")
    variable = tf.Variable(features)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(RoIPooling((3, 2), 0.5)([variable, ROIS]) * weights)
    ours = tf.convert_to_tensor(tape.gradient(loss, variable)).numpy()  # the per-RoI gather gives IndexedSlices
    nchw = torch.tensor(features).permute(0, 3, 1, 2).requires_grad_()
    out = torchvision.ops.roi_pool(nchw, torch.tensor(ROIS), (3, 2), 0.5)
    (out * torch.tensor(weights).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(ours, nchw.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@agnostic
def test_pyramid_by_hand():
    # One 3x5 map, two channels: 0..14 row-major, and 100 minus that.
    values = np.arange(15, dtype=np.float32).reshape(1, 3, 5)
    features = np.stack([values, 100 - values], axis=-1)
    # Level 1: the whole map. Level 2: rows [0, 2) and [1, 3), columns [0, 3) and [2, 5).
    expected = [14, 100, 7, 100, 9, 98, 12, 95, 14, 93]
    out = keras.ops.convert_to_numpy(SpatialPyramidPooling((1, 2))(features))
    np.testing.assert_array_equal(out, [expected])


@agnostic
def test_pyramid_gives_one_length_for_any_size():
    layer = SpatialPyramidPooling((1, 3))
    for height, width in [(4, 4), (9, 13)]:
        features = np.random.default_rng(height).normal(size=(2, height, width, 3)).astype("float32")
        out = keras.ops.convert_to_numpy(layer(features))
        assert out.shape == (2, 3 * (1 + 9))
        np.testing.assert_allclose(out[:, :3], features.max(axis=(1, 2)))  # level 1 is the global max


@agnostic
def test_pyramid_per_region_is_roi_pooling_at_each_level():
    features = _features(3)
    out = keras.ops.convert_to_numpy(SpatialPyramidPooling((1, 3), spatial_scale=0.5)([features, ROIS]))
    parts = [keras.ops.convert_to_numpy(RoIPooling(n, 0.5)([features, ROIS])).reshape(len(ROIS), -1) for n in (1, 3)]
    np.testing.assert_array_equal(out, np.concatenate(parts, axis=1))


def test_keras_round_trip(tmp_path):
    features = keras.Input((None, None, 5))
    rois = keras.Input((5,), batch_size=None)
    model = keras.Model([features, rois], [RoIPooling(2, 0.5)([features, rois]),
                                          SpatialPyramidPooling((1, 2))([features, rois]),
                                          SpatialPyramidPooling((1, 2))(features)])
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    inputs = [_features(4), ROIS]
    for a, b in zip(model(inputs), again(inputs)):  # not predict: the inputs' batch sizes differ
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@agnostic
def test_bad_arguments():
    with pytest.raises(ValueError, match="output_size"):
        RoIPooling(0)
    with pytest.raises(ValueError, match="spatial_scale"):
        RoIPooling(2, spatial_scale=0)
    with pytest.raises(ValueError, match="levels"):
        SpatialPyramidPooling((1, 0))
    with pytest.raises(ValueError, match="features"):
        SpatialPyramidPooling((1,))(np.zeros((3, 4, 5), np.float32))
