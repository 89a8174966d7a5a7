"""The preprocessing layer every zoo model starts with: raw RGB pixels in, normalised tensors out."""

from __future__ import annotations

import keras
from keras import ops

from hybrid_keras.preprocessing import CHANNEL_ORDERS, MODES, mode_parameters


@keras.saving.register_keras_serializable(package="hybrid_keras")
class Preprocessing(keras.layers.Layer):
    """Normalises raw pixels (RGB in [0, 255], uint8 or float) as a weight file expects.

    ``mode`` is one of ``hybrid_keras.preprocessing.MODES`` ("caffe", "torch", "tf",
    "none"); ``channel_order``, ``scale``, ``mean`` and ``std`` default to the mode's and
    may be given to describe another normalisation (then ``mode`` is "custom"). The
    layer computes ``(x[..., order] * scale - mean) / std``. Everything is in its config,
    so the normalisation survives ``.keras`` files, sliced feature models and export.
    """

    def __init__(self, mode: str = "none", *, channel_order: str | None = None, scale: float | None = None,
                 mean=None, std=None, **kwargs):
        super().__init__(**kwargs)
        custom = any(value is not None for value in (channel_order, scale, mean, std))
        if mode not in MODES + ("custom",):
            raise ValueError(f"mode must be one of {MODES} or 'custom'. Received: mode={mode!r}")
        base = mode_parameters("none" if mode == "custom" else mode)
        self.channel_order = base.channel_order if channel_order is None else channel_order
        if self.channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}. Received: channel_order={channel_order!r}")
        self.scale = float(base.scale if scale is None else scale)
        self.mean = tuple(float(v) for v in (base.mean if mean is None else mean))
        self.std = tuple(float(v) for v in (base.std if std is None else std))
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, 3):
                raise ValueError(f"{name} must have 1 or 3 values. Received: {name}={values}")
        if any(v == 0 for v in self.std):
            raise ValueError(f"std must not contain 0. Received: std={self.std}")
        matches_mode = mode != "custom" and (self.channel_order, self.scale, self.mean, self.std) == (
            base.channel_order, base.scale, base.mean, base.std)
        self.mode = mode if (matches_mode or not custom) else "custom"

    def build(self, input_shape):
        channels = input_shape[-1]
        needs_three = self.channel_order == "bgr" or len(self.mean) == 3 or len(self.std) == 3
        if needs_three and channels is not None and channels != 3:
            raise ValueError(f"Preprocessing {self.mode!r} needs 3 RGB channels last. Received: input shape {input_shape}")
        self.built = True

    def call(self, inputs):
        x = ops.cast(inputs, self.compute_dtype)
        if self.channel_order == "bgr":
            x = ops.flip(x, axis=-1)
        if self.mode == "none":
            return x
        x = x * self.scale - ops.convert_to_tensor(self.mean, self.compute_dtype)
        if any(v != 1.0 for v in self.std):
            x = x / ops.convert_to_tensor(self.std, self.compute_dtype)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "channel_order": self.channel_order, "scale": self.scale,
                "mean": list(self.mean), "std": list(self.std)}


def find_preprocessing(model) -> Preprocessing | None:
    """The model's Preprocessing layer, if its input goes through one (searching nested models)."""
    for layer in model.layers:
        if isinstance(layer, Preprocessing):
            return layer
        if isinstance(layer, keras.Model):
            found = find_preprocessing(layer)
            if found is not None:
                return found
    return None
