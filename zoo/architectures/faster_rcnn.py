"""Fast R-CNN and Faster R-CNN on a zoo backbone's stride-16 feature map.

References: R. Girshick, "Fast R-CNN", ICCV 2015 (one shared feature map, RoI max pooling,
softmax classifier and class-specific box regression, proposals from outside); S. Ren, K. He,
R. Girshick, J. Sun, "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
Networks", NeurIPS 2015 (the proposals from a region proposal network with anchors, trained
with the detector). The model is :class:`hybrid_keras.detection.FasterRCNN`; its rules and
defaults are torchvision's ``FasterRCNN`` on one feature map (no FPN).

The backbone is a zoo classifier (``backbone=`` a name of ``zoo.architectures.fcn.BACKBONES``)
cut at stride 16: VGG's last convolution before ``block5_pool`` (the papers' conv5_3) and
MobileNetV2's ``block_12_add`` (96 x alpha channels; the ``mobilenet_v2`` with ``alpha=0.35``
trains on a CPU). Its preprocessing layer is inside, so the model takes raw RGB in [0, 255].
Anchors are centred on each cell's receptive-field centre and RoI pooling is shifted to
match (:func:`zoo.architectures.sint.box_shift`), where torchvision puts anchors on the
cell's top-left pixel.

The input size is fixed when the model is built (``input_shape``, default 320 x 320):
``hybrid_keras.detection.data`` resizes each image so its longer side fits and pads the
rest, and the SavedModel export does the same for images of any size. Outputs are the TF
Object Detection API dictionary (``hybrid_keras.detection.models``), classes 1-based.

Keyword arguments that :class:`~hybrid_keras.detection.FasterRCNN` takes (``anchor_sizes``,
``rpn_post_nms_top_n``, ``max_detections``, ...) go to it; the rest go to the backbone
(``alpha=0.35``).
"""

from __future__ import annotations

import inspect

from zoo import common
from zoo.architectures.fcn import BACKBONES
from zoo.architectures.sint import box_shift
from zoo.lazy import keras
from zoo.registry import load, register_model

FAST_REFERENCE = "Girshick, Fast R-CNN, ICCV 2015"
FASTER_REFERENCE = ("Ren, He, Girshick & Sun, Faster R-CNN: Towards Real-Time Object Detection with Region Proposal "
                    "Networks, NeurIPS 2015")
STRIDE = 16
INPUT_SHAPE = (320, 320, 3)
# The backbone's arguments the detector sets itself.
_TAKEN = {"include_top", "pooling", "input_tensor", "input_shape", "weights", "classes", "classifier_activation",
          "include_preprocessing"}


def _detector_options(detector=None) -> set[str]:
    from hybrid_keras.detection.models import FasterRCNN

    options = set()
    for cls in (detector or FasterRCNN).__mro__:  # a subclass's own options and its parents'
        if "__init__" in vars(cls) and cls.__module__.startswith("hybrid_keras"):
            parameters = inspect.signature(cls.__init__).parameters
            options |= {name for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return options


def stride16_features(model, backbone: str):
    """The stride-16 map of a headless zoo ``backbone`` model: VGG's last conv5 layer (the
    input of ``block5_pool``, the papers' conv5_3), else the backbone's stride-16 tap."""
    spec = BACKBONES[backbone]
    if spec is BACKBONES["vgg16"]:
        return model.get_layer("block5_pool").input
    return model.get_layer(spec.taps[STRIDE]).output


def _build(card, *, rpn: bool, backbone, classes, weights, backbone_weights, input_shape, include_preprocessing,
           roi_pooling, name, kwargs, detector=None):
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}. Received: backbone={backbone!r}")
    input_shape = tuple(input_shape) if input_shape is not None else card.input_shape
    if len(input_shape) != 3 or input_shape[2] != 3 or None in input_shape or min(input_shape[:2]) < 32:
        raise ValueError(f"input_shape must be a fixed (height, width, 3), at least 32 pixels a side (images are "
                         f"resized and padded to it). Received: input_shape={input_shape!r}")
    options = _detector_options(detector)
    taken = sorted((set(kwargs) & _TAKEN) | (set(kwargs) & {"image_shape", "rpn", "feature_stride", "anchor_offset",
                                                             "roi_shift"}))
    if taken:
        raise TypeError(f"{card.name} sets {taken} itself; other keyword arguments go to the detector "
                        f"({', '.join(sorted(options))}) or the backbone")
    detector_kwargs = {k: v for k, v in kwargs.items() if k in options}
    backbone_kwargs = {k: v for k, v in kwargs.items() if k not in options}
    classifier = load(backbone, include_top=False, weights=backbone_weights, input_shape=input_shape,
                      include_preprocessing=include_preprocessing, **backbone_kwargs)
    features = keras.Model(classifier.input, stride16_features(classifier, backbone), name=f"{backbone}_stride{STRIDE}")
    centre = BACKBONES[backbone].centre(classifier, STRIDE)
    from hybrid_keras.detection.models import FasterRCNN

    model = (detector or FasterRCNN)(features, classes, image_shape=input_shape, feature_stride=STRIDE, rpn=rpn,
                                     anchor_offset=centre + 0.5, roi_pooling=roi_pooling,
                                     roi_shift=box_shift(classifier, BACKBONES[backbone], STRIDE),
                                     name=name or f"{card.name}_{backbone}", **detector_kwargs)
    return common.load_weights(model, card, weights, converters={})


