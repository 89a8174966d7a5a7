"""Fast R-CNN and Faster R-CNN as one Keras model class, trained with plain ``model.fit``.

References: R. Girshick, "Fast R-CNN", ICCV 2015; S. Ren, K. He, R. Girshick, J. Sun, "Faster
R-CNN: Towards Real-Time Object Detection with Region Proposal Networks", NeurIPS 2015. The
defaults and rules are torchvision's ``FasterRCNN`` (one feature map, no FPN).

:class:`FasterRCNN` takes a backbone (any Keras model from images to one feature map, with its
preprocessing inside) and adds

- with ``rpn=True`` (Faster R-CNN), a region proposal network: a 3x3 convolution, then per
  anchor an objectness logit and box deltas; :func:`propose` turns them into proposals
  (decode, clip, drop tiny boxes, top-k before NMS, NMS, top-k after);
- with ``rpn=False`` (Fast R-CNN), proposals come in as a second input ``[B, P, 4]`` (pixel
  ``[x1, y1, x2, y2]``; rows of zero area are padding);
- the RoI head: RoIAlign (or the papers' RoI max pooling) of each proposal, two fully
  connected layers, a softmax over ``classes + 1`` (0 is background) and class-specific box
  deltas; :func:`detect` decodes them per class, drops scores at or below a threshold,
  runs NMS per class (one pass, boxes of each class moved apart) and keeps the best
  ``max_detections``.

Every shape is static, so the model compiles (XLA, ``tf.function``) and exports.

Inference (``model(images)``, ``predict``) returns the TF Object Detection API dictionary,
padded to ``max_detections``: ``detection_boxes`` float32 ``[B, M, 4]`` normalised
``[ymin, xmin, ymax, xmax]`` of the model's input image, ``detection_scores`` float32
``[B, M]``, ``detection_classes`` float32 ``[B, M]`` 1-based as the TF OD API's label maps (a
dataset's 0-based label ``l`` is class ``l + 1``; 0 on padding rows) and ``num_detections``
float32 ``[B]``.

Training: ``model.compile(optimizer)`` and ``model.fit`` on batches ``(images, {"boxes": [B,
G, 4] pixels, "labels": [B, G] with -1 padding})``. :meth:`FasterRCNN.compute_loss` assigns
targets inside the step (``hybrid_keras.detection.targets``) and returns the sum of the four
losses, each also reported as a metric. Training is torchvision's approximate joint training:
no gradient flows through the proposals' coordinates.

:class:`MaskRCNN` (He et al., ICCV 2017) adds a mask branch: a fifth loss, ``y["masks"]`` in
training and ``detection_masks`` at inference.
"""

from __future__ import annotations

import keras
from keras import ops

from hybrid_keras.detection.anchors import anchor_grid
from hybrid_keras.detection.boxes import BoxCoder, clip_boxes, to_yxyx_normalized
from hybrid_keras.detection.nms import nms_keep_mask
from hybrid_keras.detection.targets import (anchor_targets, batched_take, class_masks, head_losses, mask_loss,
                                            mask_targets, proposal_targets, rpn_losses)
from hybrid_keras.layers.roi import RoIAlign, RoIPooling

DETECTION_OUTPUTS = ("detection_boxes", "detection_scores", "detection_classes", "num_detections")
MASK_OUTPUTS = DETECTION_OUTPUTS + ("detection_masks",)
RPN_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
HEAD_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
ROI_POOLINGS = ("align", "max")
_DROPPED = -1.0e30  # the score of a box that is out (tiny, suppressed, padding)


