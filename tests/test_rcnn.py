"""R-CNN: selective search on a hand-made image, the SVM solver against scipy's solution of the
same primal problem (and a separable hand case), hard-negative mining, ridge box regression,
the warp against a NumPy bilinear crop-resize and RoIAlign, the model's forward pass against a
hand computation, an end-to-end fit on tiny synthetic images, .keras round trips, bad input."""

import numpy as np
import pytest

import keras

from hybrid_keras.detection.rcnn import RCNN, RCNNDetector, dilate_boxes, warp_crops
from hybrid_keras.detection.svm import (LinearSVM, fit_ridge, mine_hard_negatives, primal_objective, train_linear_svm,
                                        train_svm_hard_negatives)

agnostic = pytest.mark.backend_agnostic


def _numpy(x):
    return keras.ops.convert_to_numpy(x)


def _compiled(fn):
    """``fn`` under ``jax.jit`` on JAX: one XLA compilation instead of one per operation, and
    proof that the shapes are static."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


# ------------------------------------------------------------------------------- proposals


def _two_rectangles():
    image = np.full((48, 64, 3), 30, np.uint8)
    image[5:20, 8:30] = (220, 40, 40)
    image[25:44, 36:60] = (40, 200, 60)
    return image, [(8, 5, 30, 20), (36, 25, 60, 44)]


def test_selective_search_finds_each_rectangle_deterministically():
    from hybrid_keras.detection.proposals import proposal_recall, selective_search

    image, rectangles = _two_rectangles()
    boxes = selective_search(image, "fast")
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4 and len(boxes)
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= 64).all() and (boxes[:, [1, 3]] <= 48).all()
    assert len(np.unique(boxes, axis=0)) == len(boxes)
    for rectangle in rectangles:
        assert max(_iou(rectangle, box) for box in boxes) > 0.7
    for _ in range(3):  # same boxes, same order (OpenCV's ranking draws from rand())
        np.testing.assert_array_equal(selective_search(image, "fast"), boxes)
    assert len(selective_search(image, "fast", max_proposals=2)) == 2
    assert proposal_recall([boxes], [np.float32(rectangles)]) == {"recall@0.5": 1.0, "recall@0.7": 1.0}


def test_selective_search_rejects_bad_input():
    from hybrid_keras.detection.proposals import selective_search

    image, _ = _two_rectangles()
    with pytest.raises(ValueError, match="mode must be one of"):
        selective_search(image, "slow")
    with pytest.raises(ValueError, match="image must be an RGB array"):
        selective_search(image[..., 0])
    with pytest.raises(ValueError, match="max_proposals must be a positive int"):
        selective_search(image, max_proposals=0)


# ------------------------------------------------------------------------------- solvers


def _svm_data(seed=0, count=40):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 3))
    y = np.where(x[:, 0] + 0.5 * x[:, 1] + 0.4 * rng.normal(size=count) > 0.3, 1, -1)
    return x, y


def test_svm_matches_scipy_on_the_primal_problem():
    from scipy.optimize import minimize

    x, y = _svm_data()
    C, weight, bias_scale = 0.5, 2.0, 1.0
    svm = train_linear_svm(x, y, C=C, positive_weight=weight, bias_scale=bias_scale, tolerance=1e-8)
    assert svm.converged
    # The same problem as a QP in (w, b, slacks), solved by scipy's SLSQP.
    n, f = x.shape
    cost = np.where(y > 0, C * weight, C)

    def objective(v):
        w, b, slack = v[:f], v[f], v[f + 1:]
        return 0.5 * (w @ w + (b / bias_scale) ** 2) + cost @ slack

    constraints = [{"type": "ineq", "fun": lambda v: y * (x @ v[:f] + v[f]) - 1 + v[f + 1:]},
                   {"type": "ineq", "fun": lambda v: v[f + 1:]}]
    reference = minimize(objective, np.zeros(f + 1 + n), constraints=constraints, method="SLSQP",
                         options={"ftol": 1e-12, "maxiter": 500})
    assert reference.success
    ours = primal_objective(x, y, svm.weights.astype(np.float64), svm.bias, C=C, positive_weight=weight,
                            bias_scale=bias_scale)
    assert ours == pytest.approx(reference.fun, rel=1e-5)
    np.testing.assert_allclose(svm.weights, reference.x[:f], atol=2e-3)
    assert svm.bias == pytest.approx(reference.x[f], abs=2e-3)
    # KKT: alpha 0 -> outside the margin, at its bound -> inside, in between -> on it.
    margin = y * svm.decision_function(x)
    upper = cost
    assert (margin[svm.dual <= 1e-9] >= 1 - 1e-4).all()
    assert (margin[svm.dual >= upper - 1e-9] <= 1 + 1e-4).all()
    free = (svm.dual > 1e-9) & (svm.dual < upper - 1e-9)
    np.testing.assert_allclose(margin[free], 1.0, atol=1e-4)


def test_svm_separable_hand_case():
    # Hard margin (large C, no bias): the support vectors (1, 0) and (-1, 0) give w = (1, 0).
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0], [-2.0, -1.5]])
    y = np.array([1, -1, 1, -1])
    svm = train_linear_svm(x, y, C=100.0, positive_weight=1.0, bias_scale=0.0, tolerance=1e-9)
    np.testing.assert_allclose(svm.weights, [1.0, 0.0], atol=1e-6)
    # y x is (1, 0) for both support vectors, so only their alphas' sum is determined: 1.
    assert svm.dual[0] + svm.dual[1] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(svm.dual[2:], 0.0, atol=1e-9)


def test_hard_negative_mining_adds_exactly_the_margin_violators():
    svm = LinearSVM(weights=np.float32([1.0, 0.0]), bias=0.5, dual=np.zeros(0), epochs=0, converged=True)
    # Scores -2.5, -1, -0.9, 0.5, 2.5, -1.1.
    negatives = np.float32([[-3.0, 0], [-1.5, 1], [-1.4, 0], [0.0, 0], [2.0, 5], [-1.6, 0]])
    np.testing.assert_array_equal(mine_hard_negatives(svm, negatives), [2, 3, 4])  # -1 itself is on the margin
    np.testing.assert_array_equal(mine_hard_negatives(svm, negatives, exclude=[3]), [2, 4])

    x, y = _svm_data(1, 120)
    positives, pool = x[y > 0], x[y < 0]
    options = dict(C=1.0, positive_weight=2.0, bias_scale=1.0)
    svm, cache, history = train_svm_hard_negatives(positives, pool, rounds=2, initial_negatives=10, seed=3, **options)
    first = np.sort(np.random.default_rng(3).choice(len(pool), 10, replace=False))
    first_svm = train_linear_svm(np.concatenate([positives, pool[first]]),
                                 np.r_[np.ones(len(positives)), -np.ones(10)], seed=3, **options)
    violators = np.flatnonzero(first_svm.decision_function(pool) > -1)
    np.testing.assert_array_equal(cache, np.union1d(first, violators))
    assert history[0] == {**history[0], "negatives": 10, "added": len(np.setdiff1d(violators, first))}
    assert history[1]["negatives"] == len(cache)


def test_ridge_and_box_regression_targets_round_trip():
    from hybrid_keras.detection import BoxCoder

    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    t = rng.normal(size=(30, 2))
    weights, bias = fit_ridge(x, t, lam=3.0)
    # Independent truth: the normal equations of [X 1] with the penalty on W only.
    design = np.concatenate([x, np.ones((30, 1))], axis=1)
    penalty = np.diag([3.0] * 4 + [0.0])
    expected = np.linalg.solve(design.T @ design + penalty, design.T @ t)
    np.testing.assert_allclose(weights, expected[:4], atol=1e-5)
    np.testing.assert_allclose(bias, expected[4], atol=1e-5)

    proposals = np.float32([[10, 12, 40, 50], [0, 0, 20, 10], [5, 5, 6, 9]])
    truth = np.float32([[12, 10, 44, 47], [2, 1, 19, 12], [4, 5, 7, 8]])
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    targets = _numpy(coder.encode(truth, proposals))
    w, h = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    centre_shift = ((truth[:, 0] + truth[:, 2]) - (proposals[:, 0] + proposals[:, 2])) / 2
    np.testing.assert_allclose(targets[:, 0], centre_shift / w, rtol=1e-5)
    np.testing.assert_allclose(targets[:, 3], np.log((truth[:, 3] - truth[:, 1]) / h), rtol=1e-5)
    np.testing.assert_allclose(_numpy(coder.decode(targets, proposals)), truth, atol=1e-4)


# ------------------------------------------------------------------------------- the warp


def _reference_warp(image, box, size, context):
    """Bilinear crop-and-resize written out: ``size`` samples per axis at the centres of equal
    cells of the (dilated) box, pixel k's centre at k + 0.5; a sample within a pixel of the
    border reads the edge, further out 0."""
    x1, y1, x2, y2 = box
    grow = 227 / (227 - 2 * context)
    cx, cy, half_w, half_h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) * grow / 2, (y2 - y1) * grow / 2
    x1, x2, y1, y2 = cx - half_w, cx + half_w, cy - half_h, cy + half_h
    height, width = image.shape[:2]
    out = np.zeros((size, size, image.shape[2]))
    for i in range(size):
        for j in range(size):
            y = y1 + (i + 0.5) * (y2 - y1) / size - 0.5
            x = x1 + (j + 0.5) * (x2 - x1) / size - 0.5
            if y < -1 or y > height or x < -1 or x > width:
                continue
            y, x = min(max(y, 0), height - 1), min(max(x, 0), width - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1_, x1_ = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * image[y0, x0] + (1 - dy) * dx * image[y0, x1_]
                         + dy * (1 - dx) * image[y1_, x0] + dy * dx * image[y1_, x1_])
    return out


@agnostic
def test_warp_is_a_bilinear_crop_resize_and_roi_align():
    from hybrid_keras.layers import RoIAlign

    images = np.random.default_rng(0).uniform(0, 255, size=(2, 11, 14, 3)).astype(np.float32)
    boxes = np.float32([[1.5, 2.0, 9.0, 8.5], [-4, -3, 5, 6], [8, 6, 17, 13], [3, 3, 3.5, 4]])
    which = np.int32([0, 1, 1, 0])
    rois = np.concatenate([which[:, None].astype(np.float32), boxes], axis=1)
    roi_align = RoIAlign(5, 1.0, sampling_ratio=1, aligned=True)

    def run(images, boxes, which, rois):
        return (warp_crops(images, boxes, which, 5, context=0.0), warp_crops(images, boxes, which, 5, context=16.0),
                roi_align([images, rois]), dilate_boxes(boxes[:1]))

    crops = [_numpy(c) for c in _compiled(run)(images, boxes, which, rois)]
    for context, ours in zip((0.0, 16.0), crops):
        expected = np.stack([_reference_warp(images[b], box, 5, context) for b, box in zip(which, boxes)])
        np.testing.assert_allclose(ours, expected, atol=1e-3)
    np.testing.assert_allclose(crops[0], crops[2], atol=1e-3)  # RoIAlign, one sample per bin, aligned
    grown = crops[3]
    np.testing.assert_allclose(grown[0, 2] - grown[0, 0], 7.5 * 227 / 195, rtol=1e-5)


# ------------------------------------------------------------------------------- the model


def _mean_colour_backbone(size=8):
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs), name="mean_colour")


@agnostic
def test_forward_pass_scores_regresses_and_suppresses_as_by_hand():
    images = np.zeros((1, 32, 40, 3), np.float32)
    images[0, :, :12, 0] = 200.0  # red on the left
    # All red, none, half, two thirds (overlapping the first by IoU 0.57), padding.
    proposals = np.float32([[[2, 2, 12, 12], [24, 4, 36, 28], [6, 16, 18, 30], [4, 2, 16, 12], [0, 0, 0, 0]]])
    model = RCNN(_mean_colour_backbone(), 1, context=0.0, max_detections=6)
    model.svm.set_weights([np.float32([[0.01], [0.0], [0.0]]), np.float32([-1.0])])
    regress = np.zeros((3, 4), np.float32)
    model.box_regressor.set_weights([regress, np.float32([0.1, 0.0, 0.0, 0.0])])  # shift right by 0.1 widths
    outputs = {k: _numpy(v) for k, v in _compiled(lambda i, p: model((i, p)))(images, proposals).items()}
    assert outputs["detection_boxes"].shape == (1, 6, 4) and outputs["detection_boxes"].dtype == np.float32
    for name in ("detection_scores", "detection_classes"):
        assert outputs[name].shape == (1, 6) and outputs[name].dtype == np.float32
    assert outputs["num_detections"].shape == (1,)
    red = np.array([_reference_warp(images[0], box, 8, 0)[..., 0].mean() for box in proposals[0, :4]])
    scores = 0.01 * red - 1.0
    # Box 3 overlaps box 0 by IoU > 0.3 and scores lower: suppressed; padding is out.
    assert scores[0] > scores[3] > scores[2] > scores[1]
    order = [0, 2, 1]
    assert outputs["num_detections"][0] == 3
    np.testing.assert_allclose(outputs["detection_scores"][0, :3], scores[order], atol=1e-4)
    np.testing.assert_array_equal(outputs["detection_classes"][0], [1, 1, 1, 0, 0, 0])
    widths = proposals[0, order, 2:3] - proposals[0, order, 0:1]
    shifted = proposals[0, order] + np.float32([[1, 0, 1, 0]]) * 0.1 * widths
    expected = np.minimum(shifted, [40, 32, 40, 32])[:, [1, 0, 3, 2]] / np.float32([32, 40, 32, 40])
    np.testing.assert_allclose(outputs["detection_boxes"][0, :3], expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["detection_boxes"][0, 3:], 0)


def _squares(count=4, size=48, side=18, seed=0):
    rng = np.random.default_rng(seed)
    examples, proposals = [], []
    for _ in range(count):
        image = np.full((size, size, 3), 20, np.uint8)
        y, x = rng.integers(2, size - side - 2, 2)
        image[y:y + side, x:x + side] = 230
        box = np.float32([x, y, x + side, y + side])
        examples.append({"image": image, "objects": {"bbox": box[[1, 0, 3, 2]][None] / size,
                                                     "label": np.int64([0])}})
        corners = rng.uniform(0, size - 8, size=(30, 2))
        sides = rng.uniform(8, 30, size=(30, 2))
        jitter = box + rng.normal(0, 2.0, size=(6, 4))
        found = np.concatenate([np.concatenate([corners, np.minimum(corners + sides, size)], axis=1), jitter])
        proposals.append(np.clip(found, 0, size).astype(np.float32))
    return examples, proposals


def _tiny_backbone(size=16):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(1))(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="tiny")


def test_fit_end_to_end_finds_the_square_and_round_trips(tmp_path):
    keras.utils.set_random_seed(0)
    examples, proposals = _squares()
    detector = RCNNDetector(_tiny_backbone(), 1, max_detections=5, seed=0)
    record = detector.fit(examples, proposals=proposals, finetune_steps=2, positives_per_batch=4,
                          negatives_per_batch=12, negatives_per_image=8, svm_rounds=2, initial_negatives=20,
                          svm_C=1.0, verbose=0)
    assert record["positives"] == [4] and record["regression_examples"][0] > 0
    assert len(record["finetune"]["loss"]) == 2
    forest = detector.forest_detector(forest_options={"num_trees": 5, "max_depth": 4}, verbose=0)
    for trained in (detector, forest):
        for example, found in zip(examples[:2], proposals[:2]):
            out = trained.detect(example["image"], found)
            assert out["detection_boxes"].shape == (5, 4) and out["detection_boxes"].dtype == np.float32
            assert out["detection_classes"][0] == 1
            truth = example["objects"]["bbox"][0]
            assert _iou(out["detection_boxes"][0][[1, 0, 3, 2]], truth[[1, 0, 3, 2]]) > 0.5
        images = np.stack([examples[0]["image"]]).astype(np.float32)
        before = {k: _numpy(v) for k, v in trained.model((images, proposals[0][None])).items()}
        path = tmp_path / f"{trained.head}.keras"
        trained.model.save(path)
        restored = keras.saving.load_model(path)
        after = {k: _numpy(v) for k, v in restored((images, proposals[0][None])).items()}
        for name in before:
            np.testing.assert_allclose(after[name], before[name], atol=1e-5)


def test_bad_input_is_refused():
    examples, proposals = _squares(count=1)
    detector = RCNNDetector(_tiny_backbone(), 1, seed=0)
    with pytest.raises(ValueError, match="proposals of image 0 are empty"):
        detector.fit(examples, proposals=[np.zeros((0, 4), np.float32)], verbose=0)
    with pytest.raises(ValueError, match="x2 >= x1"):
        detector.fit(examples, proposals=[np.float32([[30, 5, 10, 20]])], verbose=0)
    wrong = [{"image": examples[0]["image"], "objects": {"bbox": examples[0]["objects"]["bbox"],
                                                         "label": np.int64([3])}}]
    with pytest.raises(ValueError, match=r"objects/label must be in \[0, 1\)"):
        detector.fit(wrong, proposals=proposals, verbose=0)
    with pytest.raises(ValueError, match="head must be one of"):
        RCNNDetector(_tiny_backbone(), 1, head="boosting")
    with pytest.raises(ValueError, match="proposals must be"):
        detector.model((np.zeros((1, 20, 20, 3), np.float32), np.zeros((1, 4), np.float32)))
    with pytest.raises(ValueError, match="not trained yet"):
        RCNNDetector(_tiny_backbone(), 1, head="forest").detect(examples[0]["image"], proposals[0])
    with pytest.raises(ValueError, match="labels must be"):
        train_linear_svm(np.ones((2, 2)), [0, 1])


def test_zoo_builds_the_pipeline_and_loads_its_weights_file(tmp_path):
    import zoo
    from hybrid_keras.detection.rcnn import RCNNDetector as Detector

    arguments = dict(backbone="mobilenet_v2", alpha=0.35, classes=2, crop_size=32, max_detections=7)
    detector = zoo.load("rcnn", **arguments)
    assert isinstance(detector, Detector) and detector.crop_size == 32
    assert detector.model.svm.kernel.shape == (1280, 2) and detector.model.max_detections == 7
    assert zoo.model_card("rcnn").task == "detection"
    rng = np.random.default_rng(0)
    for layer in (detector.model.svm, detector.model.box_regressor):  # as if trained: nonzero SVMs and regressors
        layer.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) for w in layer.get_weights()])
    image, _ = _two_rectangles()
    inputs = (image[None].astype(np.float32), np.float32([[[8, 5, 30, 20], [36, 25, 60, 44], [0, 0, 64, 48]]]))
    expected = {k: _numpy(v) for k, v in detector.model(inputs).items()}
    detector.model.save_weights(tmp_path / "rcnn.weights.h5")
    again = zoo.load("rcnn", weights=str(tmp_path / "rcnn.weights.h5"), **arguments)
    for name, value in again.model(inputs).items():
        np.testing.assert_allclose(_numpy(value), expected[name], atol=1e-5)
    with pytest.raises(ValueError, match="forest-head model is saved and loaded whole"):
        zoo.load("rcnn", head="forest", weights=str(tmp_path / "rcnn.weights.h5"), **arguments)
    with pytest.raises(ValueError, match="backbone must name a zoo classification model"):
        zoo.load("rcnn", backbone="faster_rcnn")
