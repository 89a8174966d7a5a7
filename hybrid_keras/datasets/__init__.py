"""TFDS builders for the real datasets the project uses, read from local copies.

Each dataset is a ``tfds.core.GeneratorBasedBuilder`` that reads a folder you already
have (its ``manual_dir``) and never downloads. Feature names, dtypes and shapes are
those of TFDS's own catalogue where it has the dataset, so code written against these
copies runs unchanged on the full datasets (``tfds.load("mnist")``, ``"cifar10"``,
``"coco/2017"``, ``"voc"``):

================  ==============================  =====================================================
name              TFDS builder (catalogue twin)   splits of the copy in shared/data
================  ==============================  =====================================================
``mnist``         ``hybrid_keras_mnist`` (mnist)  test 10,000 (shipped with the project; the default)
``cifar10_jpeg``  ``hybrid_keras_cifar10_jpeg``   test 1,000 (JPEG re-encodings; class round-robin order)
                  (cifar10)
``camvid``        ``hybrid_keras_camvid``         train 123, validation 34, test 233 (SegNet's 360x480)
                  (oxford_iiit_pet's mask)
``raccoon``       ``hybrid_keras_raccoon`` (voc)  train 160, test 40 (the author's CSV split)
``coco128``       ``hybrid_keras_coco128``        ``detection``: validation 128 (boxes);
                  (coco/2017)                     ``instances``: validation 100 (boxes + masks)
``bsds500``       ``hybrid_keras_bsds500``        test 200 (images only)
================  ==============================  =====================================================

Usage::

    from hybrid_keras import datasets
    train = datasets.load("mnist", split="test[:8000]")                    # the shipped copy
    test = datasets.load("camvid", split="test", manual_dir="../shared/data/camvid")
    fit_ready = datasets.image_mask_pairs(test, image_size=(192, 256)).batch(8)

``load`` prepares the dataset into ``data_dir`` (TFDS's default, ``~/tensorflow_datasets``,
unless given) the first time, and again whenever the files in ``manual_dir`` change.
JPEG images decode with the accurate integer IDCT, so pixels equal PIL's, OpenCV's and
torchvision's (TFDS's default fast IDCT differs from them by up to 22 levels on COCO photos).

The builders are registered with TFDS under their ``hybrid_keras_*`` names once their
module is imported, so ``tfds.load("hybrid_keras_camvid", download_and_prepare_kwargs=
{"download_config": tfds.download.DownloadConfig(manual_dir=...)})`` works too.

Importing this package does not import TensorFlow or TFDS; ``builder``, ``prepare`` and
``load`` do.
"""

from __future__ import annotations

import difflib
import importlib
import os

from hybrid_keras.datasets.keras_inputs import image_label_pairs, image_mask_pairs, to_numpy

__all__ = ["DATASETS", "builder_class", "builder", "prepare", "load", "image_label_pairs", "image_mask_pairs",
           "to_numpy"]

# Short name -> "module:class" of its builder (imported on first use: TFDS is heavy).
DATASETS = {
    "mnist": "hybrid_keras.datasets.mnist:Mnist",
    "cifar10_jpeg": "hybrid_keras.datasets.cifar10_jpeg:Cifar10Jpeg",
    "camvid": "hybrid_keras.datasets.camvid:Camvid",
    "raccoon": "hybrid_keras.datasets.raccoon:Raccoon",
    "coco128": "hybrid_keras.datasets.coco128:Coco128",
    "bsds500": "hybrid_keras.datasets.bsds500:Bsds500",
}


