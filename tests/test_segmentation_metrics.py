"""Segmentation metrics against hand-computed confusion matrices and keras.metrics.MeanIoU;
the weighted cross-entropy against NumPy; labels outside the classes; on every backend."""

import keras
import numpy as np
import pytest
from keras import ops

from hybrid_keras.segmentation import (
    SCORES,
    FrequencyWeightedIoU,
    MeanClassAccuracy,
    MeanIoU,
    PixelAccuracy,
    SegmentationCrossentropy,
    check_labels,
    confusion_matrix,
    median_frequency_weights,
    scores_from_confusion,
    segmentation_metrics,
)

pytestmark = pytest.mark.backend_agnostic

VOID = 9
# Two 3x4 label maps over classes 0-3 (class 3 never appears) and 9 = void; then a prediction.
TRUTH = np.array([[[0, 0, 1, 1],
                   [0, 0, 1, 9],
                   [2, 2, 2, 9]],
                  [[1, 1, 1, 1],
                   [0, 2, 2, 2],
                   [9, 9, 0, 0]]])
PREDICTED = np.array([[[0, 1, 1, 1],
                       [0, 0, 2, 0],
                       [2, 2, 0, 3]],
                      [[1, 1, 1, 0],
                       [0, 2, 2, 3],
                       [1, 1, 0, 0]]])
# Counted by hand (rows: truth 0-3, columns: prediction 0-3), void pixels left out:
#   truth 0 (7 px): predicted 0 x6, 1 x1          truth 1 (7 px): 1 x5, 0 x1, 2 x1
#   truth 2 (6 px): predicted 2 x4, 0 x1, 3 x1    truth 3: none
HAND_CONFUSION = np.array([[6, 1, 0, 0],
                           [1, 5, 1, 0],
                           [1, 0, 4, 1],
                           [0, 0, 0, 0]], np.float32)
# Predicted per class: 8, 6, 5, 1. IoU: class 0: 6 / (7 + 8 - 6); class 1: 5 / (7 + 6 - 5);
# class 2: 4 / (6 + 5 - 4); class 3, predicted once and never true: 0 / 1 (it counts in the mean IU).
HAND_SCORES = {
    "pixel_accuracy": 15 / 20,
    "mean_class_accuracy": (6 / 7 + 5 / 7 + 4 / 6) / 3,
    "mean_iou": (6 / 9 + 5 / 8 + 4 / 7 + 0.0) / 4,
    "frequency_weighted_iou": (7 * 6 / 9 + 7 * 5 / 8 + 6 * 4 / 7) / 20,
}
METRICS = {"pixel_accuracy": PixelAccuracy, "mean_class_accuracy": MeanClassAccuracy, "mean_iou": MeanIoU,
           "frequency_weighted_iou": FrequencyWeightedIoU}


def _numpy(x):
    return ops.convert_to_numpy(x)


def _one_hot_scores(indices, classes=4):
    return np.eye(classes, dtype=np.float32)[indices] * 0.9 + 0.025


def test_confusion_matrix_is_the_hand_count():
    counts, invalid = confusion_matrix(TRUTH, PREDICTED, 4, ignore_label=VOID)
    np.testing.assert_array_equal(_numpy(counts), HAND_CONFUSION)
    assert float(_numpy(invalid)) == 0


@pytest.mark.parametrize("score", SCORES)
def test_metrics_are_the_hand_computed_scores(score):
    metric = METRICS[score](4, ignore_label=VOID)
    metric.update_state(TRUTH, PREDICTED)
    assert float(_numpy(metric.result())) == pytest.approx(HAND_SCORES[score], rel=1e-6)
    assert scores_from_confusion(HAND_CONFUSION)[score] == pytest.approx(HAND_SCORES[score], rel=1e-6)


def test_streaming_over_batches_scores_and_class_scores_input():
    """One image per update, with [B, H, W, C] scores and [B, H, W, 1] labels, equals the whole batch."""
    metrics = segmentation_metrics(4, ignore_label=VOID)
    for metric in metrics:
        for index in range(2):
            metric.update_state(TRUTH[index:index + 1, ..., None], _one_hot_scores(PREDICTED[index:index + 1]))
        assert float(_numpy(metric.result())) == pytest.approx(HAND_SCORES[metric.score], rel=1e-6)
        metric.reset_state()
        assert float(_numpy(metric.result())) == 0.0


def test_mean_iou_matches_keras_mean_iou():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, size=(3, 17, 19))  # 5 = void
    predicted = rng.integers(0, 5, size=(3, 17, 19))
    ours = MeanIoU(5, ignore_label=5)
    ours.update_state(truth, predicted)
    keras_metric = keras.metrics.MeanIoU(num_classes=5, ignore_class=5)
    keras_metric.update_state(truth, predicted)
    assert float(_numpy(ours.result())) == pytest.approx(float(_numpy(keras_metric.result())), rel=1e-6)


def test_sample_weights_count_pixels_that_many_times():
    # Image 1: 7 of its 10 labelled pixels right; image 2: 8 of 10. Weighted 2 and 1: (14 + 8) / (20 + 10).
    metric = PixelAccuracy(4, ignore_label=VOID)
    metric.update_state(TRUTH, PREDICTED, sample_weight=np.array([2.0, 1.0]))
    assert float(_numpy(metric.result())) == pytest.approx(22 / 30, rel=1e-6)


def test_absent_classes_leave_the_means():
    truth = np.array([[[0, 0], [1, 1]]])
    metric_iou, metric_accuracy = MeanIoU(6), MeanClassAccuracy(6)
    for metric in (metric_iou, metric_accuracy):
        metric.update_state(truth, truth)
    assert float(_numpy(metric_iou.result())) == pytest.approx(1.0)  # classes 2-5: neither true nor predicted
    assert float(_numpy(metric_accuracy.result())) == pytest.approx(1.0)


