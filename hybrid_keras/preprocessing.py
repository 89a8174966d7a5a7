"""Image preprocessing modes, as tensor ops (so they can live inside an exported graph).

Inputs are RGB images with values in [0, 255] (uint8 or float), channels last.

- ``"caffe"``: RGB -> BGR, minus the ImageNet mean per channel (VGG from keras.applications).
- ``"torch"``: /255, minus mean, divided by std per channel (every torchvision checkpoint).
- ``"tf"``: scaled to [-1, 1] (MobileNetV2 from keras.applications, Inception).
- ``"none"``: cast to float32 only.
"""

from __future__ import annotations

MODES = ("caffe", "torch", "tf", "none")

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"preprocessing mode {mode!r} is not one of {MODES}")
    return mode


def preprocess(images, mode: str):
    """Apply ``mode`` to a [..., 3] RGB batch in [0, 255]; returns float32."""
    import tensorflow as tf

    check_mode(mode)
    x = tf.cast(images, tf.float32)
    if mode == "none":
        return x
    if x.shape.rank is not None and x.shape[-1] is not None and x.shape[-1] != 3 and mode != "tf":
        raise ValueError(f"preprocessing {mode!r} needs 3 RGB channels last, got shape {x.shape}")
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - tf.constant(_TORCH_MEAN)) / tf.constant(_TORCH_STD)
    return x[..., ::-1] - tf.constant(_CAFFE_MEAN_BGR)


def preprocess_numpy(images, mode: str):
    """The same as :func:`preprocess` in NumPy (for data pipelines outside TensorFlow)."""
    import numpy as np

    check_mode(mode)
    x = np.asarray(images, dtype=np.float32)
    if mode == "none":
        return x
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - np.array(_TORCH_MEAN, np.float32)) / np.array(_TORCH_STD, np.float32)
    return x[..., ::-1] - np.array(_CAFFE_MEAN_BGR, np.float32)
