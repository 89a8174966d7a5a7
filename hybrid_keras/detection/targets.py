"""Training targets and losses of Fast and Faster R-CNN, batched, in ``keras.ops``.

Ground truth arrives padded: ``gt_boxes [B, G, 4]`` pixel ``[x1, y1, x2, y2]`` and
``gt_labels [B, G]`` 0-based class ids, ``-1`` on padding rows (what
:func:`hybrid_keras.detection.data.detection_batches` makes). Padding rows get an IoU of
-1 with everything, so they match nothing and take no part in the low-quality rule.

The rules are torchvision's (``rpn.py`` and ``roi_heads.py``), after Ren et al. (2015):

- Anchors: matched with :func:`match_boxes` (IoU >= 0.7 positive, < 0.3 negative, in
  between ignored, plus each ground truth's best anchors), 256 sampled per image with at
  most half positive (:func:`sample_balanced`).
- Proposals: the ground-truth boxes are added to them; IoU >= 0.5 is foreground (its box's
  class), below is background; 512 sampled per image with at most a quarter foreground.
- Losses: the objectness binary cross-entropy averaged over the sampled anchors; smooth-L1
  (beta = 1/9) of the box deltas summed over the positive anchors / foreground proposals
  (for the proposal's own class) and divided by the number sampled; the classifier's
  cross-entropy averaged over the sampled proposals. No gradient reaches the targets.
"""

from __future__ import annotations

from keras import ops

from hybrid_keras.detection.boxes import BoxCoder, box_iou
from hybrid_keras.detection.sampling import BELOW_LOW, match_boxes, sample_balanced
from hybrid_keras.layers.roi import bin_sampling_weights

SMOOTH_L1_BETA = 1.0 / 9.0


def smooth_l1(x, beta: float = SMOOTH_L1_BETA):
    """Elementwise Huber-style smooth L1: ``0.5 x^2 / beta`` below ``beta``, ``|x| - beta / 2`` above."""
    magnitude = ops.abs(x)
    return ops.where(magnitude < beta, 0.5 * x * x / beta, magnitude - 0.5 * beta)


def _ground_truth_iou(gt_boxes, gt_labels, boxes):
    """``[B, G, N]`` IoU of each image's ground truth with ``boxes`` (``[N, 4]`` shared or
    ``[B, N, 4]``); -1 on padding rows."""
    iou = box_iou(gt_boxes, boxes)
    return ops.where((gt_labels >= 0)[..., None], iou, -1.0)


def batched_take(values, indices):
    """``values [B, N, ...]`` at ``indices [B, K]`` (each image its own rows) -> ``[B, K, ...]``.

    One gather from the flattened rows (``take_along_axis`` with broadcast indices builds
    dozens of TensorFlow ops; this builds a handful, which keeps graphs quick to trace)."""
    rows = values.shape[1]
    flat = ops.reshape(values, (-1, *values.shape[2:]))
    offsets = ops.arange(ops.shape(indices)[0], dtype="int32")[:, None] * rows
    return ops.take(flat, ops.cast(indices, "int32") + offsets, axis=0)


def _gather_rows(values, indices):
    """``values [B, G, D]`` at ``indices [B, N]`` (clipped to >= 0) -> ``[B, N, D]``."""
    return batched_take(values, ops.maximum(indices, 0))


def _regression_targets(gt_boxes, matched, references, positive, coder: BoxCoder):
    """Deltas from ``references`` (``[N, 4]`` or ``[B, N, 4]``) to each positive's matched box; 0 elsewhere."""
    matched_boxes = _gather_rows(gt_boxes, matched)
    references = ops.broadcast_to(references, ops.shape(matched_boxes))
    # Encoding a padding row (all zeros) would take log(0): unmatched rows encode their own reference.
    safe = ops.where(positive[..., None], matched_boxes, references)
    return ops.where(positive[..., None], coder.encode(safe, references), 0.0)


