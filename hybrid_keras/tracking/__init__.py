"""Single-object tracking: the SINT tracker (Tao, Gavves & Smeulders, CVPR 2016) on the zoo's
``sint`` matching network, its training on box pairs, SavedModel export, sequences with exact
ground truth made by a virtual camera over still photos, and the OTB benchmark's measures
(success plot and its AUC, precision plot and precision at 20 pixels).

The tracker's names load Keras on first use; the measures and sequences are NumPy only.
"""

from hybrid_keras.tracking.metrics import (
    box_iou,
    centre_errors,
    check_boxes,
    precision_curve,
    success_curve,
    tracking_scores,
)
from hybrid_keras.tracking.sequences import Sequence, camera_path, synthetic_sequence

_TRACKER_NAMES = ("SiameseTracker", "SiameseTrackingStep", "export_tracker", "load_tracker", "save_tracker")

__all__ = ["Sequence", "box_iou", "camera_path", "centre_errors", "check_boxes", "precision_curve", "success_curve",
           "synthetic_sequence", "tracking_scores", *_TRACKER_NAMES]


def __getattr__(name):
    if name in _TRACKER_NAMES:
        from hybrid_keras.tracking import sint

        return getattr(sint, name)
    raise AttributeError(f"module 'hybrid_keras.tracking' has no attribute {name!r}")