def propose(objectness, deltas, anchors, *, image_size, pre_nms_top_n: int, post_nms_top_n: int,
            nms_threshold: float = 0.7, min_size: float = 1e-3):
    """Proposals from RPN outputs: objectness logits ``[B, N]``, deltas ``[B, N, 4]`` from ``anchors [N, 4]``.

    Takes the ``pre_nms_top_n`` best-scored anchors, decodes their boxes (weights 1), clips them
    to ``image_size = (height, width)``, drops boxes under ``min_size`` pixels on a side, runs
    NMS at ``nms_threshold`` and keeps the ``post_nms_top_n`` best: ``(boxes [B, post, 4],
    valid [B, post])``; rows past the survivors are not valid (their boxes are whatever
    remained). No gradient flows back.
    """
    objectness = ops.stop_gradient(ops.convert_to_tensor(objectness, "float32"))
    deltas = ops.stop_gradient(ops.convert_to_tensor(deltas, "float32"))
    count = objectness.shape[1]
    pre = min(pre_nms_top_n, count)
    post = min(post_nms_top_n, pre)
    scores, order = ops.top_k(objectness, pre)
    chosen_deltas = batched_take(deltas, order)
    chosen_anchors = ops.take(ops.cast(anchors, "float32"), order, axis=0)
    boxes = BoxCoder(RPN_WEIGHTS).decode(ops.reshape(chosen_deltas, (-1, 4)), ops.reshape(chosen_anchors, (-1, 4)))
    boxes = clip_boxes(ops.reshape(boxes, (-1, pre, 4)), *image_size)
    large = ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)
    scores = ops.where(large, scores, _DROPPED)
    valid = nms_keep_mask(boxes, scores, nms_threshold) & large
    _, best = ops.top_k(ops.where(valid, scores, _DROPPED), post)
    return batched_take(boxes, best), batched_take(valid, best)


def detect(proposals, valid, class_logits, box_deltas, *, image_size, score_threshold: float = 0.05,
           nms_threshold: float = 0.5, candidates: int = 1000, max_detections: int = 100, min_size: float = 1e-2):
    """The TF Object Detection API dictionary from the RoI head's outputs.

    ``proposals [B, P, 4]`` (``valid [B, P]``), ``class_logits [B, P, K + 1]`` (column 0 is
    background), ``box_deltas [B, P, 4 (K + 1)]``. Every (proposal, class) pair is a candidate:
    its box decoded with the class's deltas (weights 10, 10, 5, 5) and clipped, its score the
    class's softmax probability. Candidates scoring ``<= score_threshold``, under ``min_size``
    pixels on a side or from invalid proposals drop out; of the rest, the ``candidates`` best
    go through NMS per class at ``nms_threshold`` (one pass: each class's boxes are moved
    ``max(height, width) + 1`` pixels beyond the previous class's, so classes never overlap),
    and the ``max_detections`` best survivors are returned, padded with zeros.
    """
    height, width = image_size
    count, columns = class_logits.shape[1], class_logits.shape[2]
    classes = columns - 1
    boxes = BoxCoder(HEAD_WEIGHTS).decode(ops.reshape(box_deltas, (-1, 4 * columns)), ops.reshape(proposals, (-1, 4)))
    boxes = clip_boxes(ops.reshape(boxes, (-1, count, columns, 4))[:, :, 1:], height, width)
    scores = ops.softmax(ops.cast(class_logits, "float32"), axis=-1)[:, :, 1:]
    labels = ops.broadcast_to(ops.arange(1, classes + 1, dtype="int32"), ops.shape(scores))
    boxes, scores, labels = (ops.reshape(boxes, (-1, count * classes, 4)), ops.reshape(scores, (-1, count * classes)),
                             ops.reshape(labels, (-1, count * classes)))
    usable = ops.reshape(ops.broadcast_to(ops.cast(valid, "bool")[..., None], (*ops.shape(valid), classes)),
                         (-1, count * classes))
    usable = usable & (scores > score_threshold) & ((boxes[..., 2] - boxes[..., 0]) >= min_size) & (
        (boxes[..., 3] - boxes[..., 1]) >= min_size)
    scores = ops.where(usable, scores, _DROPPED)

    candidates = min(candidates, count * classes)
    scores, order = ops.top_k(scores, candidates)
    boxes, labels = batched_take(boxes, order), batched_take(labels, order)
    offset = ops.cast(labels, "float32")[..., None] * float(max(height, width) + 1)
    kept = nms_keep_mask(boxes + offset, scores, nms_threshold) & (scores > _DROPPED)

    shown = min(max_detections, candidates)
    scores, best = ops.top_k(ops.where(kept, scores, _DROPPED), shown)
    present = scores > _DROPPED
    boxes = ops.where(present[..., None], to_yxyx_normalized(batched_take(boxes, best), height, width), 0.0)
    labels = ops.where(present, batched_take(labels, best), 0)
    scores = ops.where(present, scores, 0.0)
    if shown < max_detections:  # fewer candidates than rows: pad
        pad = max_detections - shown
        boxes = ops.pad(boxes, [[0, 0], [0, pad], [0, 0]])
        scores, labels = ops.pad(scores, [[0, 0], [0, pad]]), ops.pad(labels, [[0, 0], [0, pad]])
    return {"detection_boxes": boxes, "detection_scores": scores, "detection_classes": ops.cast(labels, "float32"),
            "num_detections": ops.sum(ops.cast(present, "float32"), axis=1)}


