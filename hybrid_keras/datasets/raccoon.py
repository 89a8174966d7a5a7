"""The Raccoon detection set (200 images, one class) with the features of TFDS's ``voc``.

``image`` uint8 [H, W, 3], ``image/filename``, ``objects`` (``label`` ("raccoon"),
``bbox`` normalised ``[ymin, xmin, ymax, xmax]``, ``pose``, ``is_truncated``,
``is_difficult``), ``labels`` and ``labels_no_difficult`` (the image's distinct labels),
as ``tfds.load("voc/2007")`` gives, with Raccoon's one class for VOC's twenty. Boxes come
from the PASCAL VOC XML of each image and are divided by the image's size, as TFDS's
VOC builder does.

Splits are the author's: the images named in ``train_labels.csv`` (160) -> ``train``,
in ``test_labels.csv`` (40) -> ``test``, in the order they first appear there.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ElementTree

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from hybrid_keras.datasets.base import LocalDatasetBuilder

CLASSES = ("raccoon",)
POSES = ("frontal", "rear", "left", "right", "unspecified")  # VOC's, as TFDS's voc names them
SPLIT_FILES = {"train": "train_labels.csv", "test": "test_labels.csv"}


def _unit(value: float) -> float:
    """Clipped to [0, 1]: a box drawn a pixel past the border still encodes (TFDS checks the range)."""
    return min(max(value, 0.0), 1.0)


def read_voc_objects(xml_path, width: int, height: int) -> list[dict]:
    """The ``objects`` of one VOC XML file, boxes divided by the image's ``width`` and ``height``."""
    objects = []
    for node in ElementTree.parse(xml_path).getroot().findall("object"):
        box = {key: float(node.find(f"bndbox/{key}").text) for key in ("xmin", "ymin", "xmax", "ymax")}
        objects.append({
            "label": node.find("name").text.strip().lower(),
            "bbox": tfds.features.BBox(ymin=_unit(box["ymin"] / height), xmin=_unit(box["xmin"] / width),
                                       ymax=_unit(box["ymax"] / height), xmax=_unit(box["xmax"] / width)),
            "pose": (node.findtext("pose") or "unspecified").strip().lower(),
            "is_truncated": node.findtext("truncated", "0").strip() == "1",
            "is_difficult": node.findtext("difficult", "0").strip() == "1",
        })
    return objects


class Raccoon(LocalDatasetBuilder):
    """Dat Tran's Raccoon dataset: 200 photos, boxes around raccoons."""

    name = "hybrid_keras_raccoon"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Raccoon from its VOC XML files and the author's CSV split; features as TFDS's voc."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder in the layout of https://github.com/datitran/raccoon_dataset: images/*.jpg,
annotations/*.xml (PASCAL VOC, one per image, same stem), and the author's split files
train_labels.csv and test_labels.csv (from its data/ folder; column "filename").
shared/data/raccoon is such a folder.
"""

    def required_files(self):
        return ("images/*.jpg", "annotations/*.xml", *SPLIT_FILES.values())

    def _info(self):
        return self._dataset_info(
            description="Raccoon: 200 images with PASCAL VOC boxes of one class, raccoon.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
                "objects": tfds.features.Sequence({
                    "label": tfds.features.ClassLabel(names=CLASSES),
                    "bbox": tfds.features.BBoxFeature(),
                    "pose": tfds.features.ClassLabel(names=POSES),
                    "is_truncated": np.bool_,
                    "is_difficult": np.bool_,
                }),
                "labels": tfds.features.Sequence(tfds.features.ClassLabel(names=CLASSES)),
                "labels_no_difficult": tfds.features.Sequence(tfds.features.ClassLabel(names=CLASSES)),
            }),
            homepage="https://github.com/datitran/raccoon_dataset",
        )

    def _splits(self, root):
        return {split: self._generate_examples(root, root / csv_name) for split, csv_name in SPLIT_FILES.items()}

    def _generate_examples(self, root, split_csv):
        with open(split_csv, newline="") as f:
            file_names = list(dict.fromkeys(row["filename"] for row in csv.DictReader(f)))
        for index, file_name in enumerate(file_names):
            image_path = root / "images" / file_name
            xml_path = root / "annotations" / (image_path.stem + ".xml")
            for path in (image_path, xml_path):
                if not path.is_file():
                    raise FileNotFoundError(f"{split_csv} names {file_name}, but {path} does not exist")
            with Image.open(image_path) as image:
                width, height = image.size
            objects = read_voc_objects(xml_path, width, height)
            labels = sorted({o["label"] for o in objects})
            yield index, {
                "image": image_path,
                "image/filename": file_name,
                "objects": objects,
                "labels": labels,
                "labels_no_difficult": sorted({o["label"] for o in objects if not o["is_difficult"]}),
            }
