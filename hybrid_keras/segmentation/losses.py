"""Per-pixel cross-entropy with an ignore label and class weights.

Keras' ``SparseCategoricalCrossentropy(ignore_class=...)`` averages over the labelled
pixels; this loss adds what segmentation training on CamVid-like data needs: class weights
(SegNet's median-frequency balancing, :func:`median_frequency_weights`), the shape checks and
the label check of the metrics (labels outside the classes raise eagerly and make the loss
NaN inside a compiled step).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from hybrid_keras.segmentation.labels import check_labels, labels_and_predictions, split_labels


def median_frequency_weights(masks, num_classes: int, ignore_label: int | None = None) -> np.ndarray:
    """SegNet's class weights (Badrinarayanan et al. 2017, after Eigen & Fergus 2015):
    ``median(freq) / freq(c)``, where ``freq(c)`` is class c's pixels over the pixels of the
    images in which c appears. Classes that never appear get weight 0."""
    masks = np.asarray(masks)
    check_labels(masks, num_classes, ignore_label)
    masks = masks.reshape(len(masks), -1)
    pixels = np.zeros(num_classes)
    image_pixels = np.zeros(num_classes)
    for mask in masks:
        labelled = mask[(mask >= 0) & (mask < num_classes)]
        counts = np.bincount(labelled, minlength=num_classes)
        pixels += counts
        image_pixels += np.where(counts > 0, labelled.size, 0)
    present = pixels > 0
    frequency = np.where(present, pixels / np.maximum(image_pixels, 1), 0.0)
    weights = np.zeros(num_classes)
    weights[present] = np.median(frequency[present]) / frequency[present]
    return weights.astype(np.float32)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class SegmentationCrossentropy(keras.losses.Loss):
    """``sum_i w[y_i] CE_i / sum_i w[y_i]`` over the labelled pixels of the batch.

    ``y_true``: labels ``[B, H, W]`` (or ``[B, H, W, 1]``); ``y_pred``: ``[B, H, W, C]``
    probabilities, or logits with ``from_logits=True``. ``class_weights``: C weights (None:
    all 1, the plain mean over labelled pixels). Pixels labelled ``ignore_label`` count for
    nothing.
    """

    def __init__(self, num_classes: int, ignore_label: int | None = None, class_weights=None,
                 from_logits: bool = False, name: str = "segmentation_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
        self.num_classes = int(num_classes)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        if class_weights is not None:
            class_weights = [float(w) for w in np.asarray(class_weights, dtype=np.float64).reshape(-1)]
            if len(class_weights) != self.num_classes or min(class_weights) < 0:
                raise ValueError(f"class_weights must be {self.num_classes} non-negative numbers. "
                                 f"Received: class_weights={class_weights}")
        self.class_weights = class_weights
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        if len(y_pred.shape) != 4:
            raise ValueError(f"y_pred must be [B, H, W, C] scores. Received: y_pred shape {tuple(y_pred.shape)}")
        y_true, _ = labels_and_predictions(y_true, y_pred, self.num_classes)
        y_true, in_range, invalid = split_labels(y_true, self.num_classes, self.ignore_label)

        y_pred = ops.cast(y_pred, "float32")
        log_probabilities = (ops.log_softmax(y_pred, axis=-1) if self.from_logits
                             else ops.log(ops.clip(y_pred, keras.config.epsilon(), 1.0)))
        labels = ops.clip(y_true, 0, self.num_classes - 1)
        picked = ops.squeeze(ops.take_along_axis(log_probabilities, ops.expand_dims(labels, -1), axis=-1), -1)
        weights = ops.cast(in_range, "float32")
        if self.class_weights is not None:
            weights = weights * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), labels)
        total = ops.sum(weights)
        loss = -ops.sum(weights * picked) / ops.maximum(total, 1e-12)
        # A label outside the classes cannot raise inside a compiled step: make it visible as NaN.
        return ops.where(ops.any(invalid), float("nan"), loss)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label,
                "class_weights": self.class_weights, "from_logits": self.from_logits}
