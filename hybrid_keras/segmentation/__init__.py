"""Semantic segmentation machinery that is not a layer: the FCN paper's metrics (streaming,
with an ignore label) and a per-pixel cross-entropy with class weights. Backend-agnostic
(``keras.ops``); the models are in ``zoo`` (``fcn8s``, ...) and the dense CRF is
``hybrid_keras.layers.DenseCRF``."""

from hybrid_keras.segmentation.labels import check_labels
from hybrid_keras.segmentation.losses import SegmentationCrossentropy, median_frequency_weights
from hybrid_keras.segmentation.metrics import (
    SCORES,
    ConfusionMatrixMetric,
    FrequencyWeightedIoU,
    MeanClassAccuracy,
    MeanIoU,
    PixelAccuracy,
    confusion_matrix,
    scores_from_confusion,
    segmentation_metrics,
    segmentation_scores,
)

__all__ = ["SCORES", "ConfusionMatrixMetric", "FrequencyWeightedIoU", "MeanClassAccuracy", "MeanIoU", "PixelAccuracy",
           "SegmentationCrossentropy", "check_labels", "confusion_matrix", "median_frequency_weights",
           "scores_from_confusion", "segmentation_metrics", "segmentation_scores"]
