"""Anchor boxes for a region proposal network (Ren et al., Faster R-CNN, 2015)."""

from __future__ import annotations

from keras import ops


def anchor_grid(feature_size, stride, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0)):
    """``[H W A, 4]`` anchors ``[x1, y1, x2, y2]`` in input pixels for a feature map of
    ``feature_size = (H, W)`` cells, ``stride`` pixels apart (an int or ``(stride_y, stride_x)``).

    Each cell gets ``A = len(aspect_ratios) * len(sizes)`` anchors of area ``size**2`` and
    height / width ``aspect_ratio``, centred on the cell's top-left pixel ``(x s, y s)`` with
    corners rounded to whole pixels: torchvision's ``AnchorGenerator`` rule, so that its
    trained RPNs and ours place anchors alike. Order: cells row-major, then ratios, then sizes.
    """
    height, width = feature_size
    stride_y, stride_x = (stride, stride) if isinstance(stride, (int, float)) else stride
    if not sizes or not aspect_ratios or min(sizes) <= 0 or min(aspect_ratios) <= 0:
        raise ValueError(f"sizes and aspect_ratios must be non-empty and positive. Received: sizes={sizes!r}, "
                         f"aspect_ratios={aspect_ratios!r}")
    scales = ops.convert_to_tensor(sizes, "float32")
    height_ratios = ops.sqrt(ops.convert_to_tensor(aspect_ratios, "float32"))
    widths = ops.reshape(scales[None, :] / height_ratios[:, None], (-1,))
    heights = ops.reshape(scales[None, :] * height_ratios[:, None], (-1,))
    base = ops.round(ops.stack([-widths, -heights, widths, heights], axis=1) / 2.0)  # [A, 4]
    shift_y, shift_x = ops.meshgrid(ops.arange(height, dtype="float32") * stride_y,
                                    ops.arange(width, dtype="float32") * stride_x, indexing="ij")
    shift_x, shift_y = ops.reshape(shift_x, (-1,)), ops.reshape(shift_y, (-1,))
    shifts = ops.stack([shift_x, shift_y, shift_x, shift_y], axis=1)  # [H W, 4]
    return ops.reshape(shifts[:, None, :] + base[None, :, :], (-1, 4))
