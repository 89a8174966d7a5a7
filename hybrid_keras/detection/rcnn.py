"""R-CNN (Girshick, Donahue, Darrell & Malik, "Rich feature hierarchies for accurate object
detection and semantic segmentation", CVPR 2014): region proposals, each warped to the
network's input size and classified on its own.

The pipeline (built by ``zoo.load("rcnn", ...)``, trained by :meth:`RCNNDetector.fit`):

1. **Proposals**: selective search, "fast" mode (:mod:`hybrid_keras.detection.proposals`), or
   any boxes the caller gives.
2. **Warped crops** (:func:`warp_crops`): each proposal is dilated so that, once warped, it is
   surrounded by ``context`` pixels of image at the paper's 227-pixel crop size (the paper's
   p = 16: the same fraction, 16/227 of the crop on each side, at any crop size), then
   resampled to ``crop_size`` x ``crop_size`` by bilinear interpolation, anisotropically (the
   paper's "warp"). The sample points are those of ``RoIAlign(crop_size, 1, sampling_ratio=1,
   aligned=True)`` on the image, border rule included (a sample within a pixel of the border
   reads the edge, one further out reads 0, i.e. black, where the paper filled with the
   mean); it is written with gathers (four per output pixel) because RoIAlign's matrix form
   costs ``crop_size x H x W`` per crop on a whole image.
3. **Fine-tuning**: the backbone (a zoo classifier without its top, average-pooled) plus a
   softmax over ``classes + 1`` is trained on warped proposals: a proposal whose best IoU
   with a ground-truth box is >= 0.5 takes that box's class, else background; each batch
   holds ``positives_per_batch`` (32) foreground and ``negatives_per_batch`` (96) background
   windows, the paper's 1:3. Ground-truth boxes count as proposals here. The background
   windows come from a fixed random subset of each image's background proposals
   (``negatives_per_image``), warped once and kept as uint8.
4. **SVMs**: per class, a linear SVM on the fine-tuned network's pooled features
   (:mod:`hybrid_keras.detection.svm`: dual coordinate descent, hard-negative mining):
   positives are the class's ground-truth boxes only, negatives the proposals with IoU < 0.3
   with every box of the class. Features are scaled so their mean L2 norm is 20, as the
   authors' code does, which sets the scale of ``C`` (0.001) and of the ridge penalty.
   With ``head="forest"`` a decision forest (:func:`hybrid_keras.forest.train_forest`,
   YDF / TF-DF) is trained instead on the same rows: every class's ground truth (label
   ``k + 1``) and the union of the SVMs' final hard-negative caches (label 0); its class
   probability is the score.
5. **Box regression** (the paper's appendix C): per class, ridge regression (lambda 1000)
   from the scaled features of proposals with IoU >= 0.6 with one of the class's boxes to
   that box's R-CNN coding (``BoxCoder`` with unit weights).
6. **Detection**: every (proposal, class) pair is scored (SVM margin, or forest probability),
   its box regressed and clipped, and greedy NMS at IoU 0.3 runs per class.

The trained detector is a Keras model, :class:`RCNN`: ``(images [B, H, W, 3] raw RGB,
proposals [B, P, 4] pixel [x1, y1, x2, y2], rows of zero area are padding)`` -> the TF Object
Detection API dictionary (``detection_boxes`` normalised ``[ymin, xmin, ymax, xmax]``,
``detection_scores``, ``detection_classes`` 1-based, ``num_detections``, padded to
``max_detections``), as ``hybrid_keras.detection.models`` returns it. The SVMs are a Dense
layer (the feature scale folded into its weights), the regressors another, the forest a
:class:`~hybrid_keras.forest.ForestLayer`: ``.keras`` files round-trip and it runs on every
backend. With ``head="svm"`` the scores are SVM margins (any real; R-CNN reports those), not
probabilities.
"""

from __future__ import annotations

import time

import keras
import numpy as np
from keras import ops

from hybrid_keras.detection.boxes import BoxCoder, box_iou, check_boxes, clip_boxes, to_yxyx_normalized
from hybrid_keras.detection.nms import nms_keep_mask
from hybrid_keras.detection.svm import fit_ridge, train_svm_hard_negatives

HEADS = ("svm", "forest")
PAPER_CROP = 227
PAPER_CONTEXT = 16.0
FEATURE_NORM = 20.0
REGRESSION_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
_DROPPED = -1.0e30


