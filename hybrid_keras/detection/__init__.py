"""Detection machinery that is not a layer: box geometry and coding, anchors, matching,
proposal sampling and non-maximum suppression, in ``keras.ops`` (every backend); the Fast /
Faster R-CNN model (:class:`FasterRCNN`, built by ``zoo.load("faster_rcnn")``), Mask R-CNN
(:class:`MaskRCNN`, ``zoo.load("mask_rcnn")``, with :func:`paste_masks`) and their
training data (:func:`detection_batches`, ``tf.data``).

Boxes are ``[x1, y1, x2, y2]`` in input pixels (torchvision's convention, which the RoI layers
take) unless a name says otherwise; ``yxyx_normalized`` is the TF Object Detection API's and
TFDS's ``[ymin, xmin, ymax, xmax]`` in [0, 1].
"""

from hybrid_keras.detection.anchors import anchor_grid
from hybrid_keras.detection.boxes import (BoxCoder, box_area, box_iou, check_boxes, clip_boxes, from_yxyx_normalized,
                                          to_yxyx_normalized)
from hybrid_keras.detection.data import detection_batches, letterbox, restore_boxes
from hybrid_keras.detection.evaluation import coco_metrics, voc_average_precision
from hybrid_keras.detection.masks import paste_masks
from hybrid_keras.detection.models import DETECTION_OUTPUTS, MASK_OUTPUTS, FasterRCNN, MaskRCNN, detect, propose
from hybrid_keras.detection.nms import batched_nms, nms_keep_mask, non_max_suppression
from hybrid_keras.detection.sampling import match_boxes, sample_balanced

__all__ = ["BoxCoder", "DETECTION_OUTPUTS", "FasterRCNN", "MASK_OUTPUTS", "MaskRCNN", "anchor_grid", "batched_nms",
           "box_area", "box_iou", "check_boxes", "clip_boxes", "coco_metrics", "detect", "detection_batches",
           "from_yxyx_normalized", "letterbox", "match_boxes", "nms_keep_mask", "non_max_suppression", "paste_masks",
           "propose", "restore_boxes", "sample_balanced", "to_yxyx_normalized", "voc_average_precision"]
