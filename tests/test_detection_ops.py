"""Detection machinery against torchvision (test-only torch) and hand-computed cases: IoU, box
coding, anchors, NMS, matching, balanced sampling, box checks."""

import numpy as np
import pytest

import keras

from hybrid_keras.detection import (BoxCoder, anchor_grid, batched_nms, box_iou, check_boxes, from_yxyx_normalized,
                                    match_boxes, non_max_suppression, sample_balanced, to_yxyx_normalized)

agnostic = pytest.mark.backend_agnostic
numpy = keras.ops.convert_to_numpy


def _boxes(count, seed, size=100.0):
    rng = np.random.default_rng(seed)
    corner = rng.uniform(0, size, (count, 2))
    extent = rng.uniform(2, size / 3, (count, 2))
    return np.concatenate([corner, corner + extent], axis=1).astype(np.float32)


@agnostic
def test_iou_matches_torchvision_and_a_hand_case():
    import torch
    import torchvision

    a, b = _boxes(7, 0), _boxes(5, 1)
    np.testing.assert_allclose(numpy(box_iou(a, b)), torchvision.ops.box_iou(torch.tensor(a), torch.tensor(b)).numpy(),
                               atol=1e-6)
    # Two 10x10 squares overlapping in a 5x10 strip: 50 / 150.
    np.testing.assert_allclose(numpy(box_iou([[0, 0, 10, 10]], [[5, 0, 15, 10]])), [[1 / 3]], atol=1e-7)


@agnostic
def test_box_coding_by_hand_and_against_torchvision():
    import torch
    from torchvision.models.detection._utils import BoxCoder as TorchBoxCoder

    # Reference 10x10 at the origin; box 10x20 centred at (10, 15): dx 0.5, dy 1, dw 0, dh log 2.
    np.testing.assert_allclose(numpy(BoxCoder().encode([[5, 5, 15, 25]], [[0, 0, 10, 10]])),
                               [[0.5, 1.0, 0.0, np.log(2)]], atol=1e-6)
    boxes, references = _boxes(6, 2), _boxes(6, 3)
    coder, theirs = BoxCoder((10, 10, 5, 5)), TorchBoxCoder((10.0, 10.0, 5.0, 5.0))
    deltas = numpy(coder.encode(boxes, references))
    np.testing.assert_allclose(deltas, theirs.encode_single(torch.tensor(boxes), torch.tensor(references)).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(numpy(coder.decode(deltas, references)), boxes, rtol=1e-5, atol=1e-3)
    per_class = np.random.default_rng(4).normal(size=(6, 12)).astype(np.float32)  # three classes' deltas
    np.testing.assert_allclose(numpy(coder.decode(per_class, references)),
                               theirs.decode_single(torch.tensor(per_class), torch.tensor(references)).numpy(),
                               rtol=1e-5, atol=1e-3)


def test_anchors_by_hand_and_against_torchvision():
    import torch
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.image_list import ImageList

    # One 32-pixel square anchor per cell of a 1x2 map, stride 16: centred on (0, 0) and (16, 0).
    np.testing.assert_array_equal(numpy(anchor_grid((1, 2), 16, sizes=(32,), aspect_ratios=(1.0,))),
                                  [[-16, -16, 16, 16], [0, -16, 32, 16]])
    sizes, ratios = (24, 40), (0.5, 1.0, 2.0)
    generator = AnchorGenerator((sizes,), (ratios,))
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    theirs = generator(images, [torch.zeros(1, 8, 4, 6)])[0].numpy()  # stride 16 both ways
    np.testing.assert_array_equal(numpy(anchor_grid((4, 6), 16, sizes, ratios)), theirs)


@agnostic
def test_nms_matches_torchvision():
    import torch
    import torchvision

    boxes = _boxes(60, 5, size=60.0)
    scores = np.random.default_rng(6).permutation(60).astype(np.float32) / 60  # distinct
    classes = np.random.default_rng(7).integers(0, 3, 60)
    for threshold in (0.3, 0.6):
        expected = torchvision.ops.nms(torch.tensor(boxes), torch.tensor(scores), threshold).numpy()
        np.testing.assert_array_equal(non_max_suppression(boxes, scores, threshold), expected)
        expected = torchvision.ops.batched_nms(torch.tensor(boxes), torch.tensor(scores), torch.tensor(classes),
                                               threshold).numpy()
        np.testing.assert_array_equal(batched_nms(boxes, scores, classes, threshold), expected)
    assert batched_nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, int), 0.5).shape == (0,)


@agnostic
@pytest.mark.parametrize("allow_low_quality", [False, True])
def test_matching_matches_torchvision(allow_low_quality):
    import torch
    from torchvision.models.detection._utils import Matcher

    iou = numpy(box_iou(_boxes(4, 8), _boxes(40, 9)))
    expected = Matcher(0.5, 0.3, allow_low_quality)(torch.tensor(iou)).numpy()
    np.testing.assert_array_equal(numpy(match_boxes(iou, 0.5, 0.3, allow_low_quality)), expected)
    with pytest.raises(ValueError, match="ground-truth"):
        match_boxes(np.zeros((0, 5), np.float32), 0.5, 0.3)


@agnostic
def test_balanced_sampling():
    labels = np.array([1] * 10 + [0] * 100 + [-1] * 20)
    positive, negative = (numpy(m) for m in sample_balanced(labels, 32, 0.25, seed=3))
    assert positive.sum() == 8 and negative.sum() == 24
    assert labels[positive].tolist() == [1] * 8 and labels[negative].tolist() == [0] * 24
    again = [numpy(m) for m in sample_balanced(labels, 32, 0.25, seed=3)]
    np.testing.assert_array_equal(again[0], positive)
    # Too few positives: negatives fill the batch.
    positive, negative = (numpy(m) for m in sample_balanced(labels[5:], 32, 0.5, seed=0))
    assert positive.sum() == 5 and negative.sum() == 27


def test_normalized_boxes_round_trip():
    boxes = _boxes(5, 10)
    yxyx = numpy(to_yxyx_normalized(boxes, 120, 200))
    np.testing.assert_allclose(yxyx[:, 0], boxes[:, 1] / 120, rtol=1e-6)
    np.testing.assert_allclose(numpy(from_yxyx_normalized(yxyx, 120, 200)), boxes, rtol=1e-5)


def test_check_boxes_errors_and_clipping():
    with pytest.raises(ValueError, match="x2 >= x1"):
        check_boxes([[10, 0, 5, 4]])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        check_boxes([1, 2, 3, 4])
    with pytest.raises(ValueError, match="outside"):
        check_boxes([[200, 0, 220, 10]], image_size=(100, 150))
    np.testing.assert_array_equal(check_boxes([[-5, 10, 160, 90]], image_size=(100, 150)), [[0, 10, 150, 90]])
    with pytest.raises(ValueError, match="num_samples"):
        sample_balanced(np.zeros(4), 0, 0.5)
