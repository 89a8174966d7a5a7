"""RoIAlign (He et al., Mask R-CNN, ICCV 2017) and RoI pooling (Girshick, Fast R-CNN, ICCV
2015): a fixed-size feature per region of interest.

Called on ``(features [B, H, W, C], rois [R, 5])``, rows ``(batch_index, x1, y1, x2, y2)`` in
input pixels as torchvision takes them; returns ``[R, out_h, out_w, C]``. Each output bin is
the mean of ``sampling_ratio`` x ``sampling_ratio`` bilinear samples spread evenly over it,
exactly as ``torchvision.ops.roi_align`` computes (same sample points, same border rule: a
sample more than one cell outside the map counts as zero, one within a cell of the edge reads
the edge).

Bilinear interpolation is separable, and averaging is linear, so a bin's value is
``wy · F · wx`` with ``wy``, ``wx`` the per-axis interpolation weights averaged over the bin's
samples. The layer builds those weight rows (one per bin, per axis, per RoI) and contracts
them with the feature map as two matrix products: no gathers, the same code on every
backend, differentiable in the features, and cheap when the map is small (one row of ``H``
weights per bin instead of a gather per sample). The RoI coordinates get no gradient, as in
torchvision.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def _check_roi_arguments(output_size, spatial_scale) -> tuple[tuple[int, int], float]:
    """``output_size`` as ``(height, width)`` and ``spatial_scale`` as a float, or a clear error."""
    if isinstance(output_size, int):
        output_size = (output_size, output_size)
    if len(output_size) != 2 or any(int(s) < 1 for s in output_size):
        raise ValueError(f"output_size must be a positive int or (height, width). Received: {output_size!r}")
    if not spatial_scale > 0:
        raise ValueError(f"spatial_scale must be > 0. Received: spatial_scale={spatial_scale!r}")
    return tuple(int(s) for s in output_size), float(spatial_scale)


def bin_sampling_weights(start, length, bins: int, samples, max_samples: int, size: int):
    """``[R, bins, size]``: for each RoI and bin along one axis, the mean over the bin's samples
    of the bilinear weights onto the ``size`` cells of that axis.

    ``start``, ``length``: ``[R]`` in feature cells; ``samples``: ``[R]`` samples per bin
    (``max_samples`` bounds it statically; slots past a RoI's count are masked out).
    """
    slot = ops.arange(max_samples, dtype="float32")
    samples = ops.cast(samples, "float32")
    divisor = ops.maximum(samples, 1.0)  # a RoI of no extent has no samples, so reads zero
    # Sample k of bin i sits at start + (i + (k + 0.5) / n) * length / bins.
    offsets = ops.arange(bins, dtype="float32")[None, :, None] + (slot[None, None, :] + 0.5) / divisor[:, None, None]
    coords = start[:, None, None] + offsets * (length / bins)[:, None, None]  # [R, bins, max_samples]
    used = ops.cast(slot[None, None, :] < samples[:, None, None], "float32")
    last = ops.cast(size, "float32") - 1.0  # size may be a tensor when the map's size is dynamic
    inside = ops.cast((coords >= -1.0) & (coords <= last + 1.0), "float32")
    clamped = ops.clip(coords, 0.0, last)
    cells = ops.cast(ops.arange(size), "float32")
    tent = ops.relu(1.0 - ops.abs(clamped[..., None] - cells))  # [R, bins, max_samples, size]
    weights = tent * (used * inside)[..., None]
    return ops.sum(weights, axis=2) / divisor[:, None, None]


@keras.saving.register_keras_serializable(package="hybrid_keras")
class RoIAlign(keras.layers.Layer):
    """``RoIAlign(output_size, spatial_scale, sampling_ratio, aligned)`` on ``(features, rois)``.

    ``spatial_scale``: feature cells per input pixel (1/16 for a stride-16 map).
    ``sampling_ratio``: samples per bin along each axis; ``<= 0`` picks
    ``ceil(roi_size / output_size)`` per RoI, as torchvision does (then the feature map needs a
    static height and width, which bound the count). ``aligned=True`` shifts boxes by half a
    cell so that a box's edges fall on pixel edges (Detectron2's correction); ``False`` is
    the original Mask R-CNN rule, where a RoI is at least one cell wide.
    """

    def __init__(self, output_size, spatial_scale: float = 1.0, sampling_ratio: int = 2, aligned: bool = True,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_size, self.spatial_scale = _check_roi_arguments(output_size, spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)

    def call(self, inputs):
        features, rois = inputs
        features = ops.convert_to_tensor(features)
        rois = ops.stop_gradient(ops.cast(rois, "float32"))
        height, width = features.shape[1], features.shape[2]
        if height is None or width is None:
            if self.sampling_ratio <= 0:
                raise ValueError("RoIAlign with an adaptive sampling_ratio (<= 0) needs a static feature height and width")
            shape = ops.shape(features)
            height, width = shape[1], shape[2]
        out_h, out_w = self.output_size
        offset = 0.5 if self.aligned else 0.0
        x1, y1, x2, y2 = (rois[:, i] * self.spatial_scale - offset for i in range(1, 5))
        roi_w, roi_h = x2 - x1, y2 - y1
        if not self.aligned:
            roi_w, roi_h = ops.maximum(roi_w, 1.0), ops.maximum(roi_h, 1.0)
        if self.sampling_ratio > 0:
            samples_y = samples_x = ops.full(ops.shape(rois)[:1], float(self.sampling_ratio))
            max_y = max_x = self.sampling_ratio
        else:
            samples_y, samples_x = ops.ceil(roi_h / out_h), ops.ceil(roi_w / out_w)
            # A RoI may reach one cell past each side and still read the map.
            max_y, max_x = math.ceil((height + 2) / out_h), math.ceil((width + 2) / out_w)
        weights_y = bin_sampling_weights(y1, roi_h, out_h, samples_y, max_y, height)  # [R, out_h, H]
        weights_x = bin_sampling_weights(x1, roi_w, out_w, samples_x, max_x, width)  # [R, out_w, W]
        weights_y = ops.cast(weights_y, features.dtype)
        weights_x = ops.cast(weights_x, features.dtype)

        # Rows first: put each RoI's row weights in its image's block of the stacked maps, so
        # one matrix product reads every RoI from its own image.
        batch = ops.shape(features)[0]
        image = ops.one_hot(ops.cast(rois[:, 0], "int32"), batch, dtype=features.dtype)  # [R, B]
        rows = ops.reshape(image[:, None, :, None] * weights_y[:, :, None, :], (-1, batch * height))
        channels = features.shape[-1]
        stacked = ops.reshape(features, (batch * height, -1))  # [B*H, W*C]
        per_row = ops.reshape(ops.matmul(rows, stacked), (-1, out_h, width, channels))  # [R, out_h, W, C]
        return ops.einsum("rqw,rpwc->rpqc", weights_x, per_row)

    def compute_output_shape(self, input_shape):
        features_shape, rois_shape = input_shape
        return (rois_shape[0], *self.output_size, features_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "spatial_scale": self.spatial_scale,
                "sampling_ratio": self.sampling_ratio, "aligned": self.aligned}


def _round_half_away(x):
    """C's ``round`` (halves away from zero), which torchvision's RoI pooling uses."""
    return ops.sign(x) * ops.floor(ops.abs(x) + 0.5)


def masked_bin_max(maps, y_start, y_end, x_start, x_end):
    """Max over rectangular bins: ``maps [R, H, W, C]``, integer bin edges ``[R, out_h]`` and
    ``[R, out_w]`` (half-open, already clipped to the map) -> ``[R, out_h, out_w, C]``; an empty
    bin gives 0.

    A max is not linear, so unlike RoIAlign there is no matrix-product form: each column bin is
    a masked max over the width, then each row bin a masked max over the height (separable,
    because the bins are rectangles). Gradients reach the maximising cell of each bin.
    """
    shape = ops.shape(maps)
    rows = ops.arange(shape[1], dtype="int32")
    cols = ops.arange(shape[2], dtype="int32")
    lowest = -3.0e38 if maps.dtype != "float16" else -6.0e4
    # Keras' max over an empty batch fails (TensorFlow) or returns a scalar (PyTorch), so an
    # empty RoI set would break: one dummy region with empty bins rides along, dropped at the end.
    maps = ops.pad(maps, [[0, 1], [0, 0], [0, 0], [0, 0]])
    y_start, y_end, x_start, x_end = (ops.pad(ops.cast(edge, "int32"), [[0, 1], [0, 0]])
                                      for edge in (y_start, y_end, x_start, x_end))

    per_column = []
    for q in range(x_start.shape[1]):
        inside = (cols[None, :] >= x_start[:, q:q + 1]) & (cols[None, :] < x_end[:, q:q + 1])  # [R, W]
        per_column.append(ops.max(ops.where(inside[:, None, :, None], maps, lowest), axis=2))  # [R, H, C]
    per_column = ops.stack(per_column, axis=2)  # [R, H, out_w, C]
    per_bin = []
    for p in range(y_start.shape[1]):
        inside = (rows[None, :] >= y_start[:, p:p + 1]) & (rows[None, :] < y_end[:, p:p + 1])  # [R, H]
        per_bin.append(ops.max(ops.where(inside[:, :, None, None], per_column, lowest), axis=1))  # [R, out_w, C]
    per_bin = ops.stack(per_bin, axis=1)  # [R, out_h, out_w, C]
    empty = (y_end <= y_start)[:, :, None] | (x_end <= x_start)[:, None, :]
    return ops.where(empty[..., None], ops.zeros_like(per_bin), per_bin)[:-1]


@keras.saving.register_keras_serializable(package="hybrid_keras")
class RoIPooling(keras.layers.Layer):
    """``RoIPooling(output_size, spatial_scale)`` on ``(features [B, H, W, C], rois [R, 5])``:
    Fast R-CNN's max pooling of each region into a fixed grid, ``[R, out_h, out_w, C]``.

    Exactly ``torchvision.ops.roi_pool``'s rule: box corners are scaled and rounded to whole
    cells (halves away from zero), the box spans ``round(x2 s) - round(x1 s) + 1`` cells (at
    least one), bin ``i`` of ``n`` covers ``[floor(i L / n), ceil((i + 1) L / n))`` of it, clipped
    to the map; an empty bin (wholly outside the map) is 0. Gradients flow to each bin's
    maximum; the RoI coordinates get none.
    """

    def __init__(self, output_size, spatial_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.output_size, self.spatial_scale = _check_roi_arguments(output_size, spatial_scale)

    def call(self, inputs):
        features, rois = inputs
        features = ops.convert_to_tensor(features)
        rois = ops.stop_gradient(ops.cast(rois, "float32"))
        shape = ops.shape(features)
        x1, y1, x2, y2 = (_round_half_away(rois[:, i] * self.spatial_scale) for i in range(1, 5))

        def edges(start, end, bins, size):
            length = ops.maximum(end - start + 1.0, 1.0)
            step = ops.arange(bins, dtype="float32")[None, :]
            low = ops.floor(step * length[:, None] / bins) + start[:, None]
            high = ops.ceil((step + 1.0) * length[:, None] / bins) + start[:, None]
            size = ops.cast(size, "float32")
            return ops.clip(low, 0.0, size), ops.clip(high, 0.0, size)

        out_h, out_w = self.output_size
        y_start, y_end = edges(y1, y2, out_h, shape[1])
        x_start, x_end = edges(x1, x2, out_w, shape[2])
        maps = ops.take(features, ops.cast(rois[:, 0], "int32"), axis=0)  # [R, H, W, C]
        return masked_bin_max(maps, y_start, y_end, x_start, x_end)

    def compute_output_shape(self, input_shape):
        features_shape, rois_shape = input_shape
        return (rois_shape[0], *self.output_size, features_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "spatial_scale": self.spatial_scale}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class BoxesToRoIs(keras.layers.Layer):
    """Boxes per image ``[B, N, 4]`` as ``[x, y, w, h]`` (the tracking convention) -> RoIAlign's
    rows ``[B N, 5]`` ``(batch_index, x1, y1, x2, y2)``, image-major.

    ``shift``: pixels subtracted from every coordinate, for a backbone whose cell ``i`` is not
    centred on pixel ``(i + 1/2) stride`` (RoIAlign's ``aligned`` assumption).
    """

    def __init__(self, shift: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.shift = float(shift)

    def call(self, boxes):
        boxes = ops.cast(boxes, "float32")
        shape = ops.shape(boxes)
        index = ops.repeat(ops.arange(shape[0], dtype="float32"), shape[1])
        x, y, w, h = (ops.reshape(boxes[..., i], (-1,)) for i in range(4))
        corners = [x - self.shift, y - self.shift, x + w - self.shift, y + h - self.shift]
        return ops.stack([index, *corners], axis=1)

    def compute_output_shape(self, input_shape):
        count = None if input_shape[0] is None or input_shape[1] is None else input_shape[0] * input_shape[1]
        return (count, 5)

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class PerImage(keras.layers.Layer):
    """``[B N, ...]`` rows (image-major) back to ``[B, N, ...]``, with ``B`` and ``N`` read from the
    ``[B, N, 4]`` boxes they came from."""

    def call(self, inputs):
        rows, boxes = inputs
        shape = ops.shape(boxes)
        return ops.reshape(rows, (shape[0], shape[1], *rows.shape[1:]))

    def compute_output_shape(self, input_shape):
        rows_shape, boxes_shape = input_shape
        return (boxes_shape[0], boxes_shape[1], *rows_shape[1:])
