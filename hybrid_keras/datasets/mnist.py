"""MNIST from its IDX files, with the features of TFDS's ``mnist``.

``image`` uint8 [28, 28, 1] and ``label`` (10 classes), as ``tfds.load("mnist")`` gives.
The project ships the official 10k test split (``hybrid_keras/demo_data/mnist``), which is
the default source: ``load("mnist", split="test")`` works on a fresh clone. Examples keep
the IDX files' order, so ``"test[:8000]"`` / ``"test[8000:]"`` split by index the way
the demo does. A folder that also holds the 60k training files gives a ``train`` split.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from hybrid_keras.datasets.base import LocalDatasetBuilder

SHIPPED_COPY = Path(__file__).resolve().parents[1] / "demo_data" / "mnist"
IDX_FILES = {  # split: (images, labels), LeCun's file names
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


def read_idx(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, rows, cols] and uint8 labels [N] from a pair of gzip IDX files."""
    with gzip.open(images_path, "rb") as f:
        raw = f.read()
    magic, count, rows, cols = (int(v) for v in np.frombuffer(raw[:16], dtype=">i4"))
    if magic != IMAGE_MAGIC or len(raw) != 16 + count * rows * cols:
        raise ValueError(f"{images_path} is not an IDX3 image file (magic {magic}, expected {IMAGE_MAGIC}, "
                         f"{len(raw) - 16} pixel bytes for {count}x{rows}x{cols})")
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(count, rows, cols)
    with gzip.open(labels_path, "rb") as f:
        raw = f.read()
    magic, label_count = (int(v) for v in np.frombuffer(raw[:8], dtype=">i4"))
    if magic != LABEL_MAGIC or label_count != count or len(raw) != 8 + count:
        raise ValueError(f"{labels_path} is not an IDX1 label file for {count} images "
                         f"(magic {magic}, expected {LABEL_MAGIC}; {label_count} labels)")
    return images, np.frombuffer(raw, dtype=np.uint8, offset=8)


class Mnist(LocalDatasetBuilder):
    """MNIST handwritten digits from local IDX files (default: the test split the project ships)."""

    name = "hybrid_keras_mnist"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MNIST from local IDX files; features as TFDS's mnist."}
    DEFAULT_MANUAL_DIR = SHIPPED_COPY
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder with MNIST's gzip IDX files under LeCun's names: t10k-images-idx3-ubyte.gz and
t10k-labels-idx1-ubyte.gz (the test split; required), and optionally train-images-idx3-ubyte.gz
and train-labels-idx1-ubyte.gz (a train split). The project ships the test files in
hybrid_keras/demo_data/mnist, which is the default.
"""

    def required_files(self):
        return IDX_FILES["test"]

    def _info(self):
        return self._dataset_info(
            description="The MNIST database of handwritten digits, read from local IDX files.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(28, 28, 1)),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _splits(self, root):
        return {split: self._generate_examples(root / images, root / labels)
                for split, (images, labels) in IDX_FILES.items()
                if (root / images).is_file() and (root / labels).is_file()}

    def _generate_examples(self, images_path, labels_path):
        images, labels = read_idx(images_path, labels_path)
        if images.shape[1:] != (28, 28):
            raise ValueError(f"{images_path}: expected 28x28 images, found {images.shape[1]}x{images.shape[2]}")
        for index, (image, label) in enumerate(zip(images, labels)):
            # As a PIL image TFDS encodes the PNG with PIL, several times faster than from an array.
            yield index, {"image": Image.fromarray(image, mode="L"), "label": int(label)}
