"""The FCN paper's four segmentation scores as streaming Keras metrics, with an ignore label.

Long, Shelhamer & Darrell (CVPR 2015), section 5: with ``n_ij`` the pixels of class ``i``
predicted as ``j`` and ``t_i = sum_j n_ij``,

- pixel accuracy ``sum_i n_ii / sum_i t_i``
- mean (class) accuracy ``(1 / n_cl) sum_i n_ii / t_i``
- mean IU ``(1 / n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)``
- frequency-weighted IU ``(sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)``

As in the paper's scoring code, the means run over the classes where they are defined:
classes absent from the ground truth drop out of the mean accuracy, and classes neither
present nor predicted drop out of the mean IU (a class predicted but absent scores 0).

Every metric accumulates one confusion matrix (rows: truth, columns: prediction) over the
batches it sees. Pixels labelled ``ignore_label`` (CamVid's void, PASCAL's 255) are left out.
A label outside ``[0, num_classes)`` that is not the ignore label is an error: updates
made eagerly raise ``ValueError`` naming the labels; inside a compiled step, where no
exception can be raised, the metric's result turns NaN.
:func:`hybrid_keras.segmentation.check_labels` checks a dataset's masks before training.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from hybrid_keras.segmentation.labels import labels_and_predictions, split_labels

SCORES = ("pixel_accuracy", "mean_class_accuracy", "mean_iou", "frequency_weighted_iou")


def confusion_matrix(y_true, y_pred, num_classes: int, ignore_label: int | None = None, sample_weight=None):
    """``([C, C] counts, invalid pixel count)`` for one batch; rows are the truth, columns the prediction.

    ``y_true``: labels ``[B, H, W]`` (or ``[B, H, W, 1]``). ``y_pred``: class scores
    ``[B, H, W, C]`` (their argmax is the prediction) or class indices ``[B, H, W]``.
    ``sample_weight``: per image ``[B]`` or per pixel ``[B, H, W]``.
    """
    y_true, y_pred = labels_and_predictions(y_true, y_pred, num_classes)
    y_true, in_range, invalid = split_labels(y_true, num_classes, ignore_label)
    y_pred = ops.cast(y_pred, "int32")
    weights = ops.cast(in_range, "float32")
    if sample_weight is not None:
        sample_weight = ops.cast(sample_weight, "float32")
        while len(sample_weight.shape) < len(y_true.shape):
            sample_weight = ops.expand_dims(sample_weight, -1)
        weights = weights * sample_weight
    # Out-of-range entries carry weight 0; clipping only keeps their index inside the table.
    index = ops.clip(y_true, 0, num_classes - 1) * num_classes + ops.clip(y_pred, 0, num_classes - 1)
    counts = ops.segment_sum(ops.reshape(weights, (-1,)), ops.reshape(index, (-1,)),
                             num_segments=num_classes * num_classes)
    return ops.reshape(counts, (num_classes, num_classes)), ops.sum(ops.cast(invalid, "float32"))


def segmentation_scores(confusion) -> dict:
    """The four scores (``SCORES``) and per-class IoU (``iou_per_class``) of a confusion matrix, as tensors."""
    confusion = ops.cast(ops.convert_to_tensor(confusion), "float32")
    true_positive = ops.diagonal(confusion)
    truth = ops.sum(confusion, axis=1)
    predicted = ops.sum(confusion, axis=0)
    union = truth + predicted - true_positive
    iou = _divide(true_positive, union)
    return {
        "pixel_accuracy": _divide(ops.sum(true_positive), ops.sum(truth)),
        "mean_class_accuracy": _mean_where(_divide(true_positive, truth), truth > 0),
        "mean_iou": _mean_where(iou, union > 0),
        "frequency_weighted_iou": _divide(ops.sum(truth * iou), ops.sum(truth)),
        "iou_per_class": iou,
    }


def scores_from_confusion(confusion) -> dict:
    """:func:`segmentation_scores` as Python floats (``iou_per_class`` as a list), for reports."""
    scores = segmentation_scores(confusion)
    out = {name: float(ops.convert_to_numpy(scores[name])) for name in SCORES}
    out["iou_per_class"] = [float(v) for v in ops.convert_to_numpy(scores["iou_per_class"])]
    return out


def _divide(numerator, denominator):
    """``numerator / denominator``, 0 where the denominator is 0."""
    safe = ops.where(denominator > 0, denominator, ops.ones_like(denominator))
    return ops.where(denominator > 0, numerator / safe, ops.zeros_like(numerator))


def _mean_where(values, defined):
    defined = ops.cast(defined, values.dtype)
    return _divide(ops.sum(values * defined), ops.sum(defined))


class ConfusionMatrixMetric(keras.metrics.Metric):
    """A streaming confusion matrix over the batches seen; subclasses score it.

    ``num_classes``: C. ``ignore_label``: a label whose pixels are left out (or None).
    ``update_state(y_true, y_pred, sample_weight=None)`` takes labels ``[B, H, W]`` (or
    ``[B, H, W, 1]``) and class scores ``[B, H, W, C]`` or class indices ``[B, H, W]``.
    """

    score = ""  # a key of segmentation_scores

    def __init__(self, num_classes: int, ignore_label: int | None = None, name: str | None = None, dtype=None):
        super().__init__(name=name or self.score, dtype=dtype)
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int. Received: num_classes={num_classes!r}")
        if ignore_label is not None and (not isinstance(ignore_label, (int, np.integer)) or isinstance(ignore_label, bool)):
            raise ValueError(f"ignore_label must be an int or None. Received: ignore_label={ignore_label!r}")
        self.num_classes = int(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.confusion = self.add_variable(shape=(self.num_classes, self.num_classes), initializer="zeros",
                                           dtype="float32", name="confusion")
        self.invalid_pixels = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="invalid_pixels")

    def update_state(self, y_true, y_pred, sample_weight=None):
        counts, invalid = confusion_matrix(y_true, y_pred, self.num_classes, self.ignore_label, sample_weight)
        self.confusion.assign_add(counts)
        self.invalid_pixels.assign_add(invalid)

    def result(self):
        value = segmentation_scores(self.confusion)[self.score]
        return ops.where(self.invalid_pixels > 0, float("nan"), value)

    def reset_state(self):
        self.confusion.assign(ops.zeros_like(self.confusion))
        self.invalid_pixels.assign(0.0)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype, "num_classes": self.num_classes,
                "ignore_label": self.ignore_label}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class PixelAccuracy(ConfusionMatrixMetric):
    """Correct pixels over all pixels (ignored ones left out)."""

    score = "pixel_accuracy"


@keras.saving.register_keras_serializable(package="hybrid_keras")
class MeanClassAccuracy(ConfusionMatrixMetric):
    """The mean over classes present in the ground truth of the fraction of their pixels labelled right."""

    score = "mean_class_accuracy"


@keras.saving.register_keras_serializable(package="hybrid_keras")
class MeanIoU(ConfusionMatrixMetric):
    """The mean over classes present or predicted of intersection over union."""

    score = "mean_iou"


@keras.saving.register_keras_serializable(package="hybrid_keras")
class FrequencyWeightedIoU(ConfusionMatrixMetric):
    """Intersection over union per class, weighted by the class's share of the ground-truth pixels."""

    score = "frequency_weighted_iou"


def segmentation_metrics(num_classes: int, ignore_label: int | None = None) -> list[ConfusionMatrixMetric]:
    """The four metrics, for ``model.compile(metrics=...)``."""
    return [cls(num_classes, ignore_label) for cls in (PixelAccuracy, MeanClassAccuracy, MeanIoU, FrequencyWeightedIoU)]
