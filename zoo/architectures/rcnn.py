"""R-CNN: selective-search proposals, warped crops through a zoo backbone, per-class linear
SVMs (or a decision forest) and box regressors, greedy NMS.

Reference: R. Girshick, J. Donahue, T. Darrell, J. Malik, "Rich feature hierarchies for
accurate object detection and semantic segmentation", CVPR 2014. The pipeline and its
training are :mod:`hybrid_keras.detection.rcnn`; this builder makes the untrained pipeline,
:class:`~hybrid_keras.detection.rcnn.RCNNDetector`, around a zoo classifier cut before its
top and average-pooled (``backbone=`` any registered classification model that takes
``include_top=False, pooling="avg"``: ``mobilenet_v2`` with ``alpha=0.35`` trains on a CPU,
``alexnet`` is the paper's). ``detector.fit(dataset)`` trains it on TFDS-format examples;
``detector.model`` is then the Keras model, ``(images, proposals)`` -> the TF Object
Detection API dictionary.

``weights=``: a ``.weights.h5`` saved from a trained SVM-head ``detector.model`` built with the
same arguments. A forest-head model's layer shapes depend on the trained forest: save it
whole (``detector.model.save("x.keras")``) and load it with ``keras.saving.load_model``.
"""

from __future__ import annotations

from zoo import common
from zoo.registry import get_card, load, register_model

REFERENCE = ("Girshick, Donahue, Darrell & Malik, Rich feature hierarchies for accurate object detection and semantic "
             "segmentation, CVPR 2014")
CROP_SIZE = 224
_DETECTION_OPTIONS = {"score_threshold", "nms_threshold", "detection_candidates", "max_detections"}


@register_model(
    "rcnn", task="detection", family="rcnn", input_shape=(CROP_SIZE, CROP_SIZE, 3), reference=REFERENCE,
    preprocessing="tf",
    description=("R-CNN: selective-search proposals warped through a backbone (backbone= a zoo classifier), per-class "
                 "linear SVMs with hard-negative mining or a decision-forest head (head=), box regression, NMS; "
                 "inputs images + proposals [B, P, 4]; returns the TF Object Detection API dictionary"),
    parameters=2_386_084,  # mobilenet_v2 (alpha 1) features + 20 SVMs + 20 x 4 regressors
    reference_implementation="the paper's pipeline and its authors' defaults (feature norm 20, C 0.001, "
                             "positive weight 2, ridge 1000); SVMs by liblinear's dual coordinate descent",
    weights_hint="The backbone's classification weights go in backbone_weights= (e.g. backbone_weights='imagenet')",
    input_label="images + proposals; crops 224 x 224",
)
def rcnn(card, backbone="mobilenet_v2", classes=20, head="svm", weights=None, backbone_weights=None, crop_size=None,
         include_preprocessing=True, seed=0, **kwargs):
    """Build the untrained R-CNN pipeline (:class:`~hybrid_keras.detection.rcnn.RCNNDetector`).

    ``classes``: object classes, background not counted (default 20, PASCAL VOC's, the
    paper's). ``head``: "svm" or "forest". ``crop_size``: the warped crops' side (default
    224). ``backbone_weights``: any weights the backbone takes. ``score_threshold``,
    ``nms_threshold`` (0.3), ``detection_candidates``, ``max_detections`` go to the detector,
    ``context`` to the crops; other keyword arguments go to the backbone (``alpha=0.35``).
    """
    from hybrid_keras.detection.rcnn import RCNNDetector

    if not isinstance(backbone, str) or get_card(backbone).task != "classification":
        raise ValueError(f"backbone must name a zoo classification model (e.g. 'mobilenet_v2'). "
                         f"Received: backbone={backbone!r}")
    crop_size = CROP_SIZE if crop_size is None else crop_size
    if not isinstance(crop_size, int) or crop_size < 32:
        raise ValueError(f"crop_size must be an int of at least 32 pixels. Received: crop_size={crop_size!r}")
    detector_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in _DETECTION_OPTIONS | {"context"}}
    features = load(backbone, include_top=False, pooling="avg", weights=backbone_weights,
                    input_shape=(crop_size, crop_size, 3), include_preprocessing=include_preprocessing, **kwargs)
    detector = RCNNDetector(features, classes, head=head, seed=seed, **detector_kwargs)
    if weights is not None:
        if detector.model is None:
            raise ValueError("weights= loads an SVM-head R-CNN; a forest-head model is saved and loaded whole "
                             f"(.keras, keras.saving.load_model). Received: head={head!r} with weights")
        common.load_weights(detector.model, card, weights, converters={})
    return detector
