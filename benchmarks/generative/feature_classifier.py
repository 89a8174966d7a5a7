"""The classifiers whose features the generative benchmarks measure samples with.

The Frechet Inception Distance measures samples on features of an Inception network trained
on ImageNet. No such weights can be fetched here, and ImageNet features suit neither 28x28
digits nor 32x32 thumbnails, so each set gets its own: the zoo's ``mobilenet_v2`` (width
``alpha`` 0.35, random init, batch-norm momentum 0.9 for short runs) trained on that set's
*training* split only, at 32x32 RGB. Its penultimate layer (the 1,280 global-average-pooled
channels) gives the features. Trained once per set and cached as ``.weights.h5`` (with a
JSON of how it was trained and its held-out accuracy) under ``hybrid_keras.CACHE_DIR /
"generative"``.

Data (both generative benchmarks use these splits, through :func:`load_images`):

- ``"mnist"``: the staged MNIST test set (10,000 digits, 28x28 grey): digits 0-7,999 train,
  8,000-9,999 held out. The extractor takes 28x28x1 images and pads them to 32x32, grey
  repeated to RGB, as the classifier was trained.
- ``"cifar10"``: the staged CIFAR-10 JPEG subset (1,000 images, 32x32 RGB, 100 per class):
  files 0000-0079 of each class train (800), 0080-0099 held out (200). Training adds random
  horizontal flips and shifts of up to 4 pixels: 800 images are few.

Images are raw pixels in [0, 255] (uint8 or float) everywhere, the zoo's convention.

    python benchmarks/generative/feature_classifier.py [--data ../shared/data] [--dataset mnist] [--retrain]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import CACHE_DIR, DEFAULT_DATA_DIR, staged_arrays  # noqa: E402

DATASETS = ("mnist", "cifar10")
CACHE = CACHE_DIR / "generative"
FEATURE_LAYER = "global_average_pooling2d"
BACKBONE = "zoo mobilenet_v2, alpha 0.35, trained here from random init at 32x32 RGB"
# Epochs and learning rate per set (MNIST: 125 steps an epoch; CIFAR-10 JPEG: 13).
SETTINGS = {"mnist": {"epochs": 6, "learning_rate": 2e-3, "augment": False},
            "cifar10": {"epochs": 60, "learning_rate": 2e-3, "augment": True}}
QUICK_SETTINGS = {"mnist": {"epochs": 1, "learning_rate": 2e-3, "augment": False},
                  "cifar10": {"epochs": 3, "learning_rate": 2e-3, "augment": True}}


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={dataset!r}")
    return dataset


def load_images(dataset: str, data_dir: Path = DEFAULT_DATA_DIR, quick: bool = False) -> dict:
    """``{"train": (images, labels), "held_out": (images, labels)}``, uint8 images at the set's own
    size (MNIST 28x28x1, CIFAR-10 32x32x3). ``quick``: 2,000 / 500 MNIST digits, 400 / 200
    CIFAR images (20 of each class held out either way)."""
    data_dir = Path(data_dir).resolve()

    def arrays(name, split):
        images, labels = staged_arrays(data_dir, name, split)
        return images.astype(np.uint8), labels.astype(np.int64)

    if _check_dataset(dataset) == "mnist":
        train, held_out = ("test[:2000]", "test[9500:]") if quick else ("test[:8000]", "test[8000:]")
        return {"train": arrays("mnist", train), "held_out": arrays("mnist", held_out)}
    # The builder lists the files class by class in turn, so prefix slices keep every class.
    train = "test[:40%]" if quick else "test[:80%]"
    return {"train": arrays("cifar10_jpeg", train), "held_out": arrays("cifar10_jpeg", "test[80%:]")}


def _to_classifier_input(images: np.ndarray) -> np.ndarray:
    """32x32 RGB float pixels: 28x28 grey digits are zero-padded and repeated to three channels."""
    images = np.asarray(images, np.float32)
    if images.shape[-1] == 1:
        pad = [(0, 0), ((32 - images.shape[1]) // 2,) * 2, ((32 - images.shape[2]) // 2,) * 2, (0, 0)]
        images = np.repeat(np.pad(images, pad), 3, axis=-1)
    return images


def _classifier():
    import keras

    import zoo

    model = zoo.load("mobilenet_v2", weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=10)
    for layer in model.layers:  # short runs from scratch: faster-moving batch-norm statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def _paths(dataset: str, quick: bool) -> tuple[Path, Path]:
    stem = f"feature_classifier_{dataset}" + ("_quick" if quick else "")
    return CACHE / f"{stem}.weights.h5", CACHE / f"{stem}.json"


def _cached(dataset: str, quick: bool) -> tuple[Path, Path]:
    """The classifier files to use: a quick run takes the full classifier when one is cached (its
    training images include the quick split's, its held-out images too), else its own."""
    full = _paths(dataset, False)
    return full if quick and all(path.exists() for path in full) else _paths(dataset, quick)


def train_classifier(dataset: str, data_dir: Path = DEFAULT_DATA_DIR, *, quick: bool = False, verbose: int = 2) -> dict:
    """Train the set's classifier on its training split, save weights and a JSON card
    atomically in the cache, and return the card (held-out accuracy, epochs, seconds)."""
    import keras

    settings = (QUICK_SETTINGS if quick else SETTINGS)[_check_dataset(dataset)]
    data = load_images(dataset, data_dir, quick)
    (train_x, train_y), (test_x, test_y) = data["train"], data["held_out"]
    keras.utils.set_random_seed(0)
    classifier = _classifier()
    trained = classifier
    if settings["augment"]:
        trained = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.RandomFlip("horizontal", seed=1),
                                    keras.layers.RandomTranslation(0.125, 0.125, fill_mode="reflect", seed=2),
                                    classifier])
    trained.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started, cpu = time.perf_counter(), time.process_time()
    trained.fit(_to_classifier_input(train_x), train_y, batch_size=64, epochs=settings["epochs"], verbose=verbose)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    accuracy = float(trained.evaluate(_to_classifier_input(test_x), test_y, verbose=0)[1])  # augmentation is off here
    card = {"dataset": dataset, "backbone": BACKBONE, "feature_layer": FEATURE_LAYER, "features": 1280,
            "train_images": int(len(train_y)), "held_out_images": int(len(test_y)),
            "held_out_accuracy": accuracy, "epochs": settings["epochs"], "learning_rate": settings["learning_rate"],
            "augmentation": "random horizontal flip, shifts up to 4 px" if settings["augment"] else "none",
            "training_seconds": seconds, "training_cpu_seconds": cpu_seconds, "quick": quick}
    weights, card_path = _paths(dataset, quick)
    CACHE.mkdir(parents=True, exist_ok=True)
    # Stage beside the target, then rename: a benchmark running at the same time never reads half a file.
    staging = Path(tempfile.mkdtemp(prefix=".feature_classifier.", dir=CACHE))
    try:
        classifier.save_weights(staging / weights.name)
        (staging / card_path.name).write_text(json.dumps(card, indent=2) + "\n")
        os.replace(staging / weights.name, weights)
        os.replace(staging / card_path.name, card_path)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    print(f"[feature classifier] {dataset}: held-out accuracy {accuracy:.4f} after {settings['epochs']} epochs "
          f"({seconds:.0f} s); saved {weights}", flush=True)
    return card


