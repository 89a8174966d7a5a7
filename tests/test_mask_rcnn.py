"""Mask R-CNN: mask targets against a NumPy RoIAlign, the mask loss by hand, paste_masks on a hand
case and against TensorFlow's crop_and_resize, the output dictionary, training lowering every
loss, the .keras round trip, masks through detection_batches, bad input, mask AP against
pycocotools, and the SavedModel export (TF-only process)."""

import numpy as np
import pytest

import keras

from hybrid_keras.detection import MaskRCNN, paste_masks
from hybrid_keras.detection.targets import mask_loss, mask_targets
from tests.test_faster_rcnn import ALL_SAMPLED, GT_BOXES, GT_LABELS, SIZE, _compiled, _numpy, _tiny_backbone
from tests.test_faster_rcnn import TINY as FASTER_TINY

agnostic = pytest.mark.backend_agnostic
# Mask R-CNN's own tiny settings beside Faster R-CNN's (the same scene and ground truth).
TINY = {**FASTER_TINY, "mask_channels": 4}


def _ellipses(boxes, height, width):
    """A filled ellipse inside each box ``[..., 4]`` -> uint8 ``[..., height, width]``."""
    yy, xx = np.mgrid[:height, :width] + 0.5
    boxes = np.asarray(boxes, np.float64)
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    rx, ry = np.maximum((boxes[..., 2] - boxes[..., 0]) / 2, 0.5), np.maximum((boxes[..., 3] - boxes[..., 1]) / 2, 0.5)
    inside = ((xx - cx[..., None, None]) / rx[..., None, None]) ** 2 + (
        (yy - cy[..., None, None]) / ry[..., None, None]) ** 2 <= 1
    return (inside & (boxes[..., 2:] > boxes[..., :2]).all(-1)[..., None, None]).astype(np.uint8)


def _roi_align_reference(image, box, size):
    """torchvision's roi_align of one map at one box: scale 1, aligned=False, adaptive sampling."""
    height, width = image.shape
    x1, y1, x2, y2 = box
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    grid_h, grid_w = int(np.ceil(roi_h / size)), int(np.ceil(roi_w / size))
    out = np.zeros((size, size))
    for ph in range(size):
        for pw in range(size):
            total = 0.0
            for iy in range(grid_h):
                y = y1 + ph * roi_h / size + (iy + 0.5) * roi_h / size / grid_h
                for ix in range(grid_w):
                    x = x1 + pw * roi_w / size + (ix + 0.5) * roi_w / size / grid_w
                    if y < -1 or y > height or x < -1 or x > width:
                        continue
                    y, x = max(y, 0.0), max(x, 0.0)
                    y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
                    y = float(y0) if y0 == height - 1 else y
                    x = float(x0) if x0 == width - 1 else x
                    y1_, x1_ = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
                    ly, lx = y - y0, x - x0
                    total += ((1 - ly) * (1 - lx) * image[y0, x0] + (1 - ly) * lx * image[y0, x1_]
                              + ly * (1 - lx) * image[y1_, x0] + ly * lx * image[y1_, x1_])
            out[ph, pw] = total / (grid_h * grid_w)
    return out


@agnostic
def test_mask_targets_match_a_numpy_roi_align():
    masks = _ellipses(np.array([[[2, 3, 20, 18], [10, 0, 24, 12]], [[0, 5, 16, 24], [4, 4, 9, 9]]]), 24, 24)
    boxes = np.array([[[1, 2, 21, 19], [12, 1, 23, 14], [0, 0, 24, 24]],
                      [[2, 6, 12, 26], [5, 3, 8.5, 10], [-3, 20, 6, 30]]], np.float32)  # the last one mostly outside
    matches = np.array([[0, 1, 0], [0, 1, 0]], np.int32)
    targets = _numpy(_compiled(lambda *a: mask_targets(*a, size=5))(masks, matches, boxes))
    assert targets.shape == (2, 3, 5, 5)
    for image in range(2):
        for row in range(3):
            crop = _roi_align_reference(masks[image, matches[image, row]].astype(np.float64), boxes[image, row], 5)
            np.testing.assert_array_equal(targets[image, row], crop >= 0.5, err_msg=f"image {image}, box {row}")
    assert targets.any() and not targets.all()