def builder_class(name: str):
    """The builder class of a dataset name (``"coco128"``; a ``"/config"`` suffix is ignored here)."""
    short = name.split("/", 1)[0]
    if short not in DATASETS:
        close = difflib.get_close_matches(short, DATASETS, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ValueError(f"name: unknown dataset {short!r}; expected one of {', '.join(DATASETS)}.{hint} "
                         f"Received: {name!r}")
    module, cls = DATASETS[short].split(":")
    return getattr(importlib.import_module(module), cls)


def builder(name: str, *, data_dir: str | os.PathLike | None = None, config: str | None = None):
    """The (not yet prepared) TFDS builder of ``name``; ``"coco128/instances"`` selects a config."""
    if "/" in name:
        name, config_in_name = name.split("/", 1)
        if config is not None and config != config_in_name:
            raise ValueError(f"config: {name!r} was given config {config_in_name!r} in its name and {config!r} "
                             f"as config=; give one. Received: {config!r}")
        config = config_in_name
    cls = builder_class(name)
    return cls(data_dir=os.fspath(data_dir) if data_dir is not None else None, config=config)


def prepare(name: str, *, manual_dir: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
            config: str | None = None):
    """The builder of ``name``, prepared from ``manual_dir`` (the local copy) into ``data_dir``.

    With ``manual_dir`` given, the dataset is prepared unless ``data_dir`` already holds
    one made from the same files (relative paths, sizes and modification times). With
    ``manual_dir=None``, an existing prepared copy is used as it is; otherwise the
    builder's default source is read (MNIST: the copy the project ships), and datasets
    without one raise a ValueError naming the files the folder must hold.
    """
    import tensorflow_datasets as tfds

    from hybrid_keras.datasets.base import FINGERPRINT_KEY, source_fingerprint

    prepared = builder(name, data_dir=data_dir, config=config)
    # The file TFDS itself looks for to restore a prepared dataset (is_prepared() logs warnings).
    is_prepared = (prepared.data_path / "dataset_info.json").exists()
    if manual_dir is None:
        if is_prepared:
            return prepared
        manual_dir = prepared.DEFAULT_MANUAL_DIR
    root = prepared.check_manual_dir(manual_dir)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    if is_prepared:
        if prepared.info.metadata.get(FINGERPRINT_KEY) == source_fingerprint(root):
            return prepared
        print(f"{prepared.name}: the files in {root} differ from those {prepared.data_dir} was prepared from; "
              "preparing it again", flush=True)
        mode = tfds.download.GenerateMode.FORCE_REDOWNLOAD
    prepared.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(root),
                                                                               download_mode=mode))
    return prepared


def load(name: str, split=None, *, manual_dir: str | os.PathLike | None = None,
         data_dir: str | os.PathLike | None = None, config: str | None = None, with_info: bool = False,
         decoders=None, **as_dataset_kwargs):
    """A ``tf.data.Dataset`` of ``name``'s examples, as ``tfds.load`` returns.

    ``split`` takes TFDS's split syntax (``"test"``, ``"test[:8000]"``, ``"train+validation"``,
    a list); ``None`` gives a dict of all splits. Other keywords (``as_supervised``,
    ``batch_size``, ``shuffle_files``, ``read_config``) go to ``builder.as_dataset``.
    With ``with_info=True`` returns ``(dataset, info)``. Top-level images decode with the
    accurate JPEG IDCT unless ``decoders`` says otherwise.
    """
    prepared = prepare(name, manual_dir=manual_dir, data_dir=data_dir, config=config)
    if decoders is None:
        decoders = _accurate_image_decoders(prepared.info.features)
    dataset = prepared.as_dataset(split=split, decoders=decoders, **as_dataset_kwargs)
    return (dataset, prepared.info) if with_info else dataset


def _accurate_image_decoders(features) -> dict:
    """Decoders for the top-level image features: JPEG with the accurate integer IDCT, other formats as TFDS does."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    @tfds.decode.make_decoder()
    def decode(serialized, feature):
        channels = feature.shape[-1]
        image = tf.cond(
            tf.io.is_jpeg(serialized),
            lambda: tf.io.decode_jpeg(serialized, channels=channels, dct_method="INTEGER_ACCURATE"),
            lambda: tf.io.decode_image(serialized, channels=channels, dtype=feature.tf_dtype, expand_animations=False))
        return tf.ensure_shape(image, feature.shape)

    return {key: decode() for key, feature in features.items() if isinstance(feature, tfds.features.Image)}
