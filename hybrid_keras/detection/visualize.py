"""Detections as pictures and JSON: what ``hybrid-keras detect`` writes.

:class:`Detector` runs a detection model on one image of any size and gives its detections in
that image's pixels. The model can be a Keras detection model (the zoo's ``faster_rcnn``,
``mask_rcnn`` or ``fast_rcnn``, a trained ``rcnn``, or a ``.keras`` file of one), which is given
the image letterboxed to its input size exactly as the SavedModel export does it
(:func:`hybrid_keras.detection.letterbox`, then :func:`~hybrid_keras.detection.restore_boxes`;
R-CNN takes the photo as it is), with selective-search proposals for the models that take
them; or a SavedModel directory written by :func:`hybrid_keras.export_saved_model`, served
through its ``serve_uint8`` signature. A ``.keras`` file and its SavedModel give the same
detections.

:func:`draw_detections` draws boxes, class names and scores (and instance masks, blended in
the class's colour) onto the photo; :func:`detect_images` does both for image files and writes
``<name>_detections.png`` per image and one ``detections.json`` for all of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hybrid_keras.segmentation.overlay import default_palette, read_image

DEFAULT_THRESHOLD = 0.5


def class_name(label: int, class_names=None) -> str:
    """The name of 1-based class ``label`` (``class_names[label - 1]``), or ``"class <label>"``."""
    if class_names is not None and 1 <= label <= len(class_names):
        return str(class_names[label - 1])
    return f"class {label}"


def draw_detections(image, boxes, labels, scores=None, masks=None, *, class_names=None, opacity: float = 0.45,
                    line_width: int = 2) -> np.ndarray:
    """The photo ``[H, W, 3]`` uint8 with each detection drawn in its class's colour.

    ``boxes [N, 4]`` pixel ``[x1, y1, x2, y2]``; ``labels [N]`` 1-based classes (the TF Object
    Detection API's ``detection_classes``); ``scores [N]`` (written after the name when given);
    ``masks [N, H, W]`` boolean instance masks, blended over the photo at ``opacity`` before the
    boxes are drawn. Colours are :func:`hybrid_keras.segmentation.overlay.default_palette`'s.
    """
    from PIL import Image, ImageDraw

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3]. Received: shape {image.shape}")
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels).astype(int).reshape(-1)
    if len(labels) != len(boxes) or (scores is not None and len(scores) != len(boxes)):
        raise ValueError(f"boxes, labels and scores must have one row per detection. Received: {len(boxes)} boxes, "
                         f"{len(labels)} labels" + ("" if scores is None else f", {len(scores)} scores"))
    if len(labels) and (labels.min() < 1 or labels.max() > 255):
        raise ValueError(f"labels must be 1-based classes in [1, 255]. Received: {labels.min()}..{labels.max()}")
    colours = default_palette(256)
    picture = image.astype(np.float32)
    if masks is not None:
        masks = np.asarray(masks, bool)
        if masks.shape != (len(boxes), *image.shape[:2]):
            raise ValueError(f"masks must be [N, H, W] = [{len(boxes)}, {image.shape[0]}, {image.shape[1]}]. "
                             f"Received: shape {masks.shape}")
        for mask, label in zip(masks, labels):
            picture[mask] = (1.0 - opacity) * picture[mask] + opacity * colours[label]
    canvas = Image.fromarray(np.clip(np.rint(picture), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = tuple(int(c) for c in colours[label])
        draw.rectangle([float(v) for v in box], outline=colour, width=line_width)
        text = class_name(label, class_names) + ("" if scores is None else f" {float(scores[i]):.2f}")
        left, top = float(box[0]), max(0.0, float(box[1]) - 11)
        text_box = draw.textbbox((left, top), text)
        draw.rectangle(text_box, fill=colour)
        draw.text((left, top), text, fill=(255, 255, 255))
    return np.asarray(canvas)


class Detector:
    """Detections on images of any size from a Keras detection model, a ``.keras`` file of one,
    or a SavedModel directory written by :func:`hybrid_keras.export_saved_model`. Models that
    take proposals (a trained R-CNN, Fast R-CNN) get selective search's (``proposal_mode``,
    ``max_proposals``: :func:`hybrid_keras.detection.proposals.selective_search`).

    Calling it on a uint8 ``[H, W, 3]`` image returns ``{"boxes": [N, 4] pixel [x1, y1, x2, y2],
    "scores": [N], "classes": [N] int (1-based), and "masks": [N, H, W] bool for models with a mask
    head}``, the model's detections (``num_detections`` of them), best first.
    """

    def __init__(self, model, *, proposal_mode: str = "fast", max_proposals: int = 2000):
        self.saved_model = None
        self.proposal_mode, self.max_proposals = proposal_mode, max_proposals
        if isinstance(model, (str, Path)) and (Path(model) / "saved_model.pb").exists():
            import tensorflow as tf

            self.saved_model = tf.saved_model.load(str(model)).signatures["serve_uint8"]
            return
        if isinstance(model, (str, Path)):
            import keras

            if not Path(model).exists():
                raise FileNotFoundError(f"{model}: no such .keras file or SavedModel directory")
            model = keras.saving.load_model(model)
        if getattr(model, "task", None) != "detection":
            raise ValueError(f"{getattr(model, 'name', model)!r} is not a detection model (the zoo's faster_rcnn, "
                             "mask_rcnn, fast_rcnn or a trained rcnn)")
        self.model = model
        # R-CNN takes photos of any size with their proposals; Fast R-CNN its fixed size with
        # proposals; Faster and Mask R-CNN propose their own boxes.
        self.takes_proposals = not getattr(model, "rpn", False)
        self.fixed_size = getattr(model, "image_shape", None)

    def _proposals(self, image: np.ndarray) -> np.ndarray:
        """``[1, P, 4]`` selective-search boxes of the image the model sees."""
        from hybrid_keras.detection.proposals import selective_search

        boxes = selective_search(image, self.proposal_mode, self.max_proposals)
        if not len(boxes):  # a flat image: one box over all of it, so the model still runs
            boxes = np.array([[0, 0, image.shape[1], image.shape[0]]], np.float32)
        return boxes[None]

    def _outputs(self, image: np.ndarray) -> dict:
        """The TF OD API dictionary for one image, boxes normalised to the image itself."""
        import keras
        import tensorflow as tf

        if self.saved_model is not None:
            return {k: v.numpy()[0] for k, v in self.saved_model(images=tf.constant(image[None])).items()}
        if self.fixed_size is None:  # R-CNN: the photo as it is
            inputs = image[None].astype(np.float32)
            outputs = self.model((inputs, self._proposals(image)), training=False)
            return {k: keras.ops.convert_to_numpy(v)[0] for k, v in outputs.items()}
        from hybrid_keras.detection.data import letterbox, restore_boxes

        size = self.fixed_size[:2]
        padded, resized_size = letterbox(image[None], size)
        inputs = padded.numpy()
        if self.takes_proposals:  # Fast R-CNN: proposals on the letterboxed photo
            inputs = (inputs, self._proposals(inputs[0].astype(np.uint8)))
        outputs = {k: keras.ops.convert_to_numpy(v) for k, v in self.model(inputs, training=False).items()}
        outputs["detection_boxes"] = restore_boxes(outputs["detection_boxes"], resized_size, size).numpy()
        return {k: v[0] for k, v in outputs.items()}

    def __call__(self, image) -> dict:
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"image must be uint8 [H, W, 3]. Received: {image.dtype} {image.shape}")
        outputs = self._outputs(image)
        count = int(outputs["num_detections"])
        height, width = image.shape[:2]
        yxyx = outputs["detection_boxes"][:count] * [height, width, height, width]
        found = {"boxes": yxyx[:, [1, 0, 3, 2]].astype(np.float32), "scores": outputs["detection_scores"][:count],
                 "classes": outputs["detection_classes"][:count].astype(int)}
        if "detection_masks" in outputs:
            from hybrid_keras.detection.masks import paste_masks

            found["masks"] = paste_masks(outputs["detection_masks"][:count], outputs["detection_boxes"][:count],
                                         height, width)
        return found


def detect_images(model, images, out_dir, *, threshold: float = DEFAULT_THRESHOLD, class_names=None,
                  proposal_mode: str = "fast", max_proposals: int = 2000) -> list[Path]:
    """Detect objects in image files; write ``<name>_detections.png`` (detections scoring at least
    ``threshold`` drawn on the photo) per image and ``detections.json`` (every detection the model
    returned: boxes in pixels, scores, 1-based classes and their names). Returns the paths written.
    ``model``, ``proposal_mode``, ``max_proposals``: as :class:`Detector` takes them."""
    from PIL import Image

    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1]. Received: threshold={threshold!r}")
    detector = Detector(model, proposal_mode=proposal_mode, max_proposals=max_proposals)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, report = [], {}
    for image_path in map(Path, images):
        image = read_image(image_path)
        found = detector(image)
        shown = found["scores"] >= threshold
        picture = draw_detections(image, found["boxes"][shown], found["classes"][shown], found["scores"][shown],
                                  found["masks"][shown] if "masks" in found else None, class_names=class_names)
        path = out_dir / f"{image_path.stem}_detections.png"
        Image.fromarray(picture).save(path)
        written.append(path)
        report[str(image_path)] = [
            {"box": [round(float(v), 2) for v in box], "score": float(score), "class": int(label),
             "name": class_name(int(label), class_names)}
            for box, score, label in zip(found["boxes"], found["scores"], found["classes"])]
    json_path = out_dir / "detections.json"
    json_path.write_text(json.dumps({"threshold": threshold, "box_format": "pixel [x1, y1, x2, y2]",
                                     "images": report}, indent=1) + "\n")
    return written + [json_path]
