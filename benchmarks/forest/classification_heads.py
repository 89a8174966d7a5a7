"""Softmax vs forest vs kNN heads per image, on the same features of a real classification set.

A zoo MobileNetV2 (alpha 0.35, random init; no downloads here) is trained with its softmax
head on a real set, then its pooled features feed (a) that softmax head, (b) a random
forest (ydf, compiled to ``ForestLayer`` in log_sum mode) and (c) a Gaussian-kernel
``KNNClassifier`` (exact backend) over the L2-normalised features of the training images.
Reports test accuracy and each head's training time (the softmax head's includes the
backbone, which the other two reuse). Writes ``classification_heads.json`` and ``.png``.

Sets, read through the TFDS builders of ``hybrid_keras.datasets``: MNIST (the 10k test split
in the data dir, 8,000 train / 2,000 test by index) and CIFAR-10 JPEG (1,000 images, 70 % /
30 % per class).

    ./dev.sh bench benchmarks/forest/classification_heads.py [--data ../shared/data] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import (DEFAULT_DATA_DIR, RESULTS_DIR, machine, save_figure, staged_arrays,  # noqa: E402
                               write_json)

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"  # --quick runs never touch the results


def mnist(data_dir: Path, quick: bool):
    """The MNIST test split, 8,000 / 2,000 by index, as 32x32 RGB (zero-padded, grey repeated)."""
    def arrays(split):
        return staged_arrays(data_dir, "mnist", split, image_size=(32, 32), method="pad", rgb=True)

    return arrays("test[:1000]" if quick else "test[:8000]"), arrays("test[9500:]" if quick else "test[8000:]")


def cifar(data_dir: Path, quick: bool):
    """The 1,000 CIFAR-10 JPEG test images, files 0000-0069 of each class / 0070-0099 (the builder's
    class round-robin order makes these prefix slices)."""
    def arrays(split):
        return staged_arrays(data_dir, "cifar10_jpeg", split)

    return arrays("test[:30%]" if quick else "test[:70%]"), arrays("test[90%:]" if quick else "test[70%:]")


def compare(name, train, test, epochs: int) -> dict:
    import keras

    import zoo
    from hybrid_keras.fanng import KNNClassifier
    from hybrid_keras.forest import ForestLayer, extract_features, train_forest
    from hybrid_keras.layers import L2Normalize

    keras.utils.set_random_seed(0)
    (train_x, train_y), (test_x, test_y) = train, test
    classes = int(train_y.max()) + 1
    model = zoo.load("mobilenet_v2", weights=None, alpha=0.35, input_shape=train_x.shape[1:], classes=classes)
    for layer in model.layers:  # short runs from scratch: faster-moving BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    fit_x, eval_x = train_x.astype(np.float32), test_x.astype(np.float32)  # raw pixels: the model normalises
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.perf_counter()
    model.fit(fit_x, train_y, batch_size=64, epochs=epochs, verbose=0)
    heads = {"softmax": {"accuracy": float(model.evaluate(eval_x, test_y, verbose=0)[1]),
                         "training_seconds": time.perf_counter() - started}}

    features = keras.Model(model.input, model.get_layer("global_average_pooling2d").output)
    started = time.perf_counter()
    train_features = extract_features(features, fit_x, batch_size=256, verbose=0)
    forest = ForestLayer.from_model(train_forest(train_features, train_y, num_trees=100, max_depth=16, verbose=0),
                                    mode="log_sum", num_classes=classes)
    seconds = time.perf_counter() - started
    test_features = extract_features(features, eval_x, batch_size=256, verbose=0)
    heads["forest"] = {"accuracy": float(np.mean(forest(test_features).numpy().argmax(-1) == test_y)),
                       "training_seconds": seconds}

    started = time.perf_counter()
    normalise = L2Normalize()
    knn = KNNClassifier.from_examples(normalise(train_features).numpy(), train_y, num_classes=classes, k=10)
    seconds = time.perf_counter() - started
    heads["kNN"] = {"accuracy": float(np.mean(knn(normalise(test_features)).numpy().argmax(-1) == test_y)),
                    "training_seconds": seconds}
    for head, result in heads.items():
        print(f"[{name}] {head:8s} accuracy {result['accuracy']:.4f}  trained in {result['training_seconds']:.1f} s",
              flush=True)
    return {"train": len(train_y), "test": len(test_y), "epochs": epochs, "heads": heads}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where results go (default {RESULTS_DIR}; with --quick, {QUICK_RESULTS_DIR})")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="fewer images, one epoch: to check the script runs")
    args = parser.parse_args(argv)
    args.out = args.out or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    epochs = 1 if args.quick else args.epochs
    results = {"machine": machine(), "backbone": "mobilenet_v2 alpha 0.35, trained here", "sets": {}}
    results["sets"]["MNIST"] = compare("MNIST", *mnist(args.data, args.quick), epochs=epochs)
    results["sets"]["CIFAR-10 (1k JPEG)"] = compare("CIFAR-10", *cifar(args.data, args.quick), epochs=3 * epochs)
    write_json(args.out / "classification_heads.json", results)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results["sets"]), figsize=(5 * len(results["sets"]), 4))
    for axis, (name, result) in zip(np.atleast_1d(axes), results["sets"].items()):
        heads = list(result["heads"])
        bars = axis.bar(heads, [result["heads"][h]["accuracy"] for h in heads])
        for bar, head in zip(bars, heads):
            axis.text(bar.get_x() + bar.get_width() / 2, bar.get_height(),
                      f"{result['heads'][head]['accuracy']:.3f}\n{result['heads'][head]['training_seconds']:.0f} s",
                      ha="center", va="bottom", fontsize=8)
        axis.set_ylim(0, 1.1)
        axis.set_title(f"{name}: test accuracy (head training time)")
    save_figure(fig, args.out / "classification_heads.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
