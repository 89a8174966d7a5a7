"""Matching anchors or proposals to ground-truth boxes, and sampling training examples from
them with a fixed share of positives (Fast/Faster R-CNN's minibatch rule)."""

from __future__ import annotations

import keras
from keras import ops

BELOW_LOW = -1
BETWEEN = -2


def match_boxes(iou, high: float, low: float, allow_low_quality: bool = False):
    """``iou [M ground truth, N]`` -> ``[N]`` int32: the matched ground-truth index where the best
    IoU is ``>= high``, ``-1`` below ``low`` (background), ``-2`` in between (ignored). Leading
    batch axes (``[B, M, N]`` -> ``[B, N]``) match each image on its own.

    ``allow_low_quality`` (Faster R-CNN's RPN rule): every prediction that ties for a ground
    truth's best IoU is matched to its own best ground truth even below ``high``, so each
    ground truth gets at least one anchor.
    """
    if low > high:
        raise ValueError(f"low must not exceed high. Received: low={low}, high={high}")
    iou = ops.convert_to_tensor(iou)
    if ops.shape(iou)[-2] == 0:
        raise ValueError("match_boxes needs at least one ground-truth box. Received: iou of shape "
                         f"{tuple(ops.shape(iou))}")
    best = ops.max(iou, axis=-2)
    matched = ops.cast(ops.argmax(iou, axis=-2), "int32")
    labels = ops.where(best >= high, matched, ops.where(best < low, BELOW_LOW, BETWEEN))
    if allow_low_quality:
        best_for_truth = ops.max(iou, axis=-1, keepdims=True)
        ties = ops.any((iou == best_for_truth) & (best_for_truth > 0), axis=-2)
        labels = ops.where(ties, matched, labels)
    return ops.cast(labels, "int32")


def sample_balanced(labels, num_samples: int, positive_fraction: float, seed=None):
    """Pick at most ``num_samples`` examples from ``labels [N]`` (1 positive, 0 negative, -1
    ignored), positives first up to ``positive_fraction`` of them, negatives for the rest, each
    drawn uniformly without replacement. Returns boolean masks ``(positive, negative)``.
    ``labels [B, N]`` samples each row on its own.

    ``seed``: an int or a ``keras.random.SeedGenerator`` (draws differ per call with a generator).
    """
    if num_samples < 1 or not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"num_samples must be >= 1 and positive_fraction in [0, 1]. Received: "
                         f"num_samples={num_samples}, positive_fraction={positive_fraction}")
    labels = ops.convert_to_tensor(labels)
    positive, negative = labels == 1, labels == 0
    keys = keras.random.uniform(ops.shape(labels), seed=seed)

    def first(candidates, count):
        # The `count` candidates with the smallest random keys: a uniform draw without replacement.
        ranked = ops.argsort(ops.where(candidates, keys, 2.0))
        rank = ops.argsort(ranked)
        return candidates & (rank < count)

    wanted_positive = int(num_samples * positive_fraction)
    positives = ops.minimum(ops.sum(ops.cast(positive, "int32"), axis=-1, keepdims=True), wanted_positive)
    negatives = ops.minimum(ops.sum(ops.cast(negative, "int32"), axis=-1, keepdims=True), num_samples - positives)
    return first(positive, positives), first(negative, negatives)
