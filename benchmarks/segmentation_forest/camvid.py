"""Softmax solver against a decision-forest solver on the same per-pixel features (CamVid).

The talk's experiment, at laptop scale. A zoo MobileNetV2 backbone (random init: no
downloads here; pass ``--weights`` for an ImageNet file) becomes a fully
convolutional net: a hypercolumn of its stride-8, -16 and -32 features (upsampled to
stride 8) feeds a per-pixel solver whose output is upsampled to the image.

1. FCN: backbone + softmax solver (1x1 convolution) trained end to end on CamVid train,
   early-stopped on val mean IoU (the "trained to convergence" baseline).
2. Softmax head refit: the backbone frozen, a fresh 1x1 softmax solver trained to
   convergence on its features (the solver-only comparison).
3. Forest head: the same frozen features, class-balanced pixel samples, a random forest
   (ydf), compiled to a ``ForestLayer`` in log_sum mode; then its leaves fine-tuned with SGD.

Reports pixel accuracy, mean class accuracy, mean IoU (11 classes, void ignored) on the
test split and each head's training time; writes ``camvid_heads.json``, a bar chart and
predicted-mask overlays as PNG.

    ./dev.sh bench benchmarks/segmentation_forest/camvid.py [--data ../shared/data] [--quick]
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

from benchmarks.common import DEFAULT_DATA_DIR, RESULTS_DIR, machine, save_figure, write_json  # noqa: E402
from hybrid_keras.datasets.camvid import CLASSES, VOID  # noqa: E402

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"  # --quick runs never touch the results
CACHE_DIR = Path(os.environ.get("HYBRID_KERAS_CACHE", Path.home() / ".cache" / "hybrid_keras"))
IMAGE_SIZE = (192, 256)  # CamVid's 360x480 at 0.53x, divisible by 32
HYPERCOLUMN = ("block_5_add", "block_12_add", "block_16_project_BN")  # strides 8, 16, 32


def load_split(data_dir: Path, split: str, limit: int | None = None):
    """Images (uint8, resized bilinear) and masks (int32, resized nearest) of one CamVid split, read through
    the TFDS builder in its lists' order; ``limit`` keeps the first ones."""
    from hybrid_keras import datasets

    examples = datasets.load("camvid", split=split, manual_dir=data_dir / "camvid")
    examples = examples.take(limit) if limit else examples
    return datasets.to_numpy(datasets.image_mask_pairs(examples, image_size=IMAGE_SIZE))


