"""Label maps against predictions: shapes, the ignore label, and labels outside the classes.

Shared by the metrics and the loss. A label outside ``[0, num_classes)`` that is not the
ignore label is an error: where the labels hold values (eager updates, NumPy, PyTorch) it
raises ``ValueError`` naming them; inside a compiled step (``tf.function``, ``jax.jit``)
nothing can raise, so callers turn their result NaN (see :func:`split_labels`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def check_labels(masks, num_classes: int, ignore_label: int | None = None, *, name: str = "masks") -> None:
    """Raise ``ValueError`` if ``masks`` hold a label outside ``[0, num_classes)`` other than ``ignore_label``."""
    values = np.unique(np.asarray(masks))
    bad = values[(values < 0) | (values >= num_classes)]
    if ignore_label is not None:
        bad = bad[bad != ignore_label]
    if bad.size:
        allowed = f"0-{num_classes - 1}" + (f" or the ignore label {ignore_label}" if ignore_label is not None else "")
        raise ValueError(f"{name}: labels must be {allowed}. Received: labels {bad[:10].tolist()}"
                         f"{' ...' if bad.size > 10 else ''}")


def split_labels(y_true, num_classes: int, ignore_label: int | None):
    """``(labels int32, in_range, invalid)`` masks of ``y_true``; raises now if it holds values and an invalid label."""
    y_true = ops.cast(y_true, "int32")
    in_range = ops.logical_and(y_true >= 0, y_true < num_classes)
    ignored = y_true == ignore_label if ignore_label is not None else ops.zeros_like(in_range)
    invalid = ops.logical_and(ops.logical_not(in_range), ops.logical_not(ignored))
    flags = _concrete(invalid)
    if flags is not None and flags.any():
        check_labels(_concrete(y_true), num_classes, ignore_label, name="y_true")
    return y_true, in_range, invalid


def labels_and_predictions(y_true, y_pred, num_classes: int):
    """``y_true`` as ``[B, H, W]`` and ``y_pred`` as class indices ``[B, H, W]`` (the argmax of scores), checked to match."""
    y_true = ops.convert_to_tensor(y_true)
    y_pred = ops.convert_to_tensor(y_pred)
    if len(y_true.shape) == 4 and y_true.shape[-1] == 1:
        y_true = ops.squeeze(y_true, -1)
    if len(y_pred.shape) == len(y_true.shape) + 1:
        if y_pred.shape[-1] is not None and y_pred.shape[-1] != num_classes:
            raise ValueError(f"y_pred must hold num_classes={num_classes} scores per pixel. "
                             f"Received: y_pred shape {tuple(y_pred.shape)}")
        y_pred = ops.argmax(y_pred, axis=-1)
    elif len(y_pred.shape) != len(y_true.shape):
        raise ValueError("y_pred must be class scores [B, H, W, C] or class indices [B, H, W] for labels y_true "
                         f"[B, H, W]. Received: y_true shape {tuple(y_true.shape)}, y_pred shape {tuple(y_pred.shape)}")
    for true_side, predicted_side in zip(y_true.shape, y_pred.shape):
        if None not in (true_side, predicted_side) and true_side != predicted_side:
            raise ValueError("y_true and y_pred must cover the same pixels (resize the mask or the prediction "
                             f"first). Received: y_true shape {tuple(y_true.shape)}, y_pred shape "
                             f"{tuple(y_pred.shape)}")
    return y_true, y_pred


def _concrete(x):
    """``x`` as a NumPy array when it holds values now (eager), None while a step is being traced."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # the backend itself: always importable here

        if not tf.executing_eagerly():
            return None
    elif backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    return ops.convert_to_numpy(x)
