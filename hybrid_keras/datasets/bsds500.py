"""BSDS500's natural photographs (images only: the pool the nearest-neighbour benchmark draws from).

TFDS's catalogue has no BSDS500. Features: ``image`` uint8 [H, W, 3] (481x321 or
321x481) and ``image/filename``, the names TFDS's image datasets use. Splits are the
folders present under ``images/``: ``test`` (required), ``train``, ``validation``
(BSDS500's ``val``), each in file-name order. The human segmentations are not read.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from hybrid_keras.datasets.base import LocalDatasetBuilder

SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test"}


class Bsds500(LocalDatasetBuilder):
    """The Berkeley Segmentation Data Set 500, its images."""

    name = "hybrid_keras_bsds500"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "BSDS500 images from BSR's images/<split>/*.jpg folders."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder holding images/test/*.jpg (required) and optionally images/train/*.jpg and
images/val/*.jpg: the BSDS500/data folder of the BSR release (or https://github.com/BIDS/BSDS500).
shared/data/bsds500 holds the 200 test images.
"""

    def required_files(self):
        return ("images/test/*.jpg",)

    def _info(self):
        return self._dataset_info(
            description="BSDS500 natural photographs (481x321 or 321x481), without their segmentations.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(encoding_format="jpeg"),
                "image/filename": tfds.features.Text(),
            }),
            homepage="https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/resources.html",
        )

    def _splits(self, root):
        return {split: self._generate_examples(root / "images" / folder)
                for split, folder in SPLIT_FOLDERS.items() if (root / "images" / folder).is_dir()}

    def _generate_examples(self, folder):
        for index, path in enumerate(sorted(folder.glob("*.jpg"))):
            yield index, {"image": path, "image/filename": path.name}
