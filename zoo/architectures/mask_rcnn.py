"""Mask R-CNN on a zoo backbone's stride-16 feature map.

Reference: K. He, G. Gkioxari, P. Dollar, R. Girshick, "Mask R-CNN", ICCV 2017 (RoIAlign and
a mask branch beside Faster R-CNN's box head, a per-class sigmoid mask loss). The model is
:class:`hybrid_keras.detection.MaskRCNN`: the zoo's ``faster_rcnn`` (same backbones, anchors,
RoI head and defaults: :mod:`zoo.architectures.faster_rcnn`) plus torchvision's mask head
(four 3x3 convolutions, a 2x2 transposed convolution, one 28 x 28 mask per class) on one
feature map, no FPN.

Training data: ``hybrid_keras.detection.detection_batches(..., masks=True)`` on TFDS
examples with ``objects/segmentation`` (TFDS ``lvis``, this project's ``coco128``
``instances``). Inference adds ``detection_masks`` ``[B, M, 28, 28]`` (box-relative mask
probabilities) to the TF Object Detection API dictionary; ``paste_masks`` puts them on the
image.
"""

from __future__ import annotations

from zoo.architectures.faster_rcnn import INPUT_SHAPE, _build
from zoo.registry import register_model

MASK_REFERENCE = "He, Gkioxari, Dollar & Girshick, Mask R-CNN, ICCV 2017"


@register_model(
    "mask_rcnn", task="detection", family="rcnn", input_shape=INPUT_SHAPE, reference=MASK_REFERENCE,
    preprocessing="tf",
    description=("Mask R-CNN: Faster R-CNN (RPN + RoIAlign box head on a backbone's stride-16 map) plus a 28x28 "
                 "per-class mask head; returns the TF Object Detection API dictionary with detection_masks"),
    parameters=9_206_256,
    reference_implementation="torchvision MaskRCNN's rules, defaults and mask head on one feature map (no FPN)",
    weights_hint="The backbone's classification weights go in backbone_weights= (e.g. backbone_weights='imagenet')",
)
def mask_rcnn(card, backbone="mobilenet_v2", classes=80, weights=None, backbone_weights=None, input_shape=None,
              include_preprocessing=True, name=None, **kwargs):
    """Build Mask R-CNN: raw RGB images ``[B, H, W, 3]`` at ``input_shape`` -> the TF Object
    Detection API dictionary with ``detection_masks`` (``hybrid_keras.detection.MaskRCNN``).

    Arguments as :func:`zoo.architectures.faster_rcnn.faster_rcnn`'s (RoIAlign in both heads),
    plus the mask head's ``mask_channels`` (256, the paper's) and ``mask_roi_size`` (14: masks of
    28 x 28).
    """
    from hybrid_keras.detection.models import MaskRCNN

    return _build(card, rpn=True, backbone=backbone, classes=classes, weights=weights,
                  backbone_weights=backbone_weights, input_shape=input_shape,
                  include_preprocessing=include_preprocessing, roi_pooling="align", name=name, kwargs=kwargs,
                  detector=MaskRCNN)
