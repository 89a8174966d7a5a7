"""Single-object tracking. So far: sequences with exact ground truth made by a virtual camera
over still photos, and the OTB benchmark's measures (success plot and its AUC, precision
plot and precision at 20 pixels), in NumPy, for comparing trackers on them."""

from hybrid_keras.tracking.metrics import (
    box_iou,
    centre_errors,
    check_boxes,
    precision_curve,
    success_curve,
    tracking_scores,
)
from hybrid_keras.tracking.sequences import Sequence, camera_path, synthetic_sequence

__all__ = ["Sequence", "box_iou", "camera_path", "centre_errors", "check_boxes", "precision_curve", "success_curve",
           "synthetic_sequence", "tracking_scores"]