@agnostic
def test_mask_loss_reads_only_the_ground_truth_class():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 2, 2, 3)).astype(np.float32)
    targets = rng.integers(0, 2, (3, 2, 2)).astype(np.float32)
    classes, weights = np.array([2, 0, 3]), np.array([1.0, 1.0, 0.0], np.float32)  # background, unweighted: out
    own = logits[0, :, :, 1]
    expected = np.mean(np.maximum(own, 0) - own * targets[0] + np.log1p(np.exp(-np.abs(own))))
    loss = _compiled(mask_loss)
    assert float(_numpy(loss(logits, classes, weights, targets))) == pytest.approx(expected, rel=1e-5)
    others = logits.copy()
    others[0, :, :, [0, 2]] += 5.0  # the other classes' masks of the counted box
    others[1:] = 0.0  # the boxes that do not count
    assert float(_numpy(loss(others, classes, weights, targets))) == pytest.approx(expected, rel=1e-5)


def test_paste_masks_by_hand_and_as_crop_and_resize():
    # A 5x5 image (rows at 0, 1/4, ..., 1); the box spans rows [0, 1/2] and columns [1/2, 1]:
    # mask cell i of 2 lies at ymin + i (ymax - ymin), so image rows 0, 1, 2 read mask rows 0, 1/2,
    # 1, and image columns 2, 3, 4 read mask columns 0, 1/2, 1; everything else is outside.
    probabilities = paste_masks([[[1.0, 0.0], [0.0, 0.0]]], [[0.0, 0.5, 0.5, 1.0]], 5, 5, threshold=None)
    expected = np.zeros((5, 5), np.float32)
    expected[:3, 2:] = [[1, 0.5, 0], [0.5, 0.25, 0], [0, 0, 0]]
    np.testing.assert_allclose(probabilities[0], expected, atol=1e-6)
    np.testing.assert_array_equal(paste_masks([[[1.0, 0.0], [0.0, 0.0]]], [[0.0, 0.5, 0.5, 1.0]], 5, 5)[0],
                                  expected > 0.5)
    # The TF Object Detection API's reframe_box_masks_to_image_masks: crop_and_resize of each box
    # mask over the image's box in the mask's coordinates, zeros outside.
    import tensorflow as tf

    rng = np.random.default_rng(1)
    masks = rng.random((2, 3, 28, 28)).astype(np.float32)
    corners = np.sort(rng.uniform(-0.2, 1.2, (2, 3, 2, 2)), axis=2)
    boxes = corners.transpose(0, 1, 3, 2).reshape(2, 3, 4)[..., [0, 2, 1, 3]].astype(np.float32)
    pasted = paste_masks(masks, boxes, 37, 50, threshold=None)
    flat = boxes.reshape(-1, 4)
    span = np.maximum(flat[:, 2:] - flat[:, :2], 1e-4)
    reverse = np.concatenate([-flat[:, :2] / span, (1 - flat[:, :2]) / span], axis=1)
    reference = tf.image.crop_and_resize(masks.reshape(-1, 28, 28, 1), reverse, np.arange(6), (37, 50))
    np.testing.assert_allclose(pasted.reshape(6, 37, 50), reference.numpy()[..., 0], atol=1e-5)
    with pytest.raises(ValueError, match=r"boxes must be \[..., M, 4\].*Received: shape \(2, 4\)"):
        paste_masks(masks[0], boxes[0, :2], 10, 10)


def _tiny(**kwargs):
    return MaskRCNN(_tiny_backbone(), 2, image_shape=(SIZE, SIZE, 3), **{**TINY, **kwargs})


def _images(batch=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(batch, SIZE, SIZE, 3), dtype=np.uint8)


def _targets():
    return {"boxes": GT_BOXES, "labels": GT_LABELS, "masks": _ellipses(GT_BOXES, SIZE, SIZE)}


@agnostic
def test_forward_returns_the_dictionary_with_masks():
    model = _tiny(max_detections=40)  # more rows than the 30 candidates: padding rows follow
    out = {k: _numpy(v) for k, v in _compiled(lambda images: model(images))(_images()).items()}
    assert set(out) == {"detection_boxes", "detection_scores", "detection_classes", "num_detections",
                        "detection_masks"}
    assert all(v.dtype == np.float32 for v in out.values())
    assert out["detection_masks"].shape == (2, 40, 28, 28)
    for image in range(2):
        count = int(out["num_detections"][image])
        assert 0 < count <= 30
        masks = out["detection_masks"][image]
        assert (masks[:count] > 0).all() and (masks[:count] < 1).all()  # sigmoid probabilities
        assert not masks[count:].any()  # zeros on padding rows


