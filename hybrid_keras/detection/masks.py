"""Box-relative instance masks (Mask R-CNN's ``detection_masks``) onto whole images, in NumPy.

A model's ``detection_masks [M, m, m]`` are mask probabilities inside each detection's box.
:func:`paste_masks` resamples each one onto an image of a given size, with the semantics of
the TF Object Detection API's ``reframe_box_masks_to_image_masks``: the box mask is bilinearly
sampled (``crop_and_resize``'s corner-aligned grid: mask row ``i`` of ``m`` lies at
``ymin + i / (m - 1) (ymax - ymin)`` in normalised image coordinates, image row ``r`` of
``H`` at ``r / (H - 1)``), zero outside the box, then thresholded. It serves evaluation (mask AP),
drawing and clients of the served model, and needs only NumPy.
"""

from __future__ import annotations

import numpy as np


def _resampling_weights(low, high, size: int, cells: int) -> np.ndarray:
    """``[N, size, cells]`` bilinear weights from ``size`` image positions onto ``cells`` mask
    cells for boxes spanning ``[low, high]`` (normalised); zero rows outside the box."""
    positions = np.arange(size, dtype=np.float64) / max(size - 1, 1)
    span = np.maximum(high - low, 1e-4)[:, None]
    coords = (positions[None, :] - low[:, None]) / span * (cells - 1)  # [N, size] in mask cells
    inside = (coords >= 0.0) & (coords <= cells - 1)
    tent = np.clip(1.0 - np.abs(coords[..., None] - np.arange(cells)), 0.0, None)
    return tent * inside[..., None]


def paste_masks(masks, boxes, image_height: int, image_width: int, threshold: float | None = 0.5):
    """Box-relative ``masks [..., M, m, m]`` in ``boxes [..., M, 4]`` (normalised ``[ymin, xmin,
    ymax, xmax]``, the models' ``detection_boxes``) -> image masks ``[..., M, image_height,
    image_width]``: booleans ``> threshold``, or the float32 probabilities with ``threshold=None``.
    """
    masks, boxes = np.asarray(masks, np.float64), np.asarray(boxes, np.float64)
    if masks.ndim < 3 or masks.shape[-1] != masks.shape[-2] or masks.shape[-1] < 2:
        raise ValueError(f"masks must be [..., M, m, m] with m >= 2. Received: shape {masks.shape}")
    if boxes.shape != masks.shape[:-2] + (4,):
        raise ValueError(f"boxes must be [..., M, 4] to match masks {masks.shape}. Received: shape {boxes.shape}")
    if int(image_height) < 1 or int(image_width) < 1:
        raise ValueError(f"image_height and image_width must be positive. Received: {image_height}, {image_width}")
    lead, cells = masks.shape[:-2], masks.shape[-1]
    masks, boxes = masks.reshape(-1, cells, cells), boxes.reshape(-1, 4)
    rows = _resampling_weights(boxes[:, 0], boxes[:, 2], int(image_height), cells)  # [N, H, m]
    columns = _resampling_weights(boxes[:, 1], boxes[:, 3], int(image_width), cells)  # [N, W, m]
    pasted = np.matmul(np.matmul(rows, masks), columns.transpose(0, 2, 1))  # [N, H, m] [N, m, W]
    pasted = pasted.reshape(*lead, int(image_height), int(image_width))
    return pasted.astype(np.float32) if threshold is None else pasted > threshold
