"""Box geometry and the R-CNN box coding, in ``keras.ops``.

The coding (Girshick et al., R-CNN, appendix C) expresses a box relative to a reference box
(an anchor or a proposal): centre offsets in units of the reference's size and log size
ratios, each multiplied by a weight. Fast/Faster R-CNN use weights (10, 10, 5, 5) for the RoI
head and (1, 1, 1, 1) for the RPN, as torchvision does; decoding clamps the log ratios at
``log(1000 / 16)`` so an untrained head cannot overflow ``exp``.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

DEFAULT_CLAMP = math.log(1000.0 / 16)


def check_boxes(boxes, name: str = "boxes", *, image_size=None) -> np.ndarray:
    """``boxes`` as float32 ``[N, 4]`` ``[x1, y1, x2, y2]``, with clear errors for a wrong shape,
    non-finite values or ``x2 < x1`` / ``y2 < y1``. With ``image_size=(height, width)``, boxes are
    clipped to the image (documented, not an error) and a box wholly outside it is an error.
    For eager inputs (data loading, user calls), not inside a traced graph."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{name} must be [N, 4] as [x1, y1, x2, y2]. Received: shape {boxes.shape}")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{name} must be finite. Received: {boxes[~np.isfinite(boxes).all(1)][:3].tolist()}")
    flipped = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    if flipped.any():
        raise ValueError(f"{name} need x2 >= x1 and y2 >= y1 ([x1, y1, x2, y2] order). "
                         f"Received: {boxes[flipped][:3].tolist()}")
    if image_size is not None:
        height, width = image_size
        outside = (boxes[:, 0] >= width) | (boxes[:, 1] >= height) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0)
        if outside.any():
            raise ValueError(f"{name} lie wholly outside the {height}x{width} image. Received: "
                             f"{boxes[outside][:3].tolist()}")
        boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    return boxes


def box_area(boxes):
    boxes = ops.cast(boxes, "float32")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes_a, boxes_b):
    """Intersection over union, ``[N, 4]`` x ``[M, 4]`` -> ``[N, M]`` (0 where both are empty).
    Leading batch axes broadcast: ``[B, N, 4]`` x ``[M, 4]`` or ``[B, M, 4]`` -> ``[B, N, M]``."""
    boxes_a, boxes_b = ops.cast(boxes_a, "float32"), ops.cast(boxes_b, "float32")
    top_left = ops.maximum(boxes_a[..., :, None, :2], boxes_b[..., None, :, :2])
    bottom_right = ops.minimum(boxes_a[..., :, None, 2:], boxes_b[..., None, :, 2:])
    overlap = ops.prod(ops.maximum(bottom_right - top_left, 0.0), axis=-1)
    union = box_area(boxes_a)[..., :, None] + box_area(boxes_b)[..., None, :] - overlap
    return ops.where(union > 0, overlap / ops.where(union > 0, union, 1.0), 0.0)


def clip_boxes(boxes, height, width):
    """Clip ``[..., 4]`` boxes to an image of ``height`` x ``width`` pixels."""
    boxes = ops.cast(boxes, "float32")
    height, width = ops.cast(height, "float32"), ops.cast(width, "float32")
    x1, y1, x2, y2 = (boxes[..., i] for i in range(4))
    return ops.stack([ops.clip(x1, 0.0, width), ops.clip(y1, 0.0, height), ops.clip(x2, 0.0, width),
                      ops.clip(y2, 0.0, height)], axis=-1)


def to_yxyx_normalized(boxes, height, width):
    """Pixel ``[x1, y1, x2, y2]`` -> the TF Object Detection API's ``[ymin, xmin, ymax, xmax]`` in [0, 1]."""
    boxes = ops.cast(boxes, "float32")
    height, width = ops.cast(height, "float32"), ops.cast(width, "float32")
    return ops.stack([boxes[..., 1] / height, boxes[..., 0] / width, boxes[..., 3] / height, boxes[..., 2] / width],
                     axis=-1)


def from_yxyx_normalized(boxes, height, width):
    """TFDS / TF Object Detection API ``[ymin, xmin, ymax, xmax]`` in [0, 1] -> pixel ``[x1, y1, x2, y2]``."""
    boxes = ops.cast(boxes, "float32")
    height, width = ops.cast(height, "float32"), ops.cast(width, "float32")
    return ops.stack([boxes[..., 1] * width, boxes[..., 0] * height, boxes[..., 3] * width, boxes[..., 2] * height],
                     axis=-1)


class BoxCoder:
    """Encode boxes as offsets from reference boxes and decode them back.

    ``encode(boxes, references) -> [N, 4]`` deltas ``(dx, dy, dw, dh)`` times ``weights``;
    ``decode(deltas, references)`` inverts it, for ``deltas [N, 4 K]`` (K boxes per reference,
    e.g. one per class) -> ``[N, 4 K]``.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), clamp: float = DEFAULT_CLAMP):
        if len(weights) != 4 or any(not w > 0 for w in weights):
            raise ValueError(f"weights must be four positive numbers (wx, wy, ww, wh). Received: {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self.clamp = float(clamp)

    @staticmethod
    def _centre_size(boxes):
        widths = boxes[..., 2] - boxes[..., 0]
        heights = boxes[..., 3] - boxes[..., 1]
        return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights

    def encode(self, boxes, references):
        boxes = ops.cast(boxes, "float32")
        references = ops.cast(references, "float32")
        x, y, w, h = self._centre_size(boxes)
        rx, ry, rw, rh = self._centre_size(references)
        wx, wy, ww, wh = self.weights
        return ops.stack([wx * (x - rx) / rw, wy * (y - ry) / rh, ww * ops.log(w / rw), wh * ops.log(h / rh)],
                         axis=-1)

    def decode(self, deltas, references):
        deltas = ops.cast(deltas, "float32")
        references = ops.cast(references, "float32")
        per_box = ops.reshape(deltas, (ops.shape(deltas)[0], -1, 4))  # [N, K, 4]
        rx, ry, rw, rh = (v[:, None] for v in self._centre_size(references))
        wx, wy, ww, wh = self.weights
        x = per_box[..., 0] / wx * rw + rx
        y = per_box[..., 1] / wy * rh + ry
        half_w = 0.5 * ops.exp(ops.minimum(per_box[..., 2] / ww, self.clamp)) * rw
        half_h = 0.5 * ops.exp(ops.minimum(per_box[..., 3] / wh, self.clamp)) * rh
        decoded = ops.stack([x - half_w, y - half_h, x + half_w, y + half_h], axis=-1)
        return ops.reshape(decoded, ops.shape(deltas))