def _loss_terms(model, x, y):
    for tracker in model.loss_terms.values():
        tracker.reset_state()
    model.compute_loss(x, y, model(x, training=True))
    return {name: float(tracker.result()) for name, tracker in model.loss_terms.items()}


def test_training_lowers_every_loss():
    model, x, y = _tiny(**ALL_SAMPLED), _images(), _targets()
    model.compile(keras.optimizers.Adam(3e-3), run_eagerly=True)
    before = _loss_terms(model, x, y)
    for _ in range(3):
        model.train_on_batch(x, y)
    after = _loss_terms(model, x, y)
    assert set(before) == {"rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss", "mask_loss"}
    # The head's box loss depends on the changing proposals (see test_faster_rcnn); the rest fall.
    for name in ("rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "mask_loss"):
        assert after[name] < before[name], (name, before, after)


def test_keras_file_round_trip_and_the_zoo(tmp_path):
    import zoo

    model = _tiny()
    model.get_layer("mask_logits").kernel.assign(np.random.default_rng(3).normal(size=(1, 1, 4, 2)).astype("float32"))
    images = _images(1)
    expected = {k: _numpy(v) for k, v in model(images).items()}
    model.save(tmp_path / "masks.keras")
    reloaded = keras.saving.load_model(tmp_path / "masks.keras")
    assert isinstance(reloaded, MaskRCNN) and reloaded.mask_channels == 4 and reloaded.mask_size == 28
    for name, value in reloaded(images).items():
        np.testing.assert_allclose(_numpy(value), expected[name], atol=1e-6)
    built = zoo.load("mask_rcnn", backbone="mobilenet_v2", alpha=0.35, classes=3, input_shape=(SIZE, SIZE, 3),
                     **TINY)
    assert isinstance(built, MaskRCNN) and built.get_layer("mask_logits").kernel.shape == (1, 1, 4, 3)
    assert zoo.model_card("mask_rcnn").task == "detection"


def _example(image, boxes, labels, masks):
    return {"image": image, "objects": {"bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
                                        "label": np.asarray(labels, np.int64), "segmentation": masks}}


def test_detection_batches_letterbox_the_masks():
    import tensorflow as tf

    from hybrid_keras.detection import detection_batches
    from hybrid_keras.detection.data import detection_example

    wide = np.full((40, 80, 3), 7, np.uint8)
    masks = np.zeros((3, 40, 80, 1), np.uint8)
    masks[0, 10:30, 40:80] = 255  # the first object: rows 10-30, columns 40-80
    masks[1, 0:1, 0:40] = 255  # less than a pixel high after resizing: dropped with its box
    masks[2, 0:20, 0:20] = 255
    boxes = [[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.001, 0.5], [0.0, 0.0, 0.5, 0.25]]
    dataset = tf.data.Dataset.from_tensors(_example(wide, boxes, [1, 0, 2], masks))
    images, targets = next(iter(detection_batches(dataset, image_size=(64, 64), batch_size=1, classes=3, max_boxes=4,
                                                  masks=True)))
    assert targets["masks"].dtype == tf.uint8 and tuple(targets["masks"].shape) == (1, 4, 64, 64)
    np.testing.assert_array_equal(targets["labels"].numpy(), [[1, 2, -1, -1]])
    # 40x80 -> 32x64 (scale 0.8, padded below): the first mask covers rows 8-24, columns 32-64.
    expected = np.zeros((64, 64), np.uint8)
    expected[8:24, 32:64] = 1
    np.testing.assert_array_equal(targets["masks"][0, 0].numpy(), expected)
    expected = np.zeros((64, 64), np.uint8)
    expected[:16, :16] = 1
    np.testing.assert_array_equal(targets["masks"][0, 1].numpy(), expected)
    assert not targets["masks"][0, 2:].numpy().any()
    plain = next(iter(detection_batches(dataset, image_size=(64, 64), batch_size=1, classes=3, max_boxes=4)))[1]
    assert "masks" not in plain

    def check(masks, labels=(1,), **kwargs):
        example = tf.nest.map_structure(tf.constant, _example(wide, [[0.2, 0.2, 0.5, 0.4]] * len(labels), labels, masks))
        return detection_example(example, image_size=(64, 64), classes=3, max_boxes=2, masks=True, **kwargs)

    with pytest.raises(ValueError, match=r"segmentation must be instance masks \[N, H, W, 1\].*Received: shape"):
        check(np.zeros((1, 40, 80), np.uint8))
    with pytest.raises(ValueError, match=r"the image's height and width \(40, 80\).*Received: shape \(1, 20, 80, 1\)"):
        check(np.zeros((1, 20, 80, 1), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="one mask per objects/label"):
        check(np.zeros((2, 40, 80, 1), np.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label must be in \[0, 3\)"):
        check(np.zeros((1, 40, 80, 1), np.uint8), labels=(3,))
    boxes_only = tf.data.Dataset.from_tensors({"image": wide, "objects": {"bbox": np.zeros((1, 4), np.float32),
                                                                          "label": np.zeros(1, np.int64)}})
    with pytest.raises(ValueError, match="masks=True needs objects/segmentation"):
        detection_batches(boxes_only, image_size=(64, 64), batch_size=1, classes=3, masks=True)


def test_bad_inputs():
    from hybrid_keras.detection import FasterRCNN

    x, y = _images(1), {k: v[:1] for k, v in _targets().items()}
    faster = FasterRCNN(_tiny_backbone(), 2, image_shape=(SIZE, SIZE, 3), **{k: v for k, v in TINY.items()
                                                                             if k != "mask_channels"})
    with pytest.raises(ValueError, match="has no mask head"):
        faster.compute_loss(x, y, faster(x, training=True))
    model = _tiny()
    with pytest.raises(ValueError, match="y must have 'masks'"):
        model.compute_loss(x, {"boxes": y["boxes"], "labels": y["labels"]}, model(x, training=True))
    with pytest.raises(ValueError, match=r"masks must be \[B, G, 64, 64\].*Received: shape \(1, 2, 32, 32\)"):
        model.compute_loss(x, {**y, "masks": y["masks"][:, :, :32, :32]}, model(x, training=True))
    with pytest.raises(ValueError, match="mask_channels must be a positive int"):
        _tiny(mask_channels=0)


def test_mask_ap_equals_pycocotools_on_pasted_masks():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from hybrid_keras.detection import coco_metrics

    rng = np.random.default_rng(4)
    height, width = 48, 60
    truths, detections, images, annotations, results = [], [], [], [], []
    for image_id in range(1, 5):
        corners = np.sort(rng.uniform(0, 1, (3, 2, 2)), axis=1)
        truth_boxes = corners.transpose(0, 2, 1).reshape(3, 4)[:, [0, 2, 1, 3]] * [height, width, height, width]
        truth_boxes = truth_boxes[:, [1, 0, 3, 2]] + [0, 0, 4, 4]  # pixel x1, y1, x2, y2, 4+ px
        truth_masks = _ellipses(truth_boxes, height, width).astype(bool)
        labels = rng.integers(1, 3, 3)
        jittered = truth_boxes + rng.normal(0, 2, truth_boxes.shape)
        yxyx = np.clip(jittered[:, [1, 0, 3, 2]] / [height, width, height, width], 0, 1)
        box_masks = rng.uniform(0.3, 1.0, (3, 28, 28)) * (rng.random((3, 1, 1)) < 0.8)  # some empty
        masks = paste_masks(box_masks, yxyx, height, width)
        scores = rng.random(3)
        truths.append({"boxes": truth_boxes, "labels": labels, "masks": truth_masks})
        detections.append({"boxes": jittered, "labels": labels, "scores": scores, "masks": masks})
        images.append({"id": image_id, "height": height, "width": width})
        for mask, label in zip(truth_masks, labels):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "segmentation": rle, "area": float(mask.sum()), "iscrowd": 0,
                                "bbox": list(mask_utils.toBbox(rle))})
        for mask, label, score in zip(masks, labels, scores):
            results.append({"image_id": image_id, "category_id": int(label), "score": float(score),
                            "segmentation": mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))})
    ground_truth = COCO()
    ground_truth.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1}, {"id": 2}]}
    ground_truth.createIndex()
    evaluation = COCOeval(ground_truth, ground_truth.loadRes(results), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    ours = coco_metrics(truths, detections, iou_type="segm")
    assert 0 < ours["AP"] < 1
    np.testing.assert_allclose([ours[k] for k in ("AP", "AP50", "AP75")], evaluation.stats[:3], atol=1e-12)


def test_export_serves_masks(tmp_path):
    import json

    import hybrid_keras as hk

    path = hk.export_saved_model(_tiny(), tmp_path / "masks" / "1")  # verified in a fresh TensorFlow-only process
    metadata = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())
    assert metadata["outputs"][-1] == "detection_masks" and metadata["image_shape"] == [None, None, 3]
