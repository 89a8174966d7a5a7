"""Adaptive average pooling (torch.nn.AdaptiveAvgPool2d semantics), channels last."""

from __future__ import annotations

import math

import keras
from keras import ops


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
