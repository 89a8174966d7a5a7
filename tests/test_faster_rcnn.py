"""Fast and Faster R-CNN: proposals and detections against NumPy references on hand-made head
outputs, training targets by hand, output dictionaries, training lowering each loss, weights and
.keras round trips, the data function's checks, and the SavedModel export (TF-only process)."""

import numpy as np
import pytest

import keras

from hybrid_keras.detection import FasterRCNN, anchor_grid, detect, propose
from hybrid_keras.detection.targets import proposal_targets
from hybrid_keras.layers import Preprocessing

agnostic = pytest.mark.backend_agnostic
SIZE = 64
TINY = dict(anchor_sizes=(16, 32), representation_size=16, rpn_pre_nms_top_n=40, rpn_post_nms_top_n=20,
            detection_candidates=30, max_detections=10, seed=1)
# Every anchor and proposal is sampled (the batch sizes exceed their counts), so losses are deterministic.
ALL_SAMPLED = dict(rpn_batch_size=256, roi_batch_size=64, roi_positive_fraction=0.5)
GT_BOXES = np.array([[[5, 5, 30, 40], [0, 0, 0, 0]], [[10, 20, 60, 50], [30, 30, 50, 60]]], np.float32)
GT_LABELS = np.array([[0, -1], [1, 0]], np.int32)


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _compiled(fn):
    """``fn`` under ``jax.jit`` on JAX: one XLA compilation instead of one per operation (eager JAX
    compiles each new operation and shape), and proof that the shapes are static."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _decode(deltas, references, weights):
    """The R-CNN box decoding (Girshick et al., appendix C), written out in NumPy."""
    wx, wy, ww, wh = weights
    widths, heights = references[:, 2] - references[:, 0], references[:, 3] - references[:, 1]
    cx = references[:, 0] + widths / 2 + deltas[:, 0] / wx * widths
    cy = references[:, 1] + heights / 2 + deltas[:, 1] / wy * heights
    clamp = np.log(1000 / 16)
    half_w = np.exp(np.minimum(deltas[:, 2] / ww, clamp)) * widths / 2
    half_h = np.exp(np.minimum(deltas[:, 3] / wh, clamp)) * heights / 2
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)


def _iou(a, b):
    width = np.clip(np.minimum(a[2], b[2]) - np.maximum(a[0], b[0]), 0, None)
    height = np.clip(np.minimum(a[3], b[3]) - np.maximum(a[1], b[1]), 0, None)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


def _greedy(boxes, threshold, groups=None):
    """Greedy NMS over boxes already in decreasing score: the indices kept."""
    kept = []
    for i, box in enumerate(boxes):
        if all(_iou(box, boxes[j]) <= threshold or (groups is not None and groups[i] != groups[j]) for j in kept):
            kept.append(i)
    return kept


@agnostic
def test_proposals_match_a_numpy_reference():
    rng = np.random.default_rng(0)
    anchors = _numpy(anchor_grid((2, 3), 16, sizes=(16, 32), aspect_ratios=(0.5, 1.0, 2.0))) + 8.0  # 36 anchors
    objectness = rng.permutation(72).reshape(2, 36).astype(np.float32) / 10  # distinct scores per image
    deltas = rng.normal(0, 0.4, size=(2, 36, 4)).astype(np.float32)
    deltas[:, ::7, 2] = -6.0  # some boxes too narrow to keep
    boxes, valid = _compiled(lambda o, d: propose(o, d, anchors, image_size=(32, 48), pre_nms_top_n=20,
                                                  post_nms_top_n=8, nms_threshold=0.5, min_size=2.0))(objectness, deltas)
    boxes, valid = _numpy(boxes), _numpy(valid)
    for image in range(2):
        order = np.argsort(-objectness[image], kind="stable")[:20]
        decoded = _decode(deltas[image, order], anchors[order], (1, 1, 1, 1))
        decoded = np.clip(decoded, 0, [48, 32, 48, 32])
        large = ((decoded[:, 2] - decoded[:, 0]) >= 2) & ((decoded[:, 3] - decoded[:, 1]) >= 2)
        candidates = decoded[large]
        expected = candidates[_greedy(candidates, 0.5)][:8]
        assert valid[image].sum() == len(expected)
        np.testing.assert_allclose(boxes[image][valid[image]], expected, atol=1e-4)
        assert valid[image][: len(expected)].all()  # the survivors come first, best first


@agnostic
def test_detections_match_a_numpy_reference():
    rng = np.random.default_rng(1)
    proposals = np.sort(rng.uniform(0, 40, size=(1, 9, 2, 2)), axis=2).transpose(0, 1, 3, 2).reshape(1, 9, 4)
    proposals = proposals[..., [0, 2, 1, 3]].astype(np.float32) + [0, 0, 8, 8]  # x1 < x2, y1 < y2, 8+ px
    valid = np.ones((1, 9), bool)
    valid[0, 8] = False
    logits = rng.normal(0, 1.5, size=(1, 9, 3)).astype(np.float32)
    deltas = rng.normal(0, 1.0, size=(1, 9, 12)).astype(np.float32)
    out = _compiled(lambda *args: detect(*args, image_size=(40, 56), score_threshold=0.2, nms_threshold=0.4,
                                         candidates=12, max_detections=6))(proposals, valid, logits, deltas)
    out = {k: _numpy(v) for k, v in out.items()}
    scores = np.exp(logits[0]) / np.exp(logits[0]).sum(-1, keepdims=True)
    rows = []
    for c in (1, 2):
        boxes = np.clip(_decode(deltas[0, :, 4 * c:4 * c + 4], proposals[0], (10, 10, 5, 5)), 0, [56, 40, 56, 40])
        for p in range(8):
            large = boxes[p, 2] - boxes[p, 0] >= 1e-2 and boxes[p, 3] - boxes[p, 1] >= 1e-2
            if scores[p, c] > 0.2 and large:
                rows.append((scores[p, c], c, boxes[p]))
    rows = sorted(rows, key=lambda r: -r[0])[:12]
    kept = [rows[i] for i in _greedy([r[2] for r in rows], 0.4, groups=[r[1] for r in rows])][:6]
    count = len(kept)
    assert out["num_detections"].tolist() == [count]
    np.testing.assert_allclose(out["detection_scores"][0, :count], [r[0] for r in kept], rtol=1e-5)
    np.testing.assert_array_equal(out["detection_classes"][0, :count], [r[1] for r in kept])
    yxyx = np.array([[b[1] / 40, b[0] / 56, b[3] / 40, b[2] / 56] for _, _, b in kept]).reshape(-1, 4)
    np.testing.assert_allclose(out["detection_boxes"][0, :count], yxyx, atol=1e-5)
    assert not out["detection_scores"][0, count:].any() and not out["detection_boxes"][0, count:].any()


@agnostic
def test_proposal_targets_by_hand():
    gt_boxes = np.array([[[10, 10, 30, 30], [0, 0, 0, 0]]], np.float32)
    gt_labels = np.array([[1, -1]], np.int32)
    proposals = np.array([[[10, 10, 30, 32], [40, 40, 60, 60], [0, 0, 0, 0]]], np.float32)  # IoU 0.91, 0, padding
    valid = np.array([[True, True, False]])
    boxes, classes, weights, deltas = (_numpy(v) for v in _compiled(lambda *args: proposal_targets(
        *args, batch_size=8, positive_fraction=0.5, seed=0))(proposals, valid, gt_boxes, gt_labels))
    sampled = {tuple(b): (c, d) for b, c, w, d in zip(boxes[0], classes[0], weights[0], deltas[0]) if w}
    assert set(sampled) == {(10, 10, 30, 32), (40, 40, 60, 60), (10, 10, 30, 30)}  # not the padding rows
    assert sampled[(10, 10, 30, 32)][0] == 2 and sampled[(10, 10, 30, 30)][0] == 2 and sampled[(40, 40, 60, 60)][0] == 0
    # Proposal centre (20, 21), 20 x 22; ground truth centre (20, 20), 20 x 20; weights 10, 10, 5, 5.
    np.testing.assert_allclose(sampled[(10, 10, 30, 32)][1], [0, 10 * -1 / 22, 0, 5 * np.log(20 / 22)], atol=1e-5)
    np.testing.assert_allclose(sampled[(10, 10, 30, 30)][1], 0, atol=1e-6)
    assert not sampled[(40, 40, 60, 60)][1].any()


def _tiny_backbone():
    images = keras.Input((SIZE, SIZE, 3))
    x = Preprocessing("tf", name="preprocessing")(images)  # to [-1, 1], as MobileNetV2's
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=4, padding="same", activation="relu")(x)
    return keras.Model(images, x, name="tiny_stride16")


def _tiny(rpn=True, **kwargs):
    return FasterRCNN(_tiny_backbone(), 2, image_shape=(SIZE, SIZE, 3), rpn=rpn, **{**TINY, **kwargs})


def _images(batch=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(batch, SIZE, SIZE, 3), dtype=np.uint8)


def _check_dictionary(out, classes, max_detections):
    assert set(out) == {"detection_boxes", "detection_scores", "detection_classes", "num_detections"}
    batch = out["num_detections"].shape[0]
    assert out["detection_boxes"].shape == (batch, max_detections, 4)
    assert out["detection_scores"].shape == out["detection_classes"].shape == (batch, max_detections)
    assert all(v.dtype == np.float32 for v in out.values())
    for image in range(batch):
        count = int(out["num_detections"][image])
        assert 0 < count <= max_detections  # an untrained head scores about 1/3 everywhere: above 0.05
        assert set(out["detection_classes"][image, :count]) <= set(range(1, classes + 1))
        assert np.all(np.diff(out["detection_scores"][image, :count]) <= 0)
        boxes = out["detection_boxes"][image, :count]
        assert (boxes >= 0).all() and (boxes <= 1).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
        assert not out["detection_boxes"][image, count:].any() and not out["detection_classes"][image, count:].any()


@agnostic
def test_forward_returns_the_detection_dictionary():
    model = _tiny()
    out = _compiled(lambda images: model(images))(_images())
    _check_dictionary({k: _numpy(v) for k, v in out.items()}, 2, TINY["max_detections"])


def test_zoo_faster_rcnn_on_mobilenet_v2_and_its_weights_file(tmp_path):
    import zoo

    arguments = dict(backbone="mobilenet_v2", alpha=0.35, classes=2, input_shape=(SIZE, SIZE, 3), **TINY)
    model = zoo.load("faster_rcnn", **arguments)
    # MobileNetV2's stride-16 map (block_12_add, 96 x 0.35 -> 32 channels); keras.applications pads
    # stride-2 convolutions bottom/right, so cell i is centred on pixel 16 i + 15 (its middle at + 0.5).
    assert model.feature_shape == (4, 4, 32) and model.anchor_offset == 15.5 and model.roi_shift == 7.5
    images = _images()
    expected = {k: _numpy(v) for k, v in model(images).items()}
    _check_dictionary(expected, 2, TINY["max_detections"])
    model.save_weights(tmp_path / "detector.weights.h5")
    again = zoo.load("faster_rcnn", weights=str(tmp_path / "detector.weights.h5"), **arguments)
    for name, value in again(images).items():
        np.testing.assert_allclose(_numpy(value), expected[name], atol=1e-6)


def _loss_terms(model, x):
    for tracker in model.loss_terms.values():
        tracker.reset_state()
    model.compute_loss(x, {"boxes": GT_BOXES, "labels": GT_LABELS}, model(x, training=True))
    return {name: float(tracker.result()) for name, tracker in model.loss_terms.items()}


def _train(model, x, steps=2):
    model.compile(keras.optimizers.Adam(3e-3), run_eagerly=True)
    before = _loss_terms(model, x)
    for _ in range(steps):
        model.train_on_batch(x, {"boxes": GT_BOXES, "labels": GT_LABELS})
    return before, _loss_terms(model, x)


def test_faster_rcnn_training_lowers_the_rpn_and_classifier_losses():
    # The RoI head's box loss here depends on which proposals the changing RPN makes (at the
    # start the ground-truth boxes alone, with zero targets); the Fast R-CNN test below, on fixed
    # proposals, shows that head's box loss falling.
    before, after = _train(_tiny(**ALL_SAMPLED), _images())
    assert set(before) == {"rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss"}
    for name in ("rpn_objectness_loss", "rpn_box_loss", "classifier_loss"):
        assert after[name] < before[name], (name, before, after)


def test_fast_rcnn_training_lowers_the_head_losses():
    rng = np.random.default_rng(2)
    jittered = GT_BOXES + rng.normal(0, 3, GT_BOXES.shape)
    others = rng.uniform(0, 40, (2, 6, 2)).repeat(2, -1) + [0, 0, 15, 15]
    proposals = np.concatenate([jittered, others], axis=1).astype(np.float32)
    proposals[0, 1] = 0  # a padding row
    before, after = _train(_tiny(rpn=False, **ALL_SAMPLED), (_images(), proposals))
    assert before["box_loss"] > 0.1  # the jittered boxes have real targets
    for name in ("classifier_loss", "box_loss"):
        assert after[name] < before[name], (name, before, after)
    out = _tiny(rpn=False)((_images(1), proposals[:1]))
    assert tuple(out["detection_boxes"].shape) == (1, TINY["max_detections"], 4)


def test_keras_file_round_trip(tmp_path):
    model = _tiny()
    model.get_layer("class_logits").kernel.assign(np.random.default_rng(3).normal(size=(16, 3)).astype("float32"))
    images = _images(1)
    expected = {k: _numpy(v) for k, v in model(images).items()}
    model.save(tmp_path / "detector.keras")
    reloaded = keras.saving.load_model(tmp_path / "detector.keras")
    assert isinstance(reloaded, FasterRCNN) and reloaded.anchors.shape == model.anchors.shape
    assert {k: v for k, v in reloaded.get_config().items() if k != "backbone"} == {
        k: v for k, v in model.get_config().items() if k != "backbone"}
    for name, value in reloaded(images).items():
        np.testing.assert_allclose(_numpy(value), expected[name], atol=1e-6)


def test_bad_arguments_and_inputs():
    import zoo

    with pytest.raises(ValueError, match="backbone must be one of"):
        zoo.load("faster_rcnn", backbone="resnet50")
    with pytest.raises(ValueError, match="input_shape must be a fixed"):
        zoo.load("faster_rcnn", input_shape=(None, None, 3))
    with pytest.raises(TypeError, match="sets"):
        zoo.load("faster_rcnn", pooling="avg")
    with pytest.raises(ValueError, match="classes must be a positive int"):
        FasterRCNN(_tiny_backbone(), 0, image_shape=(SIZE, SIZE, 3))
    model = _tiny()
    with pytest.raises(ValueError, match=r"images must be \[B, 64, 64, 3\].*Received: shape \(1, 32, 32, 3\)"):
        model(np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="y must be"):
        model.compute_loss(_images(1), {"labels": GT_LABELS[:1]}, model(_images(1), training=True))
    with pytest.raises(ValueError, match="Fast R-CNN takes"):
        _tiny(rpn=False)(_images(1))


def _example(image, boxes, labels):
    return {"image": image, "objects": {"bbox": np.asarray(boxes, np.float32).reshape(-1, 4),
                                        "label": np.asarray(labels, np.int64)}}


def test_detection_batches_letterbox_pad_and_check():
    import tensorflow as tf

    from hybrid_keras.detection import detection_batches, restore_boxes
    from hybrid_keras.detection.data import detection_example

    boxes = [[[0.25, 0.5, 0.75, 1.5], [0.0, 0.0, 0.001, 0.5]], [[0.1, 0.2, 0.6, 0.8]]]  # 1.5: clipped; row 2: < 1 px
    wide, tall = np.full((40, 80, 3), 7, np.uint8), np.full((60, 30, 3), 9, np.uint8)
    dataset = tf.data.Dataset.from_tensors(_example(wide, boxes[0], [1, 0])).concatenate(
        tf.data.Dataset.from_tensors(_example(tall, boxes[1], [2])))  # images of two sizes: shape (None, None, 3)
    images, targets = next(iter(detection_batches(dataset, image_size=(64, 64), batch_size=2, classes=3, max_boxes=3)))
    assert images.dtype == tf.uint8 and tuple(images.shape) == (2, 64, 64, 3)
    # 40x80 -> 32x64 (padded below), 60x30 -> 64x32 (padded right).
    assert int(images[0, 31, 0, 0]) == 7 and int(images[0, 32, 0, 0]) == 0
    assert int(images[1, 0, 31, 0]) == 9 and int(images[1, 0, 32, 0]) == 0
    np.testing.assert_allclose(targets["boxes"][0].numpy(), [[32, 8, 64, 24], [0, 0, 0, 0], [0, 0, 0, 0]], atol=1e-4)
    np.testing.assert_allclose(targets["boxes"][1, 0].numpy(), [6.4, 6.4, 25.6, 38.4], atol=1e-4)
    np.testing.assert_array_equal(targets["labels"].numpy(), [[1, -1, -1], [2, -1, -1]])
    # Back to the original image: the model's box of the first object, normalised to its 64x64 input.
    restored = restore_boxes([[[8 / 64, 32 / 64, 24 / 64, 64 / 64]]], [32, 64], (64, 64))
    np.testing.assert_allclose(restored.numpy(), [[[0.25, 0.5, 0.75, 1.0]]], atol=1e-6)

    def check(boxes, labels, image=wide):
        example = tf.nest.map_structure(tf.constant, _example(image, boxes, labels))
        return detection_example(example, image_size=(64, 64), classes=3, max_boxes=2)

    with pytest.raises(tf.errors.InvalidArgumentError, match="ymax >= ymin and xmax >= xmin"):
        check([[0.2, 0.6, 0.5, 0.4]], [0])  # xmax < xmin
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"label must be in \[0, 3\)"):
        check([[0.2, 0.2, 0.5, 0.4]], [3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="more objects than max_boxes=2"):
        check([[0.2, 0.2, 0.5, 0.4]] * 3, [0, 0, 0])
    with pytest.raises(ValueError, match=r"RGB images \[H, W, 3\].*Received: shape \(9, 9, 1\)"):
        check([[0.2, 0.2, 0.5, 0.4]], [0], image=np.zeros((9, 9, 1), np.uint8))
    gray = tf.data.Dataset.from_tensors(_example(np.zeros((9, 9, 1), np.uint8), [[0.2, 0.2, 0.5, 0.4]], [0]))
    with pytest.raises(ValueError, match=r"RGB images \[H, W, 3\].*Received: shape \(9, 9, 1\)"):
        detection_batches(gray, image_size=(64, 64), batch_size=1, classes=3)


def test_export_serves_any_size_uint8_and_encoded_images(tmp_path):
    import json

    import hybrid_keras as hk

    model = _tiny()
    path = hk.export_saved_model(model, tmp_path / "detector" / "1")  # verified in a fresh TensorFlow-only process
    metadata = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())
    assert metadata["task"] == "detection" and metadata["image_shape"] == [None, None, 3]
    with pytest.raises(ValueError, match="takes its proposals"):
        hk.export_saved_model(_tiny(rpn=False), tmp_path / "fast" / "1")
