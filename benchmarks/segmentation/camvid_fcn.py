"""FCN-32s, FCN-16s and FCN-8s on CamVid, with and without the dense CRF.

Each model (``zoo.load("fcn8s", backbone=..., classes=11)``) trains on the staged train
split (123 frames), keeps the weights of its best validation mean IoU (34 frames), and is
scored on the test split (233 frames) with the FCN paper's four metrics (11 classes, void
ignored), then again with a ``DenseCRF`` on its logits (the same weights; CRF widths
scaled to the image size). Reports training time per model (wall clock and process CPU
seconds), writes ``camvid_fcn_<backend>_<size>.json`` and an overlay PNG (image, ground truth,
each model without and with the CRF), and keeps each trained model's weights in the cache
(``trained_weights_path``) for ``residual_forest.py``, which starts from FCN-32s.

The backbone starts from ``--backbone-weights`` (a local ImageNet file or tag of the
backbone's card; none can be downloaded on these machines) or, by default, from random
weights; say which when quoting the figures. Runs under any Keras backend: the data come
through the TFDS builder once and are cached as .npz (``benchmarks/segmentation/data.py``),
so a JAX-only GPU machine reads the cache.

    python benchmarks/segmentation/camvid_fcn.py [--data ../shared/data] [--image-size 192x256]
        [--backbone mobilenet_v2 --alpha 0.5] [--epochs 60] [--quick]
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

from benchmarks.common import DEFAULT_DATA_DIR, RESULTS_DIR, Timer, save_figure, write_json  # noqa: E402
from benchmarks.segmentation.data import CACHE_DIR, camvid  # noqa: E402

CLASS_NAMES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
               "Bicyclist")
CLASSES, VOID = 11, 11
MODELS = ("fcn32s", "fcn16s", "fcn8s")
QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
# The DenseCRF defaults are for 360x480 images; spatial widths scale with the image height.
CRF_AT_FULL_SIZE = dict(iterations=5, spatial_weight=3.0, spatial_sigma=3.0, bilateral_weight=5.0,
                        bilateral_spatial_sigma=80.0, bilateral_color_sigma=13.0)


def trained_weights_path(name: str, backend: str, height: int, width: int, quick: bool = False) -> Path:
    folder = QUICK_RESULTS_DIR if quick else CACHE_DIR / "camvid_fcn"
    return folder / f"{name}_{backend}_{height}x{width}.weights.h5"


def crf_options(height: int) -> dict:
    scale = height / 360
    return dict(CRF_AT_FULL_SIZE, spatial_sigma=max(3.0 * scale, 0.5), bilateral_spatial_sigma=80.0 * scale)


def build(name, args, *, crf=None):
    import keras

    import zoo

    backbone_kwargs = {"alpha": args.alpha} if args.backbone == "mobilenet_v2" else {}
    model = zoo.load(name, backbone=args.backbone, classes=CLASSES, backbone_weights=args.backbone_weights, crf=crf,
                     **backbone_kwargs)
    if args.backbone_weights is None:
        # From scratch in a few hundred steps, batch norm's moving statistics must follow
        # faster than ImageNet training's 0.999, or inference-mode outputs stay off.
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    return model


def train(name, args, data):
    import keras

    from hybrid_keras.segmentation import MeanIoU, SegmentationCrossentropy, median_frequency_weights

    (train_images, train_masks), (val_images, val_masks) = data["train"], data["validation"]
    model = build(name, args)
    weights = median_frequency_weights(train_masks, CLASSES, VOID) if args.class_weights == "median" else None
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=SegmentationCrossentropy(CLASSES, ignore_label=VOID, class_weights=weights),
                  metrics=[MeanIoU(CLASSES, VOID)])
    stop = keras.callbacks.EarlyStopping(monitor="val_mean_iou", mode="max", patience=args.patience,
                                         restore_best_weights=True)
    with Timer() as timer:
        history = model.fit(train_images, train_masks, validation_data=(val_images, val_masks), epochs=args.epochs,
                            batch_size=args.batch_size, callbacks=[stop], verbose=2 if args.verbose else 0)
    best = int(np.argmax(history.history["val_mean_iou"]))
    return model, {"training_seconds": timer.wall, "training_cpu_seconds": timer.cpu, "epochs_run": len(history.history["loss"]), "best_epoch": best + 1,
                   "best_val_mean_iou": float(history.history["val_mean_iou"][best])}


def evaluate(model, images, masks, batch_size):
    """The four scores on a split, and the predicted class maps."""
    from hybrid_keras.segmentation import confusion_matrix, scores_from_confusion

    total = np.zeros((CLASSES, CLASSES))
    predicted = []
    for start in range(0, len(images), batch_size):
        probabilities = model.predict(images[start:start + batch_size], verbose=0)
        counts, _ = confusion_matrix(masks[start:start + batch_size], probabilities, CLASSES, ignore_label=VOID)
        total += np.asarray(counts)
        predicted.append(np.argmax(probabilities, -1).astype(np.uint8))
    scores = scores_from_confusion(total)
    scores["iou_per_class"] = dict(zip(CLASS_NAMES, scores["iou_per_class"]))
    return scores, np.concatenate(predicted)


def with_crf(model, name, args, height):
    """The same network with a DenseCRF on its logits (weights copied layer by layer)."""
    refined = build(name, args, crf=crf_options(height))
    refined.set_weights(model.get_weights() + refined.get_layer("crf").get_weights())
    return refined


def draw_overlays(axes_rows, images, masks, predictions):
    """Rows of axes: the image, its ground truth and each model's class map, in CamVid's colours."""
    from hybrid_keras.datasets.camvid import PALETTE

    palette = np.asarray(PALETTE, np.uint8)  # void (11) is black
    columns = [("image", None), ("ground truth", masks)] + list(predictions.items())
    for row, axes in enumerate(axes_rows):
        for axis, (title, maps) in zip(axes, columns):
            axis.imshow(images[row] if maps is None else palette[maps[row]])
            axis.axis("off")
            if row == 0:
                axis.set_title(title, fontsize=8)


def overlays(images, masks, predictions, path, count=3):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 2 + len(predictions)
    fig, axes = plt.subplots(count, width, figsize=(2.6 * width, 2.1 * count), squeeze=False)
    draw_overlays(axes, images, masks, predictions)
    return save_figure(fig, path)


def training_arguments(description: str) -> argparse.ArgumentParser:
    """The options every CamVid FCN script shares: data, size, backbone and the FCN schedule."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--image-size", default="192x256", help="HEIGHTxWIDTH (CamVid is 360x480)")
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--alpha", type=float, default=0.5, help="MobileNetV2 width")
    parser.add_argument("--backbone-weights", default=None, help="a weight tag or local file of the backbone")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--class-weights", choices=("none", "median"), default="median")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv=None):
    import keras

    parser = training_arguments(__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--no-crf", action="store_true")
    parser.add_argument("--quick", action="store_true", help="a few frames, 2 epochs, 64x96: checks the script")
    args = parser.parse_args(argv)
    height, width = (64, 96) if args.quick else tuple(int(side) for side in args.image_size.split("x"))
    if args.quick:
        args.epochs, args.patience = 2, 2
    limit = 6 if args.quick else None
    data = {split: camvid(args.data, split, (height, width), limit=limit) for split in ("train", "validation", "test")}
    test_images, test_masks = data["test"]

    results = {"backend": keras.backend.backend(), "image_size": [height, width], "backbone": args.backbone,
               "alpha": args.alpha if args.backbone == "mobilenet_v2" else None,
               "backbone_weights": args.backbone_weights or "random initialisation",
               "splits": {split: len(images) for split, (images, _) in data.items()},
               "arguments": {k: v for k, v in vars(args).items() if k not in ("data",)}, "models": {}}
    predictions = {}
    for name in args.models.split(","):
        model, training = train(name, args, data)
        weights_path = trained_weights_path(name, keras.backend.backend(), height, width, args.quick)
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(weights_path)
        scores, predictions[name] = evaluate(model, test_images, test_masks, args.batch_size)
        entry = {**training, "test": scores}
        if not args.no_crf:
            start = time.perf_counter()
            entry["test_with_crf"], predictions[f"{name} + CRF"] = evaluate(
                with_crf(model, name, args, height), test_images, test_masks, args.batch_size)
            entry["crf_seconds_per_image"] = (time.perf_counter() - start) / len(test_images)
            entry["crf"] = crf_options(height)
        results["models"][name] = entry
        print(f"{name}: test mean IoU {scores['mean_iou']:.3f}"
              + (f", with CRF {entry['test_with_crf']['mean_iou']:.3f}" if "test_with_crf" in entry else "")
              + f"; trained in {training['training_seconds']:.0f} s", flush=True)
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    stem = f"camvid_fcn_{keras.backend.backend()}_{height}x{width}"
    write_json(results_dir / f"{stem}.json", results)
    overlays(test_images, test_masks, predictions, results_dir / f"{stem}.png")
    print(json.dumps({name: entry["test"]["mean_iou"] for name, entry in results["models"].items()}))


if __name__ == "__main__":
    main()