def anchor_targets(anchors, gt_boxes, gt_labels, *, low: float = 0.3, high: float = 0.7, batch_size: int = 256,
                   positive_fraction: float = 0.5, coder: BoxCoder | None = None, seed=None):
    """The RPN's sampled anchors and box targets: ``(positive [B, N], negative [B, N], deltas [B, N, 4])``."""
    coder = coder or BoxCoder()
    anchors = ops.cast(anchors, "float32")
    gt_boxes, gt_labels = ops.cast(gt_boxes, "float32"), ops.cast(gt_labels, "int32")
    matched = match_boxes(_ground_truth_iou(gt_boxes, gt_labels, anchors), high, low, allow_low_quality=True)
    labels = ops.where(matched >= 0, 1, ops.where(matched == BELOW_LOW, 0, -1))
    positive, negative = sample_balanced(labels, batch_size, positive_fraction, seed=seed)
    deltas = _regression_targets(gt_boxes, matched, anchors, positive, coder)
    return ops.stop_gradient(positive), ops.stop_gradient(negative), ops.stop_gradient(deltas)


def proposal_targets(proposals, proposal_valid, gt_boxes, gt_labels, *, iou_threshold: float = 0.5,
                     batch_size: int = 512, positive_fraction: float = 0.25, coder: BoxCoder | None = None,
                     seed=None, return_matches: bool = False):
    """Sample the RoI head's training boxes from ``proposals [B, P, 4]`` (those with
    ``proposal_valid``) plus the ground truth.

    Returns ``(boxes [B, S, 4], classes [B, S], weights [B, S], deltas [B, S, 4])`` with
    ``S = min(batch_size, P + G)``: class ids 1..K for foreground (the ground truth's label + 1),
    0 for background; ``weights`` 1 for the sampled boxes, 0 for slots left over when fewer
    were sampled; ``deltas`` the targets of foreground boxes (0 elsewhere). With
    ``return_matches``, a fifth item: ``matches [B, S]``, the index of each box's ground truth
    (foreground boxes; 0 elsewhere), which :func:`mask_targets` takes.
    """
    coder = coder or BoxCoder((10.0, 10.0, 5.0, 5.0))
    gt_boxes, gt_labels = ops.cast(gt_boxes, "float32"), ops.cast(gt_labels, "int32")
    candidates = ops.concatenate([ops.cast(proposals, "float32"), gt_boxes], axis=1)
    usable = ops.concatenate([ops.cast(proposal_valid, "bool"), gt_labels >= 0], axis=1)
    matched = match_boxes(_ground_truth_iou(gt_boxes, gt_labels, candidates), iou_threshold, iou_threshold)
    foreground = matched >= 0
    positive, negative = sample_balanced(ops.where(usable, ops.where(foreground, 1, 0), -1), batch_size,
                                         positive_fraction, seed=seed)
    sampled = positive | negative
    count = min(batch_size, candidates.shape[1])
    _, chosen = ops.top_k(ops.cast(sampled, "float32"), count)  # every sampled box, then unsampled filler
    classes = ops.where(foreground & sampled, batched_take(gt_labels, ops.maximum(matched, 0)) + 1, 0)
    deltas = _regression_targets(gt_boxes, matched, candidates, positive, coder)
    picked = [batched_take(values, chosen) for values in (candidates, classes, ops.cast(sampled, "float32"), deltas)]
    if return_matches:
        picked.append(batched_take(ops.where(foreground, matched, 0), chosen))
    return tuple(ops.stop_gradient(v) for v in picked)


def rpn_losses(objectness, deltas, positive, negative, target_deltas):
    """``(objectness loss, box loss)`` of the RPN from its logits ``[B, N]``, deltas ``[B, N, 4]`` and
    :func:`anchor_targets`."""
    sampled = ops.cast(positive | negative, "float32")
    count = ops.maximum(ops.sum(sampled), 1.0)
    bce = ops.binary_crossentropy(ops.cast(positive, "float32"), objectness, from_logits=True)
    objectness_loss = ops.sum(bce * sampled) / count
    box = ops.sum(smooth_l1(deltas - target_deltas), axis=-1)
    return objectness_loss, ops.sum(box * ops.cast(positive, "float32")) / count