# ---------------------------------------------------------------------------------------- crops


def dilate_boxes(boxes, context: float = PAPER_CONTEXT, reference_size: int = PAPER_CROP):
    """Grow ``[..., 4]`` boxes about their centres so that, warped to ``reference_size``, the
    original box is surrounded by ``context`` pixels (the paper's p = 16 at 227)."""
    if not 0 <= 2 * context < reference_size:
        raise ValueError(f"context must be >= 0 and under half of reference_size ({reference_size}). Received: "
                         f"context={context!r}")
    boxes = ops.cast(boxes, "float32")
    factor = reference_size / (reference_size - 2.0 * context)
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    half_w, half_h = (boxes[..., 2] - boxes[..., 0]) * factor / 2, (boxes[..., 3] - boxes[..., 1]) * factor / 2
    return ops.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1)


def _axis_samples(start, end, size: int, extent):
    """Per box, the ``size`` sample coordinates along one axis (pixel-index units: pixel k's
    centre is k) -> ``(low, high, fraction, inside)``, RoIAlign's border rule."""
    steps = (ops.arange(size, dtype="float32") + 0.5) / size
    coords = start[:, None] + steps[None, :] * (end - start)[:, None] - 0.5  # [R, size]
    last = ops.cast(extent, "float32") - 1.0
    inside = (coords >= -1.0) & (coords <= last + 1.0)
    clamped = ops.clip(coords, 0.0, last)
    low = ops.floor(clamped)
    high = ops.minimum(low + 1.0, last)
    return ops.cast(low, "int32"), ops.cast(high, "int32"), clamped - low, inside