def feature_model(weights: str | None):
    """The zoo backbone as a hypercolumn: [B, H/8, W/8, 224] features of raw RGB pixels (it normalises inside)."""
    import keras

    import zoo

    backbone = zoo.load("mobilenet_v2", weights=weights, include_top=False, alpha=0.5, input_shape=(*IMAGE_SIZE, 3))
    if weights is None:
        # Trained from scratch in a few hundred steps, BN's moving statistics must move
        # faster than keras.applications' 0.999, or inference-mode outputs stay garbage.
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    grid = (IMAGE_SIZE[0] // 8, IMAGE_SIZE[1] // 8)
    columns = []
    for name in HYPERCOLUMN:
        x = backbone.get_layer(name).output
        if x.shape[1] != grid[0]:
            x = keras.layers.Resizing(*grid, interpolation="bilinear", name=f"{name}_to_stride8")(x)
        columns.append(x)
    features = keras.layers.Concatenate(name="hypercolumn")(columns)
    model = keras.Model(backbone.input, features, name="mobilenet_v2_hypercolumn")
    return model


def softmax_head(features, name: str):
    import keras

    inputs = keras.Input(features.output.shape[1:], name="features")
    logits = keras.layers.Conv2D(len(CLASSES), 1, name=f"{name}_solver")(inputs)
    probabilities = keras.layers.Resizing(*IMAGE_SIZE, interpolation="bilinear", name=f"{name}_upsample")(logits)
    probabilities = keras.layers.Softmax(name=f"{name}_softmax")(probabilities)
    return keras.Model(inputs, probabilities, name=name)


def weights_for(masks):
    """Void pixels weigh 0 (ignored); the label there is any valid class."""
    return (masks != VOID).astype(np.float32), np.where(masks == VOID, 0, masks)


def confusion(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    valid = truth != VOID
    return np.bincount(truth[valid] * len(CLASSES) + predicted[valid], minlength=len(CLASSES) ** 2).reshape(
        len(CLASSES), len(CLASSES))


def scores(matrix: np.ndarray) -> dict:
    true_positive = np.diag(matrix).astype(np.float64)
    per_class_accuracy = true_positive / np.maximum(matrix.sum(1), 1)
    iou = true_positive / np.maximum(matrix.sum(1) + matrix.sum(0) - true_positive, 1)
    present = matrix.sum(1) > 0
    return {"pixel_accuracy": float(true_positive.sum() / matrix.sum()),
            "mean_class_accuracy": float(per_class_accuracy[present].mean()),
            "mean_iou": float(iou[present].mean()),
            "iou_per_class": {c: float(v) for c, v, p in zip(CLASSES, iou, present) if p}}


def predict_masks(model, inputs, batch_size=8) -> np.ndarray:
    return np.concatenate([np.argmax(model.predict(inputs[i: i + batch_size], verbose=0), -1)
                           for i in range(0, len(inputs), batch_size)]).astype(np.int32)


def mean_iou_stopping(inputs, masks, patience):
    """Early stopping on validation mean IoU (Keras's callbacks track losses, not IoU); keeps the best weights."""
    import keras

    class MeanIoUStopping(keras.callbacks.Callback):
        best, best_weights, wait = -1.0, None, 0

        def on_epoch_end(self, epoch, logs=None):
            value = scores(confusion(predict_masks(self.model, inputs), masks))["mean_iou"]
            print(f"  epoch {epoch + 1}: val mean IoU {value:.3f}", flush=True)
            if value > self.best:
                self.best, self.best_weights, self.wait = value, self.model.get_weights(), 0
            else:
                self.wait += 1
                self.model.stop_training = self.wait >= patience

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return MeanIoUStopping()


def fit_to_convergence(model, x, masks, val_x, val_masks, *, epochs, learning_rate, patience, batch_size=8):
    import keras

    weights, labels = weights_for(masks)
    stopping = mean_iou_stopping(val_x, val_masks, patience)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    start = time.perf_counter()
    model.fit(x, labels, sample_weight=weights, epochs=epochs, batch_size=batch_size, shuffle=True,
              callbacks=[stopping], verbose=0)
    return time.perf_counter() - start, stopping.best


def overlay_figure(images, masks, predictions: dict, palette: np.ndarray, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["image", "ground truth", *predictions]
    fig, axes = plt.subplots(len(images), len(columns), figsize=(3.2 * len(columns), 2.5 * len(images)))
    for row, image in enumerate(images):
        panels = [image, palette[masks[row]], *(palette[p[row]] for p in predictions.values())]
        for col, (title, panel) in enumerate(zip(columns, panels)):
            axis = axes[row, col]
            axis.imshow((image if col == 0 else 0.45 * image + 0.55 * panel).astype(np.uint8))
            axis.set_axis_off()
            if row == 0:
                axis.set_title(title, fontsize=9)
    save_figure(fig, path)


def bar_figure(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(results["heads"])
    metrics = ["pixel_accuracy", "mean_class_accuracy", "mean_iou"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for i, metric in enumerate(metrics):
        left.bar(np.arange(len(heads)) + 0.25 * (i - 1), [results["heads"][h][metric] for h in heads], 0.25, label=metric)
    left.set_xticks(np.arange(len(heads)), heads, fontsize=8)
    left.set_ylim(0, 1)
    left.legend(fontsize=8)
    left.set_title("CamVid test (11 classes, void ignored)")
    right.bar(heads, [results["heads"][h]["training_seconds"] for h in heads])
    right.set_ylabel("head training time (s, CPU)")
    right.set_yscale("log")
    right.tick_params(axis="x", labelsize=8)
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where results go (default {RESULTS_DIR}; with --quick, {QUICK_RESULTS_DIR})")
    parser.add_argument("--weights", default=None, help="ImageNet weights for the backbone (a tag or a local file)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--pixels-per-image", type=int, default=3000)
    parser.add_argument("--trees", type=int, default=60)
    parser.add_argument("--reuse-fcn", action="store_true",
                        help="load the FCN a previous run trained (same split and epochs) instead of training it again")
    parser.add_argument("--quick", action="store_true", help="a few images and epochs, to check the script runs")
    args = parser.parse_args(argv)
    args.out = args.out or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)

    import keras
    import tensorflow as tf

    from hybrid_keras.forest import ForestLayer, attach, extract_pixel_features, train_forest

    keras.utils.set_random_seed(0)
    limit = 8 if args.quick else None
    epochs = 2 if args.quick else args.epochs
    train_images, train_masks = load_split(args.data, "train", limit)
    val_images, val_masks = load_split(args.data, "validation", limit)
    test_images, test_masks = load_split(args.data, "test", limit)
    print(f"CamVid at {IMAGE_SIZE}: train {len(train_images)}, val {len(val_images)}, test {len(test_images)}")

    features = feature_model(args.weights)
    train_x, val_x, test_x = (images.astype(np.float32) for images in (train_images, val_images, test_images))
    results = {"machine": machine(), "image_size": list(IMAGE_SIZE), "backbone": "mobilenet_v2 alpha 0.5 hypercolumn",
               "weights": args.weights or "random init, trained here", "feature_channels": int(features.output.shape[-1]),
               "splits": {"train": len(train_images), "val": len(val_images), "test": len(test_images)}, "heads": {}}
    predictions = {}

    def record(name, model, seconds, inputs=test_x, extra=None):
        masks = predict_masks(model, inputs)
        predictions[name] = masks
        results["heads"][name] = {**scores(confusion(masks, test_masks)), "training_seconds": seconds, **(extra or {})}
        head = results["heads"][name]
        print(f"{name}: pixel acc {head['pixel_accuracy']:.3f}, mean acc {head['mean_class_accuracy']:.3f}, "
              f"mean IoU {head['mean_iou']:.3f}, trained in {seconds:.0f} s", flush=True)

    # 1. The FCN: backbone and softmax solver trained together.
    print("[1/3] FCN (backbone + softmax solver) end to end")
    fcn_head = softmax_head(features, "fcn")
    fcn = keras.Model(features.input, fcn_head(features.output), name="fcn")
    cached = CACHE_DIR / f"camvid_fcn_{len(train_images)}_{epochs}.weights.h5"
    if args.reuse_fcn and cached.exists() and cached.with_suffix(".json").exists():
        fcn.load_weights(cached)  # the heads below are what is compared; the FCN's time is its recorded one
        seconds = json.loads(cached.with_suffix(".json").read_text())["training_seconds"]
        print(f"  reusing the FCN trained earlier ({cached}, {seconds:.0f} s of training)")
    else:
        seconds, _ = fit_to_convergence(fcn, train_x, train_masks, val_x, val_masks, epochs=epochs,
                                        learning_rate=1e-3, patience=10)
        cached.parent.mkdir(parents=True, exist_ok=True)
        fcn.save_weights(cached)
        cached.with_suffix(".json").write_text(json.dumps({"training_seconds": seconds}))
    record("FCN softmax (end to end)", fcn, seconds)

    # Frozen features for the two solver-only heads.
    features.trainable = False
    feature_maps = {split: features.predict(x, batch_size=8, verbose=0) for split, x in
                    (("train", train_x), ("val", val_x), ("test", test_x))}

    # 2. A fresh softmax solver on the frozen features.
    print("[2/3] softmax solver refit on the frozen features")
    refit = softmax_head(features, "refit")
    seconds, _ = fit_to_convergence(refit, feature_maps["train"], train_masks, feature_maps["val"], val_masks,
                                    epochs=epochs * 3, learning_rate=3e-3, patience=10)
    record("softmax head (frozen features)", refit, seconds, feature_maps["test"])

    # 3. The forest head on the same frozen features.
    print("[3/3] forest head on the frozen features")
    start = time.perf_counter()
    pixels, labels = extract_pixel_features(features, (train_x, train_masks), pixels_per_image=args.pixels_per_image,
                                            ignore_label=VOID, batch_size=8, verbose=0)
    extraction_seconds = time.perf_counter() - start
    start = time.perf_counter()
    forest_model = train_forest(pixels, labels, num_trees=args.trees, max_depth=20, min_examples=5, verbose=0)
    forest_seconds = time.perf_counter() - start
    forest = ForestLayer.from_model(forest_model, mode="log_sum", num_classes=len(CLASSES))
    segmenter = attach(features, forest, pooling=None)
    record("forest head (log_sum)", segmenter, extraction_seconds + forest_seconds, test_x,
           {"extraction_seconds": extraction_seconds, "forest_seconds": forest_seconds, "sampled_pixels": len(labels),
            "max_depth": forest.max_depth})

    # 3b. Fine-tune the leaf log-distributions with SGD (structure fixed), as residual forests do.
    start = time.perf_counter()
    inputs = keras.Input(features.output.shape[1:])
    leaf_tuning = keras.Model(inputs, keras.layers.Resizing(*IMAGE_SIZE, interpolation="bilinear")(forest(inputs)))
    weights, targets = weights_for(train_masks)
    # Each leaf sees few of the batch's pixels, so its mean-loss gradient is tiny: Adam's
    # per-weight step size suits that far better than plain SGD.
    leaf_tuning.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    leaf_tuning.fit(feature_maps["train"], targets, sample_weight=weights, epochs=2 if args.quick else 8, batch_size=8,
                    verbose=0)
    tuning_seconds = time.perf_counter() - start
    record("forest head + leaf fine-tuning", segmenter, extraction_seconds + forest_seconds + tuning_seconds, test_x,
           {"fine_tuning_seconds": tuning_seconds})

    fcn_time = results["heads"]["FCN softmax (end to end)"]["training_seconds"]
    for name, head in results["heads"].items():
        head["time_fraction_of_fcn"] = head["training_seconds"] / fcn_time
    palette = np.concatenate([tf.io.decode_png(tf.io.read_file(str(args.data / "camvid" / "camvid11.png"))).numpy()
                              [0, :VOID, :3], [[0, 0, 0]]]).astype(np.float32)
    write_json(args.out / "camvid_heads.json", results)
    bar_figure(results, args.out / "camvid_heads.png")
    shown = [0, len(test_images) // 3, 2 * len(test_images) // 3, len(test_images) - 1]
    overlay_figure(test_images[shown].astype(np.float32), test_masks[shown],
                   {name: masks[shown] for name, masks in predictions.items()}, palette,
                   args.out / "camvid_overlays.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
