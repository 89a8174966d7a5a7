"""RoIAlign against torchvision.ops.roi_align (test-only torch), and the box-to-RoI layers."""

import numpy as np
import pytest

import keras

from hybrid_keras.layers import BoxesToRoIs, PerImage, RoIAlign

agnostic = pytest.mark.backend_agnostic

# Inside, across and past the borders, smaller than a bin, a point, an empty box.
ROIS = np.array([[0, 1.3, 2.2, 9.7, 8.1], [1, -5, -3, 4, 6], [1, 10, 8, 30, 20], [0, 3, 3, 3.2, 3.1],
                 [1, 0, 0, 16, 12], [0, 5, 5, 5, 5], [1, 15.5, 11.5, 16.9, 12.8]], np.float32)


def _features(seed=0):
    return np.random.default_rng(seed).normal(size=(2, 13, 17, 5)).astype("float32")


def _torchvision(features, rois, output_size, scale, sampling_ratio, aligned):
    import torch
    import torchvision

    nchw = torch.tensor(features).permute(0, 3, 1, 2)
    out = torchvision.ops.roi_align(nchw, torch.tensor(rois), output_size, scale, sampling_ratio, aligned)
    return out.permute(0, 2, 3, 1).numpy()


@agnostic
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [2, 1, 0])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_matches_torchvision(aligned, sampling_ratio, scale):
    features = _features()
    ours = keras.ops.convert_to_numpy(RoIAlign((3, 4), scale, sampling_ratio, aligned)([features, ROIS]))
    expected = _torchvision(features, ROIS, (3, 4), scale, sampling_ratio, aligned)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@agnostic
def test_empty_roi_set():
    out = RoIAlign(2)([_features(), np.zeros((0, 5), np.float32)])
    assert tuple(out.shape) == (0, 2, 2, 5)


def test_gradient_matches_torchvision():
    import tensorflow as tf
    import torch
    import torchvision

    features = _features(1)
    weights = np.random.default_rng(2).normal(size=(len(ROIS), 2, 3, 5)).astype("float32")
    variable = tf.Variable(features)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(RoIAlign((2, 3), 0.5, 2, True)([variable, ROIS]) * weights)
    ours = tape.gradient(loss, variable).numpy()
    nchw = torch.tensor(features).permute(0, 3, 1, 2).requires_grad_()
    out = torchvision.ops.roi_align(nchw, torch.tensor(ROIS), (2, 3), 0.5, 2, True)
    (out * torch.tensor(weights).permute(0, 3, 1, 2)).sum().backward()
    np.testing.assert_allclose(ours, nchw.grad.permute(0, 2, 3, 1).numpy(), atol=1e-5)


@agnostic
def test_boxes_become_rois_and_back():
    boxes = np.array([[[1, 2, 3, 4], [5, 6, 7, 8]], [[0, 0, 1, 1], [2, 2, 2, 2]]], np.float32)
    rois = keras.ops.convert_to_numpy(BoxesToRoIs(shift=0.5)(boxes))
    np.testing.assert_allclose(rois, [[0, 0.5, 1.5, 3.5, 5.5], [0, 4.5, 5.5, 11.5, 13.5],
                                      [1, -0.5, -0.5, 0.5, 0.5], [1, 1.5, 1.5, 3.5, 3.5]])
    rows = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    back = keras.ops.convert_to_numpy(PerImage()([rows, boxes]))
    np.testing.assert_array_equal(back, rows.reshape(2, 2, 3))