def warp_crops(images, boxes, box_images, size: int, *, context: float = PAPER_CONTEXT,
               reference_size: int = PAPER_CROP):
    """R-CNN's warped region crops: ``images [B, H, W, C]``, ``boxes [R, 4]`` pixel
    ``[x1, y1, x2, y2]``, ``box_images [R]`` (which image each box is in) -> ``[R, size, size,
    C]`` float32 (see the module for the dilation and the sample points; ``context=0`` crops
    the box itself). Runs on every backend; no gradient reaches the boxes."""
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int (the crop's side in pixels). Received: size={size!r}")
    images = ops.cast(ops.convert_to_tensor(images), "float32")
    if len(images.shape) != 4:
        raise ValueError(f"images must be [B, H, W, C]. Received: shape {tuple(images.shape)}")
    boxes = ops.stop_gradient(ops.cast(boxes, "float32"))
    if context:
        boxes = dilate_boxes(boxes, context, reference_size)
    shape = ops.shape(images)
    height, width, channels = shape[1], shape[2], images.shape[3]
    y_low, y_high, fy, inside_y = _axis_samples(boxes[:, 1], boxes[:, 3], size, height)
    x_low, x_high, fx, inside_x = _axis_samples(boxes[:, 0], boxes[:, 2], size, width)
    base = ops.cast(box_images, "int32")[:, None, None] * (height * width)  # [R, 1, 1]
    flat = ops.reshape(images, (-1, channels))

    def read(rows, cols):  # [R, size] each -> [R, size, size, C]
        index = base + rows[:, :, None] * width + cols[:, None, :]
        return ops.reshape(ops.take(flat, ops.reshape(index, (-1,)), axis=0), (-1, size, size, channels))

    fx, fy = fx[:, None, :, None], fy[:, :, None, None]
    top = read(y_low, x_low) * (1.0 - fx) + read(y_low, x_high) * fx
    bottom = read(y_high, x_low) * (1.0 - fx) + read(y_high, x_high) * fx
    crops = top * (1.0 - fy) + bottom * fy
    inside = ops.cast(inside_y[:, :, None] & inside_x[:, None, :], "float32")[..., None]
    return crops * inside


# ---------------------------------------------------------------------------------------- model


def select_detections(boxes, scores, valid, *, height, width, score_threshold=None, nms_threshold: float = 0.3,
                      candidates: int = 1000, max_detections: int = 100, min_size: float = 1e-2):
    """The TF Object Detection API dictionary from per-class boxes ``[B, P, K, 4]`` (pixels)
    and scores ``[B, P, K]`` of proposals ``valid [B, P]``: candidates below ``score_threshold``
    (None: none), under ``min_size`` pixels or from padding drop out; of the rest the
    ``candidates`` best go through greedy NMS per class (each class's boxes moved beyond the
    previous class's) and the ``max_detections`` best survivors are returned, zero-padded."""
    count, classes = boxes.shape[1], boxes.shape[2]
    total = count * classes
    boxes = ops.reshape(boxes, (-1, total, 4))
    scores = ops.reshape(ops.cast(scores, "float32"), (-1, total))
    labels = ops.reshape(ops.broadcast_to(ops.arange(1, classes + 1, dtype="int32"), (count, classes)), (1, total))
    labels = ops.broadcast_to(labels, ops.shape(scores))
    usable = ops.reshape(ops.broadcast_to(ops.cast(valid, "bool")[..., None], (*ops.shape(valid), classes)),
                         (-1, total))
    usable = usable & ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
    if score_threshold is not None:
        usable = usable & (scores > score_threshold)
    scores = ops.where(usable, scores, _DROPPED)
    candidates = min(candidates, total)
    scores, order = ops.top_k(scores, candidates)
    boxes = ops.take_along_axis(boxes, ops.broadcast_to(order[..., None], (*ops.shape(order), 4)), axis=1)
    labels = ops.take_along_axis(labels, order, axis=1)
    side = ops.maximum(ops.cast(height, "float32"), ops.cast(width, "float32")) + 1.0
    kept = nms_keep_mask(boxes + ops.cast(labels, "float32")[..., None] * side, scores, nms_threshold)
    kept = kept & (scores > _DROPPED)
    shown = min(max_detections, candidates)
    scores, best = ops.top_k(ops.where(kept, scores, _DROPPED), shown)
    present = scores > _DROPPED
    boxes = ops.take_along_axis(boxes, ops.broadcast_to(best[..., None], (*ops.shape(best), 4)), axis=1)
    boxes = ops.where(present[..., None], to_yxyx_normalized(boxes, height, width), 0.0)
    labels = ops.where(present, ops.take_along_axis(labels, best, axis=1), 0)
    scores = ops.where(present, scores, 0.0)
    if shown < max_detections:
        pad = max_detections - shown
        boxes = ops.pad(boxes, [[0, 0], [0, pad], [0, 0]])
        scores, labels = ops.pad(scores, [[0, 0], [0, pad]]), ops.pad(labels, [[0, 0], [0, pad]])
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": ops.cast(labels, "float32"),
            "num_detections": ops.sum(ops.cast(present, "float32"), axis=1)}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class RCNN(keras.Model):
    """A trained R-CNN: ``(images, proposals)`` -> the TF Object Detection API dictionary.

    Args:
        backbone: a Keras model from raw RGB crops ``[N, S, S, 3]`` in [0, 255] to pooled
            features ``[N, F]`` (its preprocessing inside).
        classes: object classes (background not counted).
        head: "svm" (a Dense layer of per-class SVM margins) or "forest" (``forest``, a
            :class:`~hybrid_keras.forest.ForestLayer` of ``classes + 1`` probabilities, column
            0 background).
        context, reference_size: the crops' dilation (:func:`warp_crops`).
        score_threshold, nms_threshold, detection_candidates, max_detections:
            :func:`select_detections` (R-CNN: NMS at 0.3).
    """

    task = "detection"

    def __init__(self, backbone, classes: int, *, head: str = "svm", forest=None, context: float = PAPER_CONTEXT,
                 reference_size: int = PAPER_CROP, score_threshold=None, nms_threshold: float = 0.3,
                 detection_candidates: int = 1000, max_detections: int = 100, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classes, int) or classes < 1:
            raise ValueError(f"classes must be a positive int (background not counted). Received: classes={classes!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}. Received: head={head!r}")
        for name, value in (("max_detections", max_detections), ("detection_candidates", detection_candidates)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
        crop_shape = tuple(backbone.inputs[0].shape[1:])
        if len(crop_shape) != 3 or crop_shape[0] is None or crop_shape[0] != crop_shape[1]:
            raise ValueError(f"backbone must take square crops of a fixed size [N, S, S, 3]. Received: input shape "
                             f"{crop_shape}")
        feature_shape = tuple(backbone.outputs[0].shape[1:])
        if len(feature_shape) != 1:
            raise ValueError(f"backbone must return pooled features [N, F]. Received: output shape {feature_shape}")
        if head == "forest":
            from hybrid_keras.forest import ForestLayer

            if not isinstance(forest, ForestLayer) or forest.output_width != classes + 1:
                raise ValueError(f"head='forest' needs forest=, a ForestLayer of {classes + 1} class probabilities "
                                 f"(background first). Received: {forest!r}")
        elif forest is not None:
            raise ValueError(f"forest= goes with head='forest'. Received: head={head!r} and a forest")
        self.backbone = backbone
        self.classes = classes
        self.head = head
        self.crop_size = int(crop_shape[0])
        self.feature_size = int(feature_shape[0])
        self.context = float(context)
        self.reference_size = int(reference_size)
        dilate_boxes(np.zeros((1, 4), np.float32), self.context, self.reference_size)  # checks context
        self.score_threshold = None if score_threshold is None else float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.detection_candidates = detection_candidates
        self.max_detections = max_detections
        self.svm = keras.layers.Dense(classes, kernel_initializer="zeros", name="svm") if head == "svm" else None
        self.forest = forest
        self.box_regressor = keras.layers.Dense(4 * classes, kernel_initializer="zeros", name="box_regressor")
        for layer in (self.svm, self.forest, self.box_regressor):
            if layer is not None and not layer.built:
                layer.build((None, self.feature_size))
        self.built = True

    def _split(self, inputs):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("R-CNN takes (images [B, H, W, 3], proposals [B, P, 4]). Received: "
                             f"{type(inputs).__name__}")
        images, proposals = (ops.convert_to_tensor(x) for x in inputs)
        if len(images.shape) != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3] raw RGB. Received: shape {tuple(images.shape)}")
        if len(proposals.shape) != 3 or proposals.shape[-1] != 4 or proposals.shape[1] is None:
            raise ValueError(f"proposals must be [B, P, 4] pixel [x1, y1, x2, y2] with a fixed P. Received: shape "
                             f"{tuple(proposals.shape)}")
        return images, proposals

    def scores_and_boxes(self, images, proposals):
        """Per proposal and class: ``(scores [B, P, K], boxes [B, P, K, 4] regressed, clipped,
        pixels, valid [B, P])``."""
        shape = ops.shape(images)
        height, width = shape[1], shape[2]
        count = proposals.shape[1]
        proposals = ops.cast(proposals, "float32")
        valid = ((proposals[..., 2] - proposals[..., 0]) > 0) & ((proposals[..., 3] - proposals[..., 1]) > 0)
        flat = clip_boxes(ops.reshape(proposals, (-1, 4)), height, width)
        index = ops.repeat(ops.arange(shape[0], dtype="int32"), count)
        crops = warp_crops(images, flat, index, self.crop_size, context=self.context,
                           reference_size=self.reference_size)
        features = self.backbone(crops, training=False)
        scores = self.svm(features) if self.head == "svm" else self.forest(features)[:, 1:]
        # Padding rows have no area; give them a unit box so decoding stays finite.
        references = ops.where(ops.reshape(valid, (-1, 1)), flat, ops.convert_to_tensor([[0.0, 0.0, 1.0, 1.0]]))
        boxes = BoxCoder(REGRESSION_WEIGHTS).decode(self.box_regressor(features), references)
        boxes = clip_boxes(ops.reshape(boxes, (-1, count, self.classes, 4)), height, width)
        return ops.reshape(scores, (-1, count, self.classes)), boxes, valid

    def call(self, inputs, training=False):
        images, proposals = self._split(inputs)
        scores, boxes, valid = self.scores_and_boxes(images, proposals)
        shape = ops.shape(images)
        return select_detections(boxes, scores, valid, height=shape[1], width=shape[2],
                                 score_threshold=self.score_threshold, nms_threshold=self.nms_threshold,
                                 candidates=self.detection_candidates, max_detections=self.max_detections)

    def get_config(self):
        return {
            "name": self.name, "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "classes": self.classes, "head": self.head,
            "forest": None if self.forest is None else keras.saving.serialize_keras_object(self.forest),
            "context": self.context, "reference_size": self.reference_size, "score_threshold": self.score_threshold,
            "nms_threshold": self.nms_threshold, "detection_candidates": self.detection_candidates,
            "max_detections": self.max_detections,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("forest") is not None:
            config["forest"] = keras.saving.deserialize_keras_object(config["forest"])
        return cls(**config)


# ---------------------------------------------------------------------------------------- training


def _examples(dataset):
    """Yields numpy ``(image [H, W, 3], boxes [G, 4] normalised yxyx, labels [G])`` from TFDS-format examples."""
    iterator = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for example in iterator:
        objects = example["objects"] if "objects" in example else {"bbox": example["objects/bbox"],
                                                                    "label": example["objects/label"]}
        yield np.asarray(example["image"]), np.asarray(objects["bbox"], np.float32), np.asarray(objects["label"])


def _ground_truth(image, bbox, labels, classes: int, index: int):
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image {index} must be RGB [H, W, 3]. Received: shape {image.shape}")
    height, width = image.shape[:2]
    bbox = bbox.reshape(-1, 4)
    labels = labels.reshape(-1)
    if len(labels) != len(bbox):
        raise ValueError(f"image {index}: objects/bbox and objects/label differ in length. Received: {len(bbox)} "
                         f"boxes and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"objects/label must be in [0, {classes}) (classes={classes}). Received: labels "
                         f"{sorted(set(labels.tolist()))} in image {index}")
    boxes = check_boxes(bbox[:, [1, 0, 3, 2]] * np.float32([width, height, width, height]),
                        f"objects/bbox of image {index}")
    return boxes, labels.astype(np.int64)


def _iou(a, b) -> np.ndarray:
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), np.float32)
    return ops.convert_to_numpy(box_iou(np.asarray(a, np.float32), np.asarray(b, np.float32)))