@register_model(
    "faster_rcnn", task="detection", family="rcnn", input_shape=INPUT_SHAPE, reference=FASTER_REFERENCE,
    preprocessing="tf",
    description=("Faster R-CNN: region proposal network with anchors + RoIAlign head on a backbone's stride-16 map "
                 "(backbone= mobilenet_v2 or a VGG); returns the TF Object Detection API dictionary"),
    parameters=6_931_616,
    reference_implementation="torchvision FasterRCNN's rules and defaults on one feature map (no FPN)",
    weights_hint="The backbone's classification weights go in backbone_weights= (e.g. backbone_weights='imagenet')",
)
def faster_rcnn(card, backbone="mobilenet_v2", classes=80, weights=None, backbone_weights=None, input_shape=None,
                include_preprocessing=True, roi_pooling="align", name=None, **kwargs):
    """Build Faster R-CNN: raw RGB images ``[B, H, W, 3]`` at ``input_shape`` -> the TF Object
    Detection API dictionary (``hybrid_keras.detection.models``).

    ``classes``: object classes, background not counted (default 80, TFDS ``coco/2017``'s).
    ``weights``: None or a ``.weights.h5`` saved from a model built with the same arguments.
    ``backbone_weights``: None or any weights the backbone takes. ``roi_pooling``: "align"
    (torchvision's RoIAlign) or "max" (the paper's RoI pooling). Other keyword arguments: see
    the module.
    """
    return _build(card, rpn=True, backbone=backbone, classes=classes, weights=weights,
                  backbone_weights=backbone_weights, input_shape=input_shape,
                  include_preprocessing=include_preprocessing, roi_pooling=roi_pooling, name=name, kwargs=kwargs)


@register_model(
    "fast_rcnn", task="detection", family="rcnn", input_shape=INPUT_SHAPE, reference=FAST_REFERENCE,
    preprocessing="tf",
    description=("Fast R-CNN: RoI pooling head on a backbone's stride-16 map over external proposals; inputs images + "
                 "proposals [B, P, 4]; returns the TF Object Detection API dictionary"),
    parameters=6_841_301,
    reference_implementation="torchvision FasterRCNN's RoI head rules, with the paper's RoI max pooling",
    weights_hint="The backbone's classification weights go in backbone_weights= (e.g. backbone_weights='imagenet')",
)
def fast_rcnn(card, backbone="mobilenet_v2", classes=80, weights=None, backbone_weights=None, input_shape=None,
              include_preprocessing=True, roi_pooling="max", name=None, **kwargs):
    """Build Fast R-CNN: ``(images [B, H, W, 3], proposals [B, P, 4])`` -> the TF Object
    Detection API dictionary. Proposals are pixel ``[x1, y1, x2, y2]`` in the (resized, padded)
    input; rows of zero area are padding. Arguments as :func:`faster_rcnn`'s, but RoI max
    pooling by default (the paper's)."""
    return _build(card, rpn=False, backbone=backbone, classes=classes, weights=weights,
                  backbone_weights=backbone_weights, input_shape=input_shape,
                  include_preprocessing=include_preprocessing, roi_pooling=roi_pooling, name=name, kwargs=kwargs)
