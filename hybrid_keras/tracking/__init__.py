"""Single-object tracking. So far: the OTB benchmark's measures (success plot and its AUC,
precision plot and precision at 20 pixels), in NumPy, for comparing trackers on sequences
with ground-truth boxes."""

from hybrid_keras.tracking.metrics import (
    box_iou,
    centre_errors,
    check_boxes,
    precision_curve,
    success_curve,
    tracking_scores,
)

__all__ = ["box_iou", "centre_errors", "check_boxes", "precision_curve", "success_curve", "tracking_scores"]