def head_losses(class_logits, box_deltas, classes, weights, target_deltas):
    """``(classification loss, box loss)`` of the RoI head from its logits ``[R, K + 1]``, deltas
    ``[R, 4 (K + 1)]`` and the flattened :func:`proposal_targets` (``[R]``, ``[R]``, ``[R, 4]``)."""
    classes = ops.cast(classes, "int32")
    count = ops.maximum(ops.sum(weights), 1.0)
    cross_entropy = ops.sparse_categorical_crossentropy(classes, class_logits, from_logits=True)
    per_class = ops.reshape(box_deltas, (-1, class_logits.shape[-1], 4))
    own = ops.sum(per_class * ops.one_hot(classes, class_logits.shape[-1])[..., None], axis=1)  # the box's own class
    foreground = ops.cast(classes > 0, "float32") * weights
    box = ops.sum(smooth_l1(own - target_deltas), axis=-1)
    return ops.sum(cross_entropy * weights) / count, ops.sum(box * foreground) / count


def mask_targets(gt_masks, matches, boxes, size: int = 28):
    """Mask R-CNN's mask targets: each box's matched ground-truth mask cropped to the box and
    resized to ``size x size``, then thresholded at 0.5 (float32 0/1).

    ``gt_masks [B, G, H, W]`` (0/1, in the model's input pixels), ``matches [B, S]`` indices into
    ``G`` (:func:`proposal_targets` with ``return_matches``), ``boxes [B, S, 4]`` pixel
    ``[x1, y1, x2, y2]`` -> ``[B, S, size, size]``. The crop is RoIAlign of the mask (He et al.,
    2017) as torchvision's ``project_masks_on_boxes`` takes it: spatial scale 1, not aligned
    (a box is at least one pixel wide), ``ceil(box side / size)`` samples per bin. Each box reads
    only its own mask, so this contracts per-box bilinear weight rows with that mask
    (``hybrid_keras.layers.roi.bin_sampling_weights``) instead of calling the batched layer.
    """
    gt_masks = ops.cast(gt_masks, "float32")
    height, width = gt_masks.shape[2], gt_masks.shape[3]
    count = boxes.shape[1]
    maps = batched_take(gt_masks, ops.cast(matches, "int32"))  # [B, S, H, W]
    maps = ops.reshape(maps, (-1, height, width))
    boxes = ops.reshape(ops.cast(boxes, "float32"), (-1, 4))
    x1, y1 = boxes[:, 0], boxes[:, 1]
    box_w = ops.maximum(boxes[:, 2] - x1, 1.0)
    box_h = ops.maximum(boxes[:, 3] - y1, 1.0)
    weights_y = bin_sampling_weights(y1, box_h, size, ops.ceil(box_h / size), -(-(height + 2) // size), height)
    weights_x = bin_sampling_weights(x1, box_w, size, ops.ceil(box_w / size), -(-(width + 2) // size), width)
    crops = ops.einsum("rph,rhw,rqw->rpq", weights_y, maps, weights_x)
    return ops.stop_gradient(ops.reshape(ops.cast(crops >= 0.5, "float32"), (-1, count, size, size)))


def class_masks(mask_logits, classes):
    """``mask_logits [R, m, m, K]`` -> ``[R, m, m]``: each row's channel of class ``classes [R]``
    (1..K; class 0, background or padding, reads channel 0)."""
    mask_logits = ops.convert_to_tensor(mask_logits)
    columns = mask_logits.shape[-1]
    chosen = ops.one_hot(ops.maximum(ops.cast(classes, "int32") - 1, 0), columns, dtype=mask_logits.dtype)
    return ops.sum(mask_logits * chosen[:, None, None, :], axis=-1)


def mask_loss(mask_logits, classes, weights, target_masks):
    """Mask R-CNN's mask loss: per-pixel sigmoid binary cross-entropy of the ground-truth class's
    mask only (the other classes' masks get no gradient), averaged over the pixels of the
    weighted boxes.

    ``mask_logits [R, m, m, K]``, ``classes [R]`` 1..K (rows with class 0 or weight 0 do not
    count), ``weights [R]``, ``target_masks [R, m, m]``.
    """
    classes, weights = ops.cast(classes, "int32"), ops.cast(weights, "float32")
    target_masks = ops.cast(target_masks, "float32")
    bce = ops.binary_crossentropy(target_masks, class_masks(mask_logits, classes), from_logits=True)  # [R, m, m]
    counted = weights * ops.cast(classes > 0, "float32")
    return ops.sum(ops.mean(bce, axis=(1, 2)) * counted) / ops.maximum(ops.sum(counted), 1.0)
