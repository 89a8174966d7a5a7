"""The OTB measures of a tracker (Wu, Lim & Yang, "Online Object Tracking: A Benchmark", CVPR 2013).

Boxes are ``[x, y, w, h]`` in pixels (OTB's convention: top-left corner, width, height),
one row per frame.

- **Success plot**: the fraction of frames whose overlap (intersection over union) with the
  ground truth is *greater than* each threshold in 0, 0.05, ..., 1; its area under the
  curve (AUC) is the mean over the 21 thresholds, the figure trackers are ranked by
  (SiamFC: 0.582 on OTB-100).
- **Precision plot**: the fraction of frames whose box centre lies within each threshold
  0, 1, ..., 50 pixels of the ground truth's; the figure quoted is at 20 pixels.
"""

from __future__ import annotations

import numpy as np

OVERLAP_THRESHOLDS = np.linspace(0.0, 1.0, 21)
CENTRE_THRESHOLDS = np.arange(0, 51, dtype=np.float64)
PRECISION_AT = 20


def check_boxes(boxes, name: str = "boxes", *, frame_size=None) -> np.ndarray:
    """``boxes`` as float64 ``[N, 4]`` ``[x, y, w, h]``; clear errors for a wrong shape, non-finite
    values, a width or height not above 0, or (with ``frame_size=(height, width)``) a box
    entirely outside the frame."""
    boxes = np.asarray(boxes, np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4] rows of [x, y, w, h]. Received: shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{name} contain NaN or infinite values")
    empty = np.flatnonzero((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))
    if len(empty):
        raise ValueError(f"{name}: box {int(empty[0])} has zero area (w={boxes[empty[0], 2]}, h={boxes[empty[0], 3]})")
    if frame_size is not None:
        height, width = frame_size
        outside = np.flatnonzero((boxes[:, 0] >= width) | (boxes[:, 1] >= height)
                                 | (boxes[:, 0] + boxes[:, 2] <= 0) | (boxes[:, 1] + boxes[:, 3] <= 0))
        if len(outside):
            raise ValueError(f"{name}: box {int(outside[0])} {boxes[outside[0]].tolist()} lies outside the "
                             f"{width}x{height} frame")
    return boxes


def _pair(predicted, truth):
    predicted, truth = check_boxes(predicted, "predicted boxes"), check_boxes(truth, "ground-truth boxes")
    if predicted.shape != truth.shape:
        raise ValueError(f"{len(predicted)} predicted boxes for {len(truth)} ground-truth boxes")
    if not len(truth):
        raise ValueError("an empty sequence has no score")
    return predicted, truth


def box_iou(predicted, truth) -> np.ndarray:
    """Per-frame intersection over union of two ``[N, 4]`` box sequences."""
    predicted, truth = _pair(predicted, truth)
    left = np.maximum(predicted[:, 0], truth[:, 0])
    top = np.maximum(predicted[:, 1], truth[:, 1])
    right = np.minimum(predicted[:, 0] + predicted[:, 2], truth[:, 0] + truth[:, 2])
    bottom = np.minimum(predicted[:, 1] + predicted[:, 3], truth[:, 1] + truth[:, 3])
    intersection = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = predicted[:, 2] * predicted[:, 3] + truth[:, 2] * truth[:, 3] - intersection
    return intersection / union


def centre_errors(predicted, truth) -> np.ndarray:
    """Per-frame Euclidean distance between the box centres, in pixels."""
    predicted, truth = _pair(predicted, truth)
    return np.linalg.norm(_centres(predicted) - _centres(truth), axis=1)


def _centres(boxes):
    return boxes[:, :2] + boxes[:, 2:] / 2


def success_curve(predicted, truth, thresholds=OVERLAP_THRESHOLDS) -> np.ndarray:
    """Fraction of frames with overlap greater than each threshold."""
    overlaps = box_iou(predicted, truth)
    return (overlaps[None, :] > np.asarray(thresholds, np.float64)[:, None]).mean(axis=1)


def precision_curve(predicted, truth, thresholds=CENTRE_THRESHOLDS) -> np.ndarray:
    """Fraction of frames with a centre error within each threshold (pixels)."""
    errors = centre_errors(predicted, truth)
    return (errors[None, :] <= np.asarray(thresholds, np.float64)[:, None]).mean(axis=1)


def tracking_scores(predicted, truth) -> dict:
    """``{"success_auc", "precision_at_20", "mean_iou", "success_curve", "precision_curve"}`` of one sequence."""
    success, precision = success_curve(predicted, truth), precision_curve(predicted, truth)
    return {"success_auc": float(success.mean()), "precision_at_20": float(precision[PRECISION_AT]),
            "mean_iou": float(box_iou(predicted, truth).mean()), "success_curve": success.tolist(),
            "precision_curve": precision.tolist()}
