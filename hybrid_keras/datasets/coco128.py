"""COCO128 (the first 128 COCO val2017 images) with the features of TFDS's ``coco/2017``.

Two configs, each from one kind of annotation so that its boxes, labels and masks
belong together:

- ``detection`` (default): all images, boxes from the YOLO label files. Features
  ``image``, ``image/filename``, ``image/id``, ``objects/bbox`` (normalised
  ``[ymin, xmin, ymax, xmax]``) and ``objects/label``: the subset of ``coco/2017``'s
  features that YOLO files carry, with the same names and meaning, so code written
  against it runs unchanged on ``tfds.load("coco/2017")``.
- ``instances``: the images that have COCO panoptic annotations (100 in the staged copy),
  one object per "thing" segment: ``objects/id`` (segment id), ``objects/area`` (pixels),
  ``objects/bbox``, ``objects/label``, ``objects/is_crowd`` as in ``coco/2017``, plus
  ``objects/segmentation``, the instance mask as uint8 [H, W, 1], 255 inside and 0
  outside: the name, shape and values of TFDS's ``lvis`` (COCO images with instance masks;
  ``coco/2017`` has no masks). Stuff segments (sky, grass, ...) are left out.

Labels are COCO's 80 thing classes in TFDS's ``coco/2017`` label space: ``ClassLabel``
indices 0-79 in order of COCO category id (0 person, 1 bicycle, ... 79 toothbrush); the
YOLO files' contiguous ids are these indices, and panoptic category ids (1-90, with gaps)
are mapped to them. ``COCO_CATEGORY_IDS[label]`` gives the COCO id back.

Splits: ``validation`` from ``images/val2017`` (and ``train`` from ``images/train2017`` when
present), images in file-name (= id) order.
"""

from __future__ import annotations

import json
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from hybrid_keras.datasets.base import LocalDatasetBuilder