def test_compiled_model_reports_the_same_scores():
    inputs = keras.Input((3, 4, 4))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=SegmentationCrossentropy(4, ignore_label=VOID), metrics=segmentation_metrics(4, VOID))
    results = model.evaluate(_one_hot_scores(PREDICTED), TRUTH, batch_size=1, verbose=0, return_dict=True)
    for score in SCORES:
        assert results[score] == pytest.approx(HAND_SCORES[score], rel=1e-5)


# ---------------------------------------------------------------------- bad labels and shapes

def test_labels_outside_the_classes_raise_when_eager():
    bad = TRUTH.copy()
    bad[0, 0, 0] = 4
    with pytest.raises(ValueError, match=r"0-3 or the ignore label 9. Received: labels \[4\]"):
        MeanIoU(4, ignore_label=VOID).update_state(bad, PREDICTED)
    with pytest.raises(ValueError, match=r"Received: labels \[9\]"):
        PixelAccuracy(4).update_state(TRUTH, PREDICTED)  # no ignore label: 9 is out of range
    with pytest.raises(ValueError, match="Received: labels"):
        SegmentationCrossentropy(4, ignore_label=VOID)(bad, _one_hot_scores(PREDICTED))
    with pytest.raises(ValueError, match=r"masks: labels must be 0-3. Received: labels \[-1, 9\]"):
        check_labels(np.where(TRUTH == 0, -1, TRUTH), 4)
    check_labels(TRUTH, 4, ignore_label=VOID)


def test_labels_outside_the_classes_inside_a_compiled_step_give_nan():
    """Inside tf.function / jax.jit nothing can raise: the metric and the loss turn NaN
    (PyTorch runs eagerly and raises)."""
    bad = TRUTH.copy()
    bad[1, 2, 3] = 5
    inputs = keras.Input((3, 4, 4))
    model = keras.Model(inputs, keras.layers.Identity()(inputs))
    model.compile(loss=SegmentationCrossentropy(4, ignore_label=VOID), metrics=[MeanIoU(4, VOID)])
    if keras.backend.backend() == "torch":
        with pytest.raises(ValueError, match=r"Received: labels \[5\]"):
            model.evaluate(_one_hot_scores(PREDICTED), bad, verbose=0)
        return
    results = model.evaluate(_one_hot_scores(PREDICTED), bad, batch_size=2, verbose=0, return_dict=True)
    assert np.isnan(results["mean_iou"]) and np.isnan(results["loss"])


def test_shapes_that_differ_are_refused():
    with pytest.raises(ValueError, match="same pixels"):
        MeanIoU(4, VOID).update_state(TRUTH, PREDICTED[:, :2])
    with pytest.raises(ValueError, match="num_classes=4 scores per pixel"):
        MeanIoU(4, VOID).update_state(TRUTH, _one_hot_scores(PREDICTED, classes=5))
    with pytest.raises(ValueError, match="same pixels"):
        SegmentationCrossentropy(4, VOID)(TRUTH[:, :, :3], _one_hot_scores(PREDICTED))
    for arguments in ({"num_classes": 0}, {"num_classes": 4, "ignore_label": 1.5}):
        with pytest.raises(ValueError, match=next(iter(arguments)) if "ignore_label" not in arguments else "ignore_label"):
            MeanIoU(**arguments)


def test_metric_config_round_trip():
    metric = FrequencyWeightedIoU(11, ignore_label=11, name="fw")
    clone = FrequencyWeightedIoU.from_config(metric.get_config())
    assert (clone.num_classes, clone.ignore_label, clone.name) == (11, 11, "fw")


# ---------------------------------------------------------------------- the loss

def _numpy_crossentropy(truth, probabilities, weights, ignore):
    labelled = truth != ignore
    labels = np.where(labelled, truth, 0)
    picked = np.take_along_axis(probabilities, labels[..., None], -1)[..., 0]
    w = weights[labels] * labelled
    return -(w * np.log(picked)).sum() / w.sum()


@pytest.mark.parametrize("from_logits", [False, True])
def test_crossentropy_is_the_weighted_mean_over_labelled_pixels(from_logits):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 3, 4, 4)).astype("float32")
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights = np.array([0.5, 2.0, 1.0, 3.0])
    loss = SegmentationCrossentropy(4, ignore_label=VOID, class_weights=weights, from_logits=from_logits)
    value = float(_numpy(loss(TRUTH, logits if from_logits else probabilities)))
    assert value == pytest.approx(_numpy_crossentropy(TRUTH, probabilities.astype(np.float64), weights, VOID), rel=1e-5)
    plain = float(_numpy(SegmentationCrossentropy(4, ignore_label=VOID)(TRUTH, probabilities)))
    keras_value = float(_numpy(keras.losses.SparseCategoricalCrossentropy(ignore_class=VOID)(TRUTH, probabilities)))
    assert plain == pytest.approx(keras_value, rel=1e-5)


def test_median_frequency_weights_by_hand():
    # Class 0: 7 of 10 pixels in image 1 -> 0.7; class 1: 3 px in image 1, 5 in image 2 -> 8/20 = 0.4;
    # class 2: 5 of 10 in image 2 -> 0.5; class 3 never. Median of (0.7, 0.4, 0.5) = 0.5.
    masks = np.array([[0] * 7 + [1] * 3, [1] * 5 + [2] * 5])
    np.testing.assert_allclose(median_frequency_weights(masks, 4), [0.5 / 0.7, 0.5 / 0.4, 1.0, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match="Received: labels"):
        median_frequency_weights(masks + 2, 4)
