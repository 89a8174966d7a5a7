"""Detection machinery that is not a layer: box geometry and coding, anchors, matching,
proposal sampling and non-maximum suppression, in ``keras.ops`` (every backend).

Boxes are ``[x1, y1, x2, y2]`` in input pixels (torchvision's convention, which the RoI layers
take) unless a name says otherwise; ``yxyx_normalized`` is the TF Object Detection API's and
TFDS's ``[ymin, xmin, ymax, xmax]`` in [0, 1].
"""

from hybrid_keras.detection.anchors import anchor_grid
from hybrid_keras.detection.boxes import (BoxCoder, box_area, box_iou, check_boxes, clip_boxes, from_yxyx_normalized,
                                          to_yxyx_normalized)
from hybrid_keras.detection.evaluation import coco_metrics, voc_average_precision
from hybrid_keras.detection.nms import batched_nms, nms_keep_mask, non_max_suppression
from hybrid_keras.detection.sampling import match_boxes, sample_balanced

__all__ = ["BoxCoder", "anchor_grid", "batched_nms", "box_area", "box_iou", "check_boxes", "clip_boxes",
           "coco_metrics", "from_yxyx_normalized", "match_boxes", "nms_keep_mask", "non_max_suppression",
           "sample_balanced", "to_yxyx_normalized", "voc_average_precision"]