def _pair(value, name: str):
    """``(training, inference)`` from one int or a pair."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or (training, inference) ints. Received: {name}={value!r}")
    return pair


@keras.saving.register_keras_serializable(package="hybrid_keras")
class FasterRCNN(keras.Model):
    """Faster R-CNN (``rpn=True``) or Fast R-CNN (``rpn=False``) on ``backbone``'s feature map.

    Args:
        backbone: a Keras model, raw RGB images ``[B, H, W, 3]`` in [0, 255] -> one feature map
            ``[B, h, w, C]`` at ``feature_stride`` pixels per cell (its preprocessing inside).
        classes: the number of object classes (background not counted).
        image_shape: ``(H, W, 3)``, the fixed (padded) input size.
        anchor_offset: pixels from a cell's top-left input pixel to where anchors are centred
            (torchvision: 0; the zoo builders put them on the cell's receptive-field centre).
        roi_pooling: "align" (RoIAlign, sampling ratio 2, aligned; torchvision's) or "max"
            (RoI max pooling, the papers'). ``roi_shift``: pixels subtracted from boxes before
            pooling, so that the pooling's cell centres fall where the backbone centres them.
        representation_size: units of the two fully connected layers (torchvision: 1024).
        rpn_pre_nms_top_n, rpn_post_nms_top_n: proposals kept before and after the RPN's NMS,
            an int or ``(training, inference)`` (torchvision: (2000, 1000) each).
        rpn_batch_size, rpn_positive_fraction, rpn_iou_thresholds: anchor sampling (256, 0.5,
            (0.3, 0.7)). roi_batch_size, roi_positive_fraction, roi_iou_threshold: proposal
            sampling (512, 0.25, 0.5).
        score_threshold, nms_threshold, detection_candidates, max_detections: :func:`detect`.
        seed: seeds the training samplers.
    """

    task = "detection"
    predicts_masks = False
    detection_outputs = DETECTION_OUTPUTS

    def __init__(self, backbone, classes: int, *, image_shape, feature_stride: int = 16, rpn: bool = True,
                 anchor_sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1.0, 2.0), anchor_offset: float = 0.0,
                 roi_pooling: str = "align", roi_size: int = 7, roi_shift: float = 0.0,
                 representation_size: int = 1024, rpn_pre_nms_top_n=(2000, 1000), rpn_post_nms_top_n=(2000, 1000),
                 rpn_nms_threshold: float = 0.7, rpn_min_size: float = 1e-3, rpn_batch_size: int = 256,
                 rpn_positive_fraction: float = 0.5, rpn_iou_thresholds=(0.3, 0.7), roi_batch_size: int = 512,
                 roi_positive_fraction: float = 0.25, roi_iou_threshold: float = 0.5, score_threshold: float = 0.05,
                 nms_threshold: float = 0.5, detection_candidates: int = 1000, max_detections: int = 100,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(classes, int) or classes < 1:
            raise ValueError(f"classes must be a positive int (background not counted). Received: classes={classes!r}")
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3 or image_shape[2] != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (height, width, 3). Received: image_shape={image_shape!r}")
        if roi_pooling not in ROI_POOLINGS:
            raise ValueError(f"roi_pooling must be one of {ROI_POOLINGS}. Received: roi_pooling={roi_pooling!r}")
        for name, value in (("max_detections", max_detections), ("detection_candidates", detection_candidates),
                            ("rpn_batch_size", rpn_batch_size), ("roi_batch_size", roi_batch_size),
                            ("representation_size", representation_size), ("roi_size", roi_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
        self.backbone = backbone
        self.classes = classes
        self.image_shape = image_shape
        self.feature_stride = int(feature_stride)
        self.rpn = bool(rpn)
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        self.aspect_ratios = tuple(float(r) for r in aspect_ratios)
        self.anchor_offset = float(anchor_offset)
        self.roi_pooling = roi_pooling
        self.roi_size = roi_size
        self.roi_shift = float(roi_shift)
        self.representation_size = representation_size
        self.rpn_pre_nms_top_n = _pair(rpn_pre_nms_top_n, "rpn_pre_nms_top_n")
        self.rpn_post_nms_top_n = _pair(rpn_post_nms_top_n, "rpn_post_nms_top_n")
        self.rpn_nms_threshold = float(rpn_nms_threshold)
        self.rpn_min_size = float(rpn_min_size)
        self.rpn_batch_size = rpn_batch_size
        self.rpn_positive_fraction = float(rpn_positive_fraction)
        self.rpn_iou_thresholds = tuple(float(t) for t in rpn_iou_thresholds)
        self.roi_batch_size = roi_batch_size
        self.roi_positive_fraction = float(roi_positive_fraction)
        self.roi_iou_threshold = float(roi_iou_threshold)
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.detection_candidates = detection_candidates
        self.max_detections = max_detections
        self.seed = seed

        feature_shape = tuple(backbone.compute_output_shape((None, *image_shape)))
        if len(feature_shape) != 4 or None in feature_shape[1:]:
            raise ValueError(f"backbone must map [B, {', '.join(map(str, image_shape))}] images to one feature map "
                             f"[B, h, w, C]. Received: output shape {feature_shape}")
        self.feature_shape = feature_shape[1:]
        height, width, channels = self.feature_shape
        anchors = anchor_grid((height, width), self.feature_stride, self.anchor_sizes, self.aspect_ratios)
        self._anchors = ops.convert_to_numpy(anchors) + self.anchor_offset
        self.anchors_per_cell = len(self.anchor_sizes) * len(self.aspect_ratios)

        small = keras.initializers.RandomNormal(stddev=0.01, seed=seed)
        if self.rpn:
            self.rpn_conv = keras.layers.Conv2D(channels, 3, padding="same", activation="relu",
                                                kernel_initializer=small, name="rpn_conv")
            self.rpn_objectness = keras.layers.Conv2D(self.anchors_per_cell, 1, kernel_initializer=small,
                                                      name="rpn_objectness")
            self.rpn_box = keras.layers.Conv2D(4 * self.anchors_per_cell, 1, kernel_initializer=small, name="rpn_box")
        scale = 1.0 / self.feature_stride
        self.roi_pool = (RoIAlign(roi_size, scale, sampling_ratio=2, aligned=True, name="roi_align")
                         if roi_pooling == "align" else RoIPooling(roi_size, scale, name="roi_pool"))
        self.fc6 = keras.layers.Dense(representation_size, activation="relu", name="fc6")
        self.fc7 = keras.layers.Dense(representation_size, activation="relu", name="fc7")
        self.class_logits = keras.layers.Dense(classes + 1, kernel_initializer=small, name="class_logits")
        self.box_deltas = keras.layers.Dense(4 * (classes + 1),
                                             kernel_initializer=keras.initializers.RandomNormal(stddev=0.001, seed=seed),
                                             name="box_deltas")
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_terms = {name: keras.metrics.Mean(name=name) for name in
                           (("rpn_objectness_loss", "rpn_box_loss") if self.rpn else ()) +
                           ("classifier_loss", "box_loss")}
        self._build_heads()

    def _build_heads(self):
        height, width, channels = self.feature_shape
        if self.rpn:
            for layer in (self.rpn_conv, self.rpn_objectness, self.rpn_box):
                layer.build((None, height, width, channels))
        self.fc6.build((None, self.roi_size * self.roi_size * channels))
        for layer in (self.fc7, self.class_logits, self.box_deltas):
            layer.build((None, self.representation_size))
        self.built = True

    @property
    def anchors(self):
        """``[h w A, 4]`` pixel ``[x1, y1, x2, y2]`` anchors over the feature map (row-major cells, then ratios, then sizes)."""
        return self._anchors

    # ------------------------------------------------------------------ forward

    def _split_inputs(self, inputs):
        if self.rpn:
            if isinstance(inputs, (list, tuple)):
                raise ValueError("Faster R-CNN takes images only (its RPN proposes boxes). Received: "
                                 f"{len(inputs)} inputs")
            return inputs, None
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError("Fast R-CNN takes (images, proposals [B, P, 4]). Received: "
                             f"{type(inputs).__name__}")
        images, proposals = inputs
        if len(proposals.shape) != 3 or proposals.shape[-1] != 4 or proposals.shape[1] is None:
            raise ValueError(f"proposals must be [B, P, 4] pixel [x1, y1, x2, y2] with a fixed P. Received: shape "
                             f"{tuple(proposals.shape)}")
        return images, proposals

    def _check_images(self, images):
        if len(images.shape) != 4 or tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(f"images must be [B, {', '.join(map(str, self.image_shape))}] (raw RGB in [0, 255], "
                             "resized and padded to the model's size: hybrid_keras.detection.data.letterbox). "
                             f"Received: shape {tuple(images.shape)}")

    def first_stage(self, inputs, training=False):
        """The backbone and the proposals (the RPN's, or the input's): the parts of a forward pass
        that training needs (not named ``forward``, which is PyTorch's ``Module.forward``):
        ``{"features", "proposals",
        "proposal_valid"}`` and, with an RPN, ``"rpn_objectness" [B, N]``, ``"rpn_deltas" [B, N, 4]``."""
        images, proposals = self._split_inputs(inputs)
        images = ops.convert_to_tensor(images)
        self._check_images(images)
        features = self.backbone(ops.cast(images, "float32"), training=training)
        height, width = self.image_shape[:2]
        outputs = {"features": features}
        if self.rpn:
            x = self.rpn_conv(features)
            objectness = ops.reshape(self.rpn_objectness(x), (-1, self._anchors.shape[0]))
            deltas = ops.reshape(self.rpn_box(x), (-1, self._anchors.shape[0], 4))
            phase = 0 if training else 1
            proposals, valid = propose(objectness, deltas, self._anchors, image_size=(height, width),
                                       pre_nms_top_n=self.rpn_pre_nms_top_n[phase],
                                       post_nms_top_n=self.rpn_post_nms_top_n[phase],
                                       nms_threshold=self.rpn_nms_threshold, min_size=self.rpn_min_size)
            outputs.update(rpn_objectness=objectness, rpn_deltas=deltas)
        else:
            proposals = ops.cast(proposals, "float32")
            valid = ((proposals[..., 2] - proposals[..., 0]) > 0) & ((proposals[..., 3] - proposals[..., 1]) > 0)
            proposals = clip_boxes(proposals, height, width)
        outputs.update(proposals=proposals, proposal_valid=valid)
        return outputs

    def _rois(self, features, boxes):
        """RoI rows ``[B N, 5]`` ``(batch_index, x1, y1, x2, y2)`` of ``boxes [B, N, 4]``, shifted by ``roi_shift``."""
        count = boxes.shape[1]
        batch = ops.shape(features)[0]
        index = ops.cast(ops.repeat(ops.arange(batch), count), "float32")
        rois = ops.concatenate([index[:, None], ops.reshape(boxes, (-1, 4)) - self.roi_shift], axis=1)
        return ops.stop_gradient(rois)

    def head(self, features, boxes):
        """The RoI head on ``boxes [B, N, 4]`` of each image: ``(class logits [B N, K + 1],
        box deltas [B N, 4 (K + 1)])``, rows image-major."""
        x = self.roi_pool([features, self._rois(features, boxes)])
        x = ops.reshape(x, (-1, self.roi_size * self.roi_size * self.feature_shape[2]))
        x = self.fc7(self.fc6(x))
        return self.class_logits(x), self.box_deltas(x)

    def call(self, inputs, training=False):
        outputs = self.first_stage(inputs, training=training)
        if training:
            return outputs
        return self.detections(outputs)

    def detections(self, outputs):
        """The detection dictionary (:func:`detect`) from :meth:`first_stage`'s outputs."""
        logits, deltas = self.head(outputs["features"], outputs["proposals"])
        count = outputs["proposals"].shape[1]
        return detect(outputs["proposals"], outputs["proposal_valid"], ops.reshape(logits, (-1, count, self.classes + 1)),
                      ops.reshape(deltas, (-1, count, 4 * (self.classes + 1))), image_size=self.image_shape[:2],
                      score_threshold=self.score_threshold, nms_threshold=self.nms_threshold,
                      candidates=self.detection_candidates, max_detections=self.max_detections)

    # ------------------------------------------------------------------ training

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The sum of the RPN's objectness and box losses and the RoI head's classification and
        box losses (``hybrid_keras.detection.targets``); each is also tracked as a metric.
        ``y``: ``{"boxes": [B, G, 4] pixel [x1, y1, x2, y2], "labels": [B, G] 0-based, -1 on
        padding}``. ``sample_weight`` is not supported."""
        if not isinstance(y, dict) or "boxes" not in y or "labels" not in y:
            raise ValueError("y must be {'boxes': [B, G, 4] pixel [x1, y1, x2, y2], 'labels': [B, G] with -1 padding} "
                             f"(hybrid_keras.detection.data.detection_batches makes it). Received: {type(y).__name__}"
                             + (f" with keys {sorted(y)}" if isinstance(y, dict) else ""))
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported by detection models. Received: a sample_weight")
        self._check_mask_targets(y)
        if "features" not in y_pred:  # evaluate() calls the model in inference mode
            y_pred = self.first_stage(x, training=False)
        gt_boxes, gt_labels = ops.cast(y["boxes"], "float32"), ops.cast(y["labels"], "int32")
        terms = {}
        if self.rpn:
            low, high = self.rpn_iou_thresholds
            positive, negative, targets = anchor_targets(
                self._anchors, gt_boxes, gt_labels, low=low, high=high, batch_size=self.rpn_batch_size,
                positive_fraction=self.rpn_positive_fraction, seed=self.seed_generator)
            terms["rpn_objectness_loss"], terms["rpn_box_loss"] = rpn_losses(
                y_pred["rpn_objectness"], y_pred["rpn_deltas"], positive, negative, targets)
        sampled = proposal_targets(
            y_pred["proposals"], y_pred["proposal_valid"], gt_boxes, gt_labels, iou_threshold=self.roi_iou_threshold,
            batch_size=self.roi_batch_size, positive_fraction=self.roi_positive_fraction, seed=self.seed_generator,
            return_matches=self.predicts_masks)
        terms.update(self.roi_losses(y_pred["features"], sampled, y))
        for name, value in terms.items():
            self.loss_terms[name].update_state(value)
        total = ops.sum(ops.stack(list(terms.values())))
        for loss in self.losses:  # weight regularisers, if any
            total = total + self._aggregate_additional_loss(loss)
        return total

    def roi_losses(self, features, sampled, y):
        """The RoI head's loss terms on the sampled boxes (:func:`proposal_targets`'s outputs)."""
        boxes, classes, weights, targets = sampled[:4]
        logits, deltas = self.head(features, boxes)
        losses = head_losses(logits, deltas, ops.reshape(classes, (-1,)), ops.reshape(weights, (-1,)),
                             ops.reshape(targets, (-1, 4)))
        return dict(zip(("classifier_loss", "box_loss"), losses))

    def _check_mask_targets(self, y):
        if "masks" in y:
            raise ValueError(f"y has 'masks', but {type(self).__name__} has no mask head (use MaskRCNN, zoo "
                             "'mask_rcnn', or leave masks out: detection_batches(masks=False)). Received: y with "
                             f"keys {sorted(y)}")

    # ------------------------------------------------------------------ serialisation

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "classes": self.classes, "image_shape": self.image_shape, "feature_stride": self.feature_stride,
            "rpn": self.rpn, "anchor_sizes": self.anchor_sizes, "aspect_ratios": self.aspect_ratios,
            "anchor_offset": self.anchor_offset, "roi_pooling": self.roi_pooling, "roi_size": self.roi_size,
            "roi_shift": self.roi_shift, "representation_size": self.representation_size,
            "rpn_pre_nms_top_n": self.rpn_pre_nms_top_n, "rpn_post_nms_top_n": self.rpn_post_nms_top_n,
            "rpn_nms_threshold": self.rpn_nms_threshold, "rpn_min_size": self.rpn_min_size,
            "rpn_batch_size": self.rpn_batch_size, "rpn_positive_fraction": self.rpn_positive_fraction,
            "rpn_iou_thresholds": self.rpn_iou_thresholds, "roi_batch_size": self.roi_batch_size,
            "roi_positive_fraction": self.roi_positive_fraction, "roi_iou_threshold": self.roi_iou_threshold,
            "score_threshold": self.score_threshold, "nms_threshold": self.nms_threshold,
            "detection_candidates": self.detection_candidates, "max_detections": self.max_detections,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class MaskRCNN(FasterRCNN):
    """Mask R-CNN (K. He, G. Gkioxari, P. Dollar, R. Girshick, "Mask R-CNN", ICCV 2017):
    :class:`FasterRCNN` plus a mask branch, on one feature map (the paper's C4-style single map,
    torchvision's mask head).

    The mask branch: RoIAlign at ``mask_roi_size`` (14; aligned, sampling ratio 2) of each box,
    four 3x3 convolutions of ``mask_channels`` (256 in the paper) with ReLU, a 2x2 stride-2
    transposed convolution with ReLU and a 1x1 convolution to one mask logit per class at
    ``2 mask_roi_size`` (28). Training runs it on the positive sampled proposals (at most
    ``roi_batch_size * roi_positive_fraction`` per image); its loss is the per-pixel sigmoid
    binary cross-entropy of the ground-truth class's mask only
    (:func:`~hybrid_keras.detection.targets.mask_loss`) against the matched instance mask
    cropped to the proposal (:func:`~hybrid_keras.detection.targets.mask_targets`).
    ``y`` needs ``"masks"``: ``[B, G, H, W]`` 0/1 in the model's input pixels, one per box row
    (``detection_batches(..., masks=True)`` makes them).

    Inference adds ``detection_masks`` float32 ``[B, max_detections, m, m]``: for each
    detection, the mask probabilities of its class inside its box (box-relative, as the TF
    Object Detection API exports them; zeros on padding rows).
    :func:`hybrid_keras.detection.paste_masks` puts them onto the image.
    """

    predicts_masks = True
    detection_outputs = MASK_OUTPUTS

    def __init__(self, backbone, classes: int, *, mask_channels: int = 256, mask_roi_size: int = 14, seed=None,
                 **kwargs):
        super().__init__(backbone, classes, seed=seed, **kwargs)
        for name, value in (("mask_channels", mask_channels), ("mask_roi_size", mask_roi_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
        self.mask_channels = mask_channels
        self.mask_roi_size = mask_roi_size
        self.mask_size = 2 * mask_roi_size
        self.mask_pool = RoIAlign(mask_roi_size, 1.0 / self.feature_stride, sampling_ratio=2, aligned=True,
                                  name="mask_roi_align")
        # Kaiming normal (fan out, ReLU gain), as torchvision's mask head.
        kaiming = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal", seed=seed)
        self.mask_convs = [keras.layers.Conv2D(mask_channels, 3, padding="same", activation="relu",
                                               kernel_initializer=kaiming, name=f"mask_conv{i}") for i in range(1, 5)]
        self.mask_upsample = keras.layers.Conv2DTranspose(mask_channels, 2, strides=2, activation="relu",
                                                          kernel_initializer=kaiming, name="mask_upsample")
        self.mask_logits = keras.layers.Conv2D(classes, 1, kernel_initializer=kaiming, name="mask_logits")
        channels = self.feature_shape[2]
        for layer in self.mask_convs:
            layer.build((None, mask_roi_size, mask_roi_size, channels))
            channels = mask_channels
        self.mask_upsample.build((None, mask_roi_size, mask_roi_size, mask_channels))
        self.mask_logits.build((None, self.mask_size, self.mask_size, mask_channels))
        self.loss_terms["mask_loss"] = keras.metrics.Mean(name="mask_loss")

    def mask_head(self, features, boxes):
        """Mask logits ``[B N, m, m, K]`` of ``boxes [B, N, 4]`` (pixels), rows image-major."""
        x = self.mask_pool([features, self._rois(features, boxes)])
        for layer in self.mask_convs:
            x = layer(x)
        return self.mask_logits(self.mask_upsample(x))

    def call(self, inputs, training=False):
        outputs = self.first_stage(inputs, training=training)
        if training:
            return outputs
        detections = self.detections(outputs)
        detections["detection_masks"] = self.detection_masks(outputs["features"], detections)
        return detections

    def detection_masks(self, features, detections):
        """``[B, M, m, m]`` mask probabilities of each detection's class in its box; 0 on padding rows."""
        height, width = self.image_shape[:2]
        yxyx = detections["detection_boxes"]
        count = yxyx.shape[1]
        boxes = ops.stack([yxyx[..., 1] * width, yxyx[..., 0] * height, yxyx[..., 3] * width, yxyx[..., 2] * height],
                          axis=-1)
        classes = ops.reshape(ops.cast(detections["detection_classes"], "int32"), (-1,))
        masks = ops.sigmoid(class_masks(self.mask_head(features, boxes), classes))
        masks = ops.where((classes > 0)[:, None, None], masks, 0.0)
        return ops.reshape(masks, (-1, count, self.mask_size, self.mask_size))

    def roi_losses(self, features, sampled, y):
        terms = super().roi_losses(features, sampled, y)
        boxes, classes, weights, _, matches = sampled
        foreground = ops.cast(classes > 0, "float32") * weights
        count = min(boxes.shape[1], max(1, int(self.roi_batch_size * self.roi_positive_fraction)))
        _, chosen = ops.top_k(foreground, count)  # the positives first
        boxes, classes, foreground, matches = (batched_take(v, chosen) for v in (boxes, classes, foreground, matches))
        targets = mask_targets(y["masks"], matches, boxes, self.mask_size)
        terms["mask_loss"] = mask_loss(self.mask_head(features, boxes), ops.reshape(classes, (-1,)),
                                       ops.reshape(foreground, (-1,)),
                                       ops.reshape(targets, (-1, self.mask_size, self.mask_size)))
        return terms

    def _check_mask_targets(self, y):
        if "masks" not in y:
            raise ValueError("y must have 'masks' [B, G, H, W] (0/1 instance masks in the model's input pixels, one "
                             "per box row: detection_batches(..., masks=True)). Received: y with keys "
                             f"{sorted(y)}")
        shape, labels = tuple(y["masks"].shape), tuple(y["labels"].shape)
        if len(shape) != 4 or shape[1] != labels[1] or shape[2:] != self.image_shape[:2]:
            raise ValueError(f"masks must be [B, G, {self.image_shape[0]}, {self.image_shape[1]}] with G = the labels' "
                             f"{labels[1]} rows. Received: shape {shape}")

    def get_config(self):
        return {**super().get_config(), "mask_channels": self.mask_channels, "mask_roi_size": self.mask_roi_size}