def classifier_card(dataset: str, data_dir: Path = DEFAULT_DATA_DIR, *, quick: bool = False) -> dict:
    """How the set's classifier was trained and its held-out accuracy (training it first if needed)."""
    weights, card_path = _cached(_check_dataset(dataset), quick)
    if not (weights.exists() and card_path.exists()):
        return train_classifier(dataset, data_dir, quick=quick)
    return json.loads(card_path.read_text())


def feature_extractor(dataset: str, data_dir: Path = DEFAULT_DATA_DIR, *, quick: bool = False):
    """A Keras model: images of the set's own shape (MNIST ``[B, 28, 28, 1]``, CIFAR-10
    ``[B, 32, 32, 3]``), raw pixels in [0, 255] -> features ``[B, 1280]`` (the classifier's
    global-average-pooled last convolution). Trains and caches the classifier on first use."""
    import keras

    classifier_card(dataset, data_dir, quick=quick)
    classifier = _classifier()
    classifier.load_weights(_cached(dataset, quick)[0])
    features = keras.Model(classifier.input, classifier.get_layer(FEATURE_LAYER).output)
    if dataset == "cifar10":
        return features
    digits = keras.Input((28, 28, 1), name="digits")
    x = keras.layers.ZeroPadding2D(2, name="pad_to_32")(digits)
    x = keras.layers.Concatenate(name="grey_to_rgb")([x, x, x])
    return keras.Model(digits, features(x), name="mnist_features")


def extract(extractor, images, batch_size: int = 500) -> np.ndarray:
    """Features of ``images`` (float64 ``[N, 1280]``) in batches."""
    images = np.asarray(images, np.float32)
    return np.concatenate([np.asarray(extractor.predict_on_batch(images[i:i + batch_size]), np.float64)
                           for i in range(0, len(images), batch_size)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--dataset", choices=DATASETS + ("all",), default="all")
    parser.add_argument("--retrain", action="store_true", help="train again even when a cached classifier exists")
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs (cached separately)")
    args = parser.parse_args(argv)
    for dataset in DATASETS if args.dataset == "all" else (args.dataset,):
        card = train_classifier(dataset, args.data, quick=args.quick) if args.retrain else classifier_card(
            dataset, args.data, quick=args.quick)
        print(json.dumps(card, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
