"""Adaptive average pooling (torch.nn.AdaptiveAvgPool2d semantics) and spatial pyramid pooling,
channels last."""

from __future__ import annotations

import math

import keras
from keras import ops

from hybrid_keras.layers.roi import RoIPooling, masked_bin_max


@keras.saving.register_keras_serializable(package="hybrid_keras")
class AdaptiveAveragePooling2D(keras.layers.Layer):
    """Average over ``output_size`` bins per spatial axis.

    Bin ``i`` of an axis of length ``n`` covers ``[floor(i n / out), ceil((i + 1) n / out))``,
    so bins overlap when ``n`` is not a multiple of ``out`` (torch's rule). Needs static
    height and width.
    """

    def __init__(self, output_size, **kwargs):
        super().__init__(**kwargs)
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        if len(output_size) != 2 or any(int(s) < 1 for s in output_size):
            raise ValueError(f"output_size must be a positive int or (height, width), got {output_size!r}")
        self.output_size = tuple(int(s) for s in output_size)

    @staticmethod
    def _bins(length: int, count: int):
        return [(math.floor(i * length / count), math.ceil((i + 1) * length / count)) for i in range(count)]

    def call(self, inputs):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError("AdaptiveAveragePooling2D needs a static height and width")
        rows = [ops.mean(inputs[:, a:b], axis=1) for a, b in self._bins(height, self.output_size[0])]
        rows = ops.stack(rows, axis=1)  # [B, out_h, W, C]
        cols = [ops.mean(rows[:, :, a:b], axis=2) for a, b in self._bins(width, self.output_size[1])]
        return ops.stack(cols, axis=2)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.output_size, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size}


def _adaptive_edges(size, bins: int, rows):
    """Bin edges ``[floor(i size / bins), ceil((i + 1) size / bins))`` as ``[rows, bins]`` floats."""
    step = ops.arange(bins, dtype="float32")[None, :]
    size = ops.cast(size, "float32")
    low, high = ops.floor(step * size / bins), ops.ceil((step + 1.0) * size / bins)
    return ops.repeat(low, rows, axis=0), ops.repeat(high, rows, axis=0)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class SpatialPyramidPooling(keras.layers.Layer):
    """Spatial pyramid pooling (He et al., SPPnet, ECCV 2014): a fixed-length vector from a
    feature map of any size, by max pooling into ``n x n`` bins for each ``n`` in ``levels``.

    Called on ``features [B, H, W, C]`` it pools each whole image -> ``[B, D]``; called on
    ``(features, rois [R, 5])`` (rows ``(batch_index, x1, y1, x2, y2)`` in input pixels, as
    ``RoIPooling`` takes them, with ``spatial_scale``) it pools each region -> ``[R, D]``, as
    SPPnet's detector does. ``D = C * sum(n * n)``, ordered level by level, bins row-major,
    channels innermost. On a whole image, bin ``i`` of ``n`` along an axis of length ``a`` covers
    ``[floor(i a / n), ceil((i + 1) a / n))``: every cell is in some bin (the paper's window
    ``ceil(a / n)`` with stride ``floor(a / n)`` leaves the last cells out when ``n`` does not
    divide ``a``); both rules agree when it does. Per region, the bins are ``RoIPooling``'s.
    """

    def __init__(self, levels=(1, 2, 4), spatial_scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        levels = tuple(levels) if isinstance(levels, (list, tuple)) else (levels,)
        if not levels or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in levels):
            raise ValueError(f"levels must be positive ints, e.g. (1, 2, 4). Received: levels={levels!r}")
        if not spatial_scale > 0:
            raise ValueError(f"spatial_scale must be > 0. Received: spatial_scale={spatial_scale!r}")
        self.levels = levels
        self.spatial_scale = float(spatial_scale)
        self._region_pooling = [RoIPooling(n, self.spatial_scale, name=f"{self.name}_level{n}") for n in levels]

    def call(self, inputs):
        if isinstance(inputs, (list, tuple)):
            features, rois = inputs
            pooled = [pooling([features, rois]) for pooling in self._region_pooling]
        else:
            features = ops.convert_to_tensor(inputs)
            if len(features.shape) != 4:
                raise ValueError(f"SpatialPyramidPooling takes features [B, H, W, C]. Received: shape {features.shape}")
            shape = ops.shape(features)
            pooled = [masked_bin_max(features, *_adaptive_edges(shape[1], n, shape[0]),
                                     *_adaptive_edges(shape[2], n, shape[0])) for n in self.levels]
        return ops.concatenate([ops.reshape(p, (ops.shape(p)[0], -1)) for p in pooled], axis=-1)

    def compute_output_shape(self, input_shape):
        if isinstance(input_shape, (list, tuple)) and isinstance(input_shape[0], (list, tuple)):
            features_shape, rois_shape = input_shape
            rows = rois_shape[0]
        else:
            features_shape = input_shape
            rows = features_shape[0]
        channels = features_shape[-1]
        return (rows, None if channels is None else channels * sum(n * n for n in self.levels))

    def get_config(self):
        return {**super().get_config(), "levels": self.levels, "spatial_scale": self.spatial_scale}
