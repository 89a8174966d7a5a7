"""Greedy non-maximum suppression, per class or not, in ``keras.ops``.

Boxes are visited in decreasing score; each suppresses the lower-scored boxes that overlap it
by more than ``iou_threshold`` (IoU strictly greater, as torchvision). ``nms_keep_mask`` keeps
static shapes (for use inside models and compiled functions); ``non_max_suppression`` and
``batched_nms`` return the kept indices like torchvision's functions (eager).
"""

from __future__ import annotations

import numpy as np
from keras import ops

from hybrid_keras.detection.boxes import box_iou


def nms_keep_mask(boxes, scores, iou_threshold: float):
    """``[N]`` booleans, in the input's order: which boxes greedy NMS keeps. Leading batch axes
    (``boxes [B, N, 4]``, ``scores [B, N]`` -> ``[B, N]``) run each image's NMS at once."""
    boxes = ops.cast(boxes, "float32")
    scores = ops.cast(scores, "float32")
    order = ops.argsort(-scores)
    ranked = ops.take_along_axis(boxes, ops.broadcast_to(order[..., None], ops.shape(boxes)), axis=-2)
    overlaps = box_iou(ranked, ranked) > iou_threshold
    count = ops.shape(scores)[-1]
    later = ops.arange(count)[None, :] > ops.arange(count)[:, None]
    suppresses = overlaps & later  # [..., i, j]: i, ranked above j, would suppress j

    def visit(i, keep):
        # A box suppresses others only if it survived the boxes ranked above it.
        row = ops.take(suppresses, i, axis=-2) & ops.take(keep, i, axis=-1)[..., None]
        return keep & ~row

    keep_sorted = ops.fori_loop(0, count, visit, ops.ones(ops.shape(scores), "bool"))
    return ops.take_along_axis(keep_sorted, ops.argsort(order), axis=-1)


def non_max_suppression(boxes, scores, iou_threshold: float) -> np.ndarray:
    """Indices (int64) of the boxes greedy NMS keeps, in decreasing score."""
    keep = ops.convert_to_numpy(nms_keep_mask(boxes, scores, iou_threshold))
    scores = ops.convert_to_numpy(scores)
    kept = np.flatnonzero(keep)
    return kept[np.argsort(-scores[kept], kind="stable")].astype(np.int64)


def batched_nms(boxes, scores, classes, iou_threshold: float) -> np.ndarray:
    """NMS within each class: indices of the kept boxes, in decreasing score."""
    boxes = ops.cast(boxes, "float32")
    if ops.shape(boxes)[0] == 0:
        return np.zeros((0,), np.int64)
    # Moving each class's boxes beyond every other class's keeps classes from suppressing each
    # other in one NMS pass (torchvision's trick).
    span = ops.max(boxes) - ops.min(boxes) + 1.0
    shifted = boxes + (ops.cast(classes, "float32") * span)[:, None]
    return non_max_suppression(shifted, scores, iou_threshold)