# COCO's 80 thing categories, (category id, name), in id order: TFDS coco/2017's label list.
COCO_THINGS = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"),
    (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"),
    (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"),
    (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"),
    (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"),
    (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"),
    (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
)
CLASSES = tuple(name for _, name in COCO_THINGS)
COCO_CATEGORY_IDS = tuple(category_id for category_id, _ in COCO_THINGS)
LABEL_OF_CATEGORY_ID = {category_id: label for label, category_id in enumerate(COCO_CATEGORY_IDS)}
SPLIT_FOLDERS = {"train": "train2017", "validation": "val2017"}
MASK_VALUE = 255  # inside an instance, as TFDS's lvis stores its masks


def _unit(value: float) -> float:
    return min(max(value, 0.0), 1.0)


def yolo_boxes(label_path) -> tuple[list[int], list[tfds.features.BBox]]:
    """Labels and ``[ymin, xmin, ymax, xmax]`` boxes of a YOLO file (``class cx cy w h`` per line, normalised)."""
    labels, boxes = [], []
    for number, line in enumerate(label_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 5 or not 0 <= int(fields[0]) < len(CLASSES):
            raise ValueError(f"{label_path}, line {number}: expected 'class cx cy w h' with class in 0-79. "
                             f"Received: {line!r}")
        cx, cy, w, h = (float(v) for v in fields[1:])
        labels.append(int(fields[0]))
        boxes.append(tfds.features.BBox(ymin=_unit(cy - h / 2), xmin=_unit(cx - w / 2),
                                        ymax=_unit(cy + h / 2), xmax=_unit(cx + w / 2)))
    return labels, boxes


def check_yolo_names(yaml_path) -> None:
    """The ``names:`` of a YOLO config must be COCO's 80 classes in order (else the ids mean something else)."""
    names = dict(re.findall(r"^\s+(\d+):\s*(.+?)\s*$", yaml_path.read_text(), flags=re.MULTILINE))
    found = tuple(names.get(str(i), "").strip("'\"") for i in range(len(names)))
    if found != CLASSES:
        raise ValueError(f"{yaml_path}: its class names are not COCO's 80 in category-id order, so its class ids "
                         f"cannot be mapped to coco/2017 labels. Received: {found}")


def panoptic_segment_ids(png_path) -> np.ndarray:
    """Segment id per pixel of a COCO panoptic PNG: R + 256 G + 256^2 B."""
    with Image.open(png_path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class Coco128(LocalDatasetBuilder):
    """COCO128: COCO val2017's first 128 images, with boxes (YOLO) and instance masks (COCO panoptic)."""

    name = "hybrid_keras_coco128"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "COCO128 boxes (YOLO) and panoptic instance masks; features as coco/2017 and lvis."}
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="detection", description="All images; boxes and labels from the YOLO files."),
        tfds.core.BuilderConfig(name="instances", description=(
            "Images with COCO panoptic annotations; one object per thing segment, with its instance mask.")),
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "detection"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder in the layout of https://github.com/lightly-ai/coco128_yolo (as shared/data/coco128):
images/val2017/*.jpg (COCO file names, e.g. 000000000139.jpg), and for the "detection" config
labels_detection/val2017/<stem>.txt (YOLO: "class cx cy w h" per line, normalised, class the
contiguous 0-79 COCO index; an image without a file has no objects) with classes_detection.yaml,
or for the "instances" config panoptic/panoptic_val2017.json and panoptic/panoptic_val2017/*.png
(COCO's panoptic format). The same with train2017 adds a train split.
"""

    def required_files(self):
        if self.builder_config.name == "detection":
            return ("images/*/*.jpg", "labels_detection/*/*.txt")
        return ("images/*/*.jpg", "panoptic/panoptic_*.json", "panoptic/panoptic_*/*.png")

    def _info(self):
        objects = {"bbox": tfds.features.BBoxFeature(), "label": tfds.features.ClassLabel(names=CLASSES)}
        if self.builder_config.name == "instances":
            objects = {"id": np.int64, "area": np.int64, **objects, "is_crowd": np.bool_,
                       "segmentation": tfds.features.Image(shape=(None, None, 1))}
        return self._dataset_info(
            description=f"COCO128 ({self.builder_config.name}): {self.builder_config.description}",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "image/id": np.int64,
                "objects": tfds.features.Sequence(objects),
            }),
            homepage="https://cocodataset.org/",
        )

    def _splits(self, root):
        splits = {}
        for split, folder in SPLIT_FOLDERS.items():
            if not (root / "images" / folder).is_dir():
                continue
            if self.builder_config.name == "detection":
                if (root / "classes_detection.yaml").is_file():
                    check_yolo_names(root / "classes_detection.yaml")
                splits[split] = self._generate_examples(root, folder)
            elif (root / "panoptic" / f"panoptic_{folder}.json").is_file():
                splits[split] = self._generate_examples(root, folder)
        return splits

    def _generate_examples(self, root, folder):
        if self.builder_config.name == "detection":
            yield from self._detection_examples(root, folder)
        else:
            yield from self._instance_examples(root, folder)

    def _detection_examples(self, root, folder):
        for index, image_path in enumerate(sorted((root / "images" / folder).glob("*.jpg"))):
            label_path = root / "labels_detection" / folder / f"{image_path.stem}.txt"
            labels, boxes = yolo_boxes(label_path) if label_path.is_file() else ([], [])
            yield index, {"image": image_path, "image/filename": image_path.name, "image/id": _image_id(image_path),
                          "objects": {"bbox": boxes, "label": labels}}

    def _instance_examples(self, root, folder):
        annotations = json.loads((root / "panoptic" / f"panoptic_{folder}.json").read_text())
        for category in annotations["categories"]:
            expected = dict(COCO_THINGS).get(category["id"])
            if category.get("isthing") and expected != category["name"]:
                raise ValueError(f"panoptic_{folder}.json: thing category {category['id']} is {category['name']!r}; "
                                 f"COCO's is {expected!r}")
        segments_of = {a["image_id"]: a for a in annotations["annotations"]}
        for index, info in enumerate(sorted(annotations["images"], key=lambda i: i["id"])):
            panoptic = segments_of[info["id"]]
            segment_ids = panoptic_segment_ids(root / "panoptic" / f"panoptic_{folder}" / panoptic["file_name"])
            height, width = info["height"], info["width"]
            if segment_ids.shape != (height, width):
                raise ValueError(f"{panoptic['file_name']}: panoptic PNG is {segment_ids.shape[1]}x"
                                 f"{segment_ids.shape[0]}, its image {width}x{height}")
            objects = []
            for segment in panoptic["segments_info"]:
                if segment["category_id"] not in LABEL_OF_CATEGORY_ID:
                    continue  # a stuff segment
                x, y, w, h = segment["bbox"]
                objects.append({
                    "id": segment["id"],
                    "area": segment["area"],
                    "bbox": tfds.features.BBox(ymin=_unit(y / height), xmin=_unit(x / width),
                                               ymax=_unit((y + h) / height), xmax=_unit((x + w) / width)),
                    "label": LABEL_OF_CATEGORY_ID[segment["category_id"]],
                    "is_crowd": bool(segment["iscrowd"]),
                    "segmentation": ((segment_ids == segment["id"]) * np.uint8(MASK_VALUE))[:, :, None],
                })
            image_path = root / "images" / folder / info["file_name"]
            yield index, {"image": image_path, "image/filename": info["file_name"], "image/id": info["id"],
                          "objects": objects}


def _image_id(image_path) -> int:
    if not image_path.stem.isdigit():
        raise ValueError(f"{image_path}: expected a COCO file name, the image id with zeros before it "
                         f"(000000000139.jpg)")
    return int(image_path.stem)