class RCNNDetector:
    """The R-CNN pipeline around a backbone: :meth:`fit` trains it, :attr:`model` (an
    :class:`RCNN`) runs it. Built by ``zoo.load("rcnn", ...)`` (see the module).

    Args:
        backbone: crops ``[N, S, S, 3]`` raw RGB -> pooled features ``[N, F]``; fine-tuned by
            :meth:`fit` (a zoo classifier with ``include_top=False, pooling="avg"``).
        classes: object classes (background not counted).
        head: "svm" or "forest".
        context, reference_size: the crops' dilation (:func:`warp_crops`).
        seed: the samplers' and solvers' seed.
        **detection: :class:`RCNN`'s ``score_threshold``, ``nms_threshold``,
            ``detection_candidates``, ``max_detections``.
    """

    def __init__(self, backbone, classes: int, *, head: str = "svm", context: float = PAPER_CONTEXT,
                 reference_size: int = PAPER_CROP, seed: int = 0, **detection):
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}. Received: head={head!r}")
        self.backbone = backbone
        self.classes = classes
        self.head = head
        self.context = float(context)
        self.reference_size = int(reference_size)
        self.seed = int(seed)
        self.detection = dict(detection)
        self.crop_size = int(backbone.inputs[0].shape[1])
        # The SVM head's model exists before training (its layers have fixed shapes, so weights
        # files load into it); the forest's shape is known only once the forest is trained.
        self.model = self._build(None) if head == "svm" else None
        self.history: dict = {}

    def _build(self, forest):
        return RCNN(self.backbone, self.classes, head=self.head, forest=forest, context=self.context,
                    reference_size=self.reference_size, name=f"rcnn_{self.head}_{self.backbone.name}", **self.detection)

    # ------------------------------------------------------------------ pieces

    def crops(self, image, boxes) -> np.ndarray:
        """Warped crops of ``boxes [N, 4]`` (pixels) in one ``image [H, W, 3]``: float32 ``[N, S, S, 3]``."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        if not len(boxes):
            return np.zeros((0, self.crop_size, self.crop_size, 3), np.float32)
        crops = warp_crops(np.asarray(image, np.float32)[None], boxes, np.zeros(len(boxes), np.int32), self.crop_size,
                           context=self.context, reference_size=self.reference_size)
        return ops.convert_to_numpy(crops)

    def features(self, image, boxes, batch_size: int = 256) -> np.ndarray:
        """The backbone's pooled features ``[N, F]`` of ``boxes`` in ``image`` (inference mode)."""
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        out = []
        for start in range(0, len(boxes), batch_size):
            crops = self.crops(image, boxes[start:start + batch_size])
            out.append(ops.convert_to_numpy(self.backbone(crops, training=False)))
        feature_size = self.backbone.outputs[0].shape[-1]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, feature_size), np.float32)

    # ------------------------------------------------------------------ training

    def fit(self, dataset, *, proposals=None, proposal_mode: str = "fast", max_proposals: int = 2000,
            finetune_steps: int = 200, positives_per_batch: int = 32, negatives_per_batch: int = 96,
            negatives_per_image: int = 64, optimizer=None, svm_rounds: int = 3, initial_negatives: int = 1000,
            svm_C: float = 1e-3, positive_weight: float = 2.0, bias_scale: float = 10.0, ridge_lambda: float = 1000.0,
            regression_iou: float = 0.6, forest_backend: str = "ydf", forest_options=None, verbose: int = 1) -> dict:
        """Train R-CNN (steps 3-5 of the module) on TFDS-format detection examples.

        Args:
            dataset: a ``tf.data.Dataset`` or an iterable of dicts with ``image`` uint8
                ``[H, W, 3]``, ``objects`` ``{"bbox": [G, 4] normalised [ymin, xmin, ymax,
                xmax], "label": [G] 0-based}`` (TFDS's features; unbatched).
            proposals: optional list, per example, of pixel ``[x1, y1, x2, y2]`` boxes; default
                :func:`~hybrid_keras.detection.proposals.selective_search` (``proposal_mode``,
                ``max_proposals``) on each image.
            finetune_steps: fine-tuning batches (0 keeps the backbone as it is), each of
                ``positives_per_batch`` foreground and ``negatives_per_batch`` background crops.
            negatives_per_image: background proposals per image kept for fine-tuning.
            optimizer: for fine-tuning (default Adam 1e-3: the paper's SGD at 0.001 assumes an
                ImageNet-trained network).
            svm_rounds, initial_negatives, svm_C, positive_weight, bias_scale: the SVMs'
                hard-negative mining and solver (:func:`~hybrid_keras.detection.svm.train_svm_hard_negatives`).
            ridge_lambda, regression_iou: the box regressors.
            forest_backend, forest_options: ``head="forest"``: :func:`~hybrid_keras.forest.train_forest`'s
                ``backend`` ("ydf" or "tfdf") and other arguments (default 100 trees, depth 16).

        Returns the training record (also :attr:`history`): counts, per-stage seconds, the
        fine-tuning losses, the hard-negative rounds per class.
        """
        from hybrid_keras.detection.proposals import selective_search

        rng = np.random.default_rng(self.seed)
        record = {"seconds": {}}
        start = time.perf_counter()
        images, truths = [], []
        for index, (image, bbox, labels) in enumerate(_examples(dataset)):
            boxes, labels = _ground_truth(image, bbox, labels, self.classes, index)
            images.append(image)
            truths.append((boxes, labels))
        if not images:
            raise ValueError("dataset must hold at least one example. Received: an empty dataset")
        if proposals is not None and len(proposals) != len(images):
            raise ValueError(f"proposals must hold one box array per example ({len(images)}). Received: "
                             f"{len(proposals)} arrays")
        boxes_per_image = []
        for index, image in enumerate(images):
            if proposals is None:
                found = selective_search(image, proposal_mode, max_proposals)
            else:
                found = check_boxes(proposals[index], f"proposals of image {index}", image_size=image.shape[:2])
            if not len(found):
                raise ValueError(f"proposals of image {index} are empty: R-CNN needs at least one proposal per image. "
                                 "Received: 0 boxes")
            boxes_per_image.append(found)
        record["seconds"]["proposals"] = time.perf_counter() - start
        record["images"] = len(images)
        record["proposals_per_image"] = float(np.mean([len(b) for b in boxes_per_image]))

        if finetune_steps:
            start = time.perf_counter()
            record["finetune"] = self._finetune(images, truths, boxes_per_image, rng, steps=finetune_steps,
                                                positives=positives_per_batch, negatives=negatives_per_batch,
                                                negatives_per_image=negatives_per_image, optimizer=optimizer,
                                                verbose=verbose)
            record["seconds"]["finetune"] = time.perf_counter() - start

        start = time.perf_counter()
        positives = [[] for _ in range(self.classes)]
        negatives = [[] for _ in range(self.classes)]
        regression = [([], []) for _ in range(self.classes)]
        coder = BoxCoder(REGRESSION_WEIGHTS)
        for image, (gt, labels), found in zip(images, truths, boxes_per_image):
            features = self.features(image, np.concatenate([gt, found]))
            gt_features, features = features[:len(gt)], features[len(gt):]
            iou = _iou(found, gt)  # [P, G]
            for k in range(self.classes):
                mine = labels == k
                positives[k].append(gt_features[mine])
                best = iou[:, mine].max(axis=1) if mine.any() else np.zeros(len(found), np.float32)
                negatives[k].append(features[best < 0.3])
                if mine.any():
                    chosen = best >= regression_iou
                    if chosen.any():
                        matched = gt[mine][iou[:, mine].argmax(axis=1)[chosen]]
                        regression[k][0].append(features[chosen])
                        regression[k][1].append(ops.convert_to_numpy(coder.encode(matched, found[chosen])))
        positives = [np.concatenate(p) for p in positives]
        negatives = [np.concatenate(n) for n in negatives]
        every = np.concatenate(positives + negatives)
        scale = FEATURE_NORM / max(float(np.mean(np.linalg.norm(every, axis=1))), 1e-12)
        record["seconds"]["features"] = time.perf_counter() - start
        record["feature_scale"] = scale

        start = time.perf_counter()
        svm_kernel = np.zeros((every.shape[1], self.classes), np.float32)
        svm_bias = np.zeros(self.classes, np.float32)
        caches, record["hard_negatives"] = [], []
        for k in range(self.classes):
            if not len(positives[k]) or not len(negatives[k]):
                raise ValueError(f"class {k} has {len(positives[k])} ground-truth boxes and {len(negatives[k])} "
                                 "negative proposals in the dataset; the SVMs need both. Received: a dataset "
                                 "without them")
            svm, cache, history = train_svm_hard_negatives(
                positives[k] * scale, negatives[k] * scale, rounds=svm_rounds, initial_negatives=initial_negatives,
                seed=self.seed + k, C=svm_C, positive_weight=positive_weight, bias_scale=bias_scale)
            svm_kernel[:, k], svm_bias[k] = svm.weights * scale, svm.bias
            caches.append(negatives[k][cache])
            record["hard_negatives"].append(history)
            if verbose:
                print(f"[rcnn] class {k}: SVM on {len(positives[k])} positives, hard-negative rounds "
                      f"{[h['negatives'] for h in history]} negatives", flush=True)
        record["seconds"]["svm"] = time.perf_counter() - start

        forest = None
        if self.head == "forest":
            start = time.perf_counter()
            forest, record["forest_rows"] = self._train_forest(positives, caches, forest_backend, forest_options,
                                                               verbose)
            record["seconds"]["forest"] = time.perf_counter() - start

        start = time.perf_counter()
        reg_kernel = np.zeros((every.shape[1], 4 * self.classes), np.float32)
        reg_bias = np.zeros(4 * self.classes, np.float32)
        record["regression_examples"] = []
        for k, (feats, targets) in enumerate(regression):
            record["regression_examples"].append(int(sum(map(len, feats))))
            if feats:
                weights, bias = fit_ridge(np.concatenate(feats) * scale, np.concatenate(targets), lam=ridge_lambda)
                reg_kernel[:, 4 * k:4 * k + 4], reg_bias[4 * k:4 * k + 4] = weights * scale, bias
        record["seconds"]["regression"] = time.perf_counter() - start

        if self.model is None or self.head == "forest":
            self.model = self._build(forest)
        if self.head == "svm":
            self.model.svm.set_weights([svm_kernel, svm_bias])
        self.model.box_regressor.set_weights([reg_kernel, reg_bias])
        record["positives"] = [int(len(p)) for p in positives]
        record["negatives"] = [int(len(n)) for n in negatives]
        self.history = record
        # What a forest head trained later on the same rows needs (forest_detector).
        self.training_rows = {"positives": positives, "hard_negatives": caches, "regressor": (reg_kernel, reg_bias)}
        return record

    def _train_forest(self, positives, caches, backend, options, verbose):
        from hybrid_keras.forest import ForestLayer, train_forest

        rows = np.concatenate(positives + caches)
        labels = np.concatenate([np.full(len(p), k + 1) for k, p in enumerate(positives)] +
                                [np.zeros(len(c)) for c in caches]).astype(np.int64)
        options = {"num_trees": 100, "max_depth": 16, **(options or {})}
        trained = train_forest(rows, labels, backend=backend, verbose=min(verbose, 1), **options)
        forest = ForestLayer.from_model(trained, num_classes=self.classes + 1, name="forest")
        counts = {"positives": int(sum(map(len, positives))), "negatives": int(sum(map(len, caches)))}
        return forest, counts

    def forest_detector(self, *, forest_backend: str = "ydf", forest_options=None, verbose: int = 1):
        """A forest-head R-CNN trained on this (fitted SVM-head) detector's rows: the same
        backbone (shared, not copied), the same ground-truth features and final hard-negative
        caches, the same box regressors; only the head differs. Its :attr:`history` records
        the forest's training seconds."""
        if not getattr(self, "training_rows", None):
            raise ValueError("forest_detector() needs a fitted detector: call fit() first. Received: an unfitted one")
        other = RCNNDetector(self.backbone, self.classes, head="forest", context=self.context,
                             reference_size=self.reference_size, seed=self.seed, **self.detection)
        start = time.perf_counter()
        rows = self.training_rows
        forest, counts = other._train_forest(rows["positives"], rows["hard_negatives"], forest_backend,
                                             forest_options, verbose)
        other.model = other._build(forest)
        other.model.box_regressor.set_weights(list(rows["regressor"]))
        other.training_rows = rows
        other.history = {"seconds": {"forest": time.perf_counter() - start}, "forest_rows": counts}
        return other

    def _finetune(self, images, truths, boxes_per_image, rng, *, steps, positives, negatives, negatives_per_image,
                  optimizer, verbose):
        crops, labels = [], []
        for image, (gt, gt_labels), found in zip(images, truths, boxes_per_image):
            candidates = np.concatenate([gt, found])
            iou = _iou(candidates, gt)
            if len(gt):
                label = np.where(iou.max(axis=1) >= 0.5, gt_labels[iou.argmax(axis=1)] + 1, 0)
            else:
                label = np.zeros(len(candidates), np.int64)
            background = np.flatnonzero(label == 0)
            keep = np.concatenate([np.flatnonzero(label > 0),
                                   rng.choice(background, min(negatives_per_image, len(background)), replace=False)])
            warped = self.crops(image, candidates[keep])
            crops.append(np.clip(np.round(warped), 0, 255).astype(np.uint8))
            labels.append(label[keep])
        crops, labels = np.concatenate(crops), np.concatenate(labels)
        foreground, background = np.flatnonzero(labels > 0), np.flatnonzero(labels == 0)
        if not len(foreground) or not len(background):
            raise ValueError(f"fine-tuning needs foreground and background windows; found {len(foreground)} and "
                             f"{len(background)}. Received: proposals that never (or always) overlap the ground truth")
        inputs = keras.Input(self.backbone.inputs[0].shape[1:])
        logits = keras.layers.Dense(self.classes + 1, name="finetune_logits")(self.backbone(inputs))
        classifier = keras.Model(inputs, logits, name="rcnn_finetune")
        classifier.compile(optimizer or keras.optimizers.Adam(1e-3),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        losses, accuracy = [], []
        for step in range(steps):
            chosen = np.concatenate([rng.choice(foreground, positives, replace=len(foreground) < positives),
                                     rng.choice(background, negatives, replace=len(background) < negatives)])
            loss, acc = classifier.train_on_batch(crops[chosen].astype(np.float32), labels[chosen], return_dict=False)
            losses.append(float(loss))
            accuracy.append(float(acc))
            if verbose and (step + 1) % max(1, steps // 10) == 0:
                print(f"[rcnn] fine-tuning step {step + 1}/{steps}: loss {np.mean(losses[-20:]):.3f}", flush=True)
        return {"steps": steps, "windows": {"foreground": int(len(foreground)), "background": int(len(background))},
                "loss": losses, "accuracy": accuracy}

    # ------------------------------------------------------------------ inference

    def detect(self, image, proposals=None, *, proposal_mode: str = "fast", max_proposals: int = 2000) -> dict:
        """Detections (numpy, the TF OD API dictionary without the batch axis) in one image of
        any size, from ``proposals`` or selective search."""
        from hybrid_keras.detection.proposals import selective_search

        if self.model is None:
            raise ValueError("this R-CNN is not trained yet: call fit() first. Received: an untrained forest head")
        image = np.asarray(image)
        if proposals is None:
            proposals = selective_search(image, proposal_mode, max_proposals)
        proposals = check_boxes(proposals, "proposals", image_size=image.shape[:2])
        if not len(proposals):
            raise ValueError("proposals must hold at least one box. Received: 0 boxes")
        outputs = self.model((image[None].astype(np.float32), proposals[None]))
        return {name: ops.convert_to_numpy(value)[0] for name, value in outputs.items()}
