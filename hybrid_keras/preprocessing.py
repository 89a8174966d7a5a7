"""Image preprocessing modes: the normalisations the classic weight files were trained with.

Inputs are RGB images with values in [0, 255] (uint8 or float), channels last. Each mode
is ``(x[..., order] * scale - mean) / std``:

- ``"caffe"``: RGB -> BGR, minus the ImageNet mean per channel (VGG from keras.applications).
- ``"torch"``: /255, minus mean, divided by std per channel (every torchvision checkpoint).
- ``"tf"``: scaled to [-1, 1] (MobileNetV2 from keras.applications, Inception).
- ``"none"``: cast to float32 only.

Zoo models carry this as their first layer (:class:`hybrid_keras.layers.Preprocessing`);
:func:`preprocess_numpy` is the same arithmetic for the keras.applications-style
``preprocess_input`` of models built with ``include_preprocessing=False``. This module
needs only NumPy.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("caffe", "torch", "tf", "none")
CHANNEL_ORDERS = ("rgb", "bgr")


@dataclasses.dataclass(frozen=True)
class Normalization:
    """``(x[..., order] * scale - mean) / std`` per channel; ``mean``/``std`` of length 1 or 3."""

    channel_order: str
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def needs_rgb(self) -> bool:
        return self.channel_order == "bgr" or len(self.mean) == 3 or len(self.std) == 3


_MODE_PARAMETERS = {
    "caffe": Normalization("bgr", 1.0, (103.939, 116.779, 123.68), (1.0,)),
    "torch": Normalization("rgb", 1 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf": Normalization("rgb", 1 / 127.5, (1.0,), (1.0,)),
    "none": Normalization("rgb", 1.0, (0.0,), (1.0,)),
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"preprocessing must be one of {MODES}. Received: preprocessing={mode!r}")
    return mode


def mode_parameters(mode: str) -> Normalization:
    """The channel order, scale, mean and std of a mode."""
    return _MODE_PARAMETERS[check_mode(mode)]


def preprocess_numpy(images, mode: str) -> np.ndarray:
    """Apply ``mode`` to RGB images in [0, 255] with NumPy; returns float32."""
    params = mode_parameters(mode)
    x = np.asarray(images, dtype=np.float32)
    if params.needs_rgb and x.shape[-1] != 3:
        raise ValueError(f"preprocessing {mode!r} needs 3 RGB channels last. Received: images of shape {x.shape}")
    if params.channel_order == "bgr":
        x = x[..., ::-1]
    mean, std = np.asarray(params.mean, np.float32), np.asarray(params.std, np.float32)
    return ((x * np.float32(params.scale) - mean) / std).astype(np.float32)
