"""The talk's experiment on CamVid: a residual forest head against the FCN-8s softmax, same backbone.

Zuo & Drummond (CoRL 2017) put a forest on features of a pretrained CNN and report NYUDv2
mean IoU 36.5 against FCN-8s's 30.2, after 30 minutes of training against 20 hours. No
ImageNet weights can be had here, so the shared starting point is the one FCN training
itself uses: FCN-32s, trained on CamVid by ``camvid_fcn.py`` (the FCN paper initialises
FCN-16s from FCN-32s and FCN-8s from FCN-16s the same way). From those weights:

1. **FCN-8s** (softmax solver): the FCN-32s weights copied in, the stride-16 and stride-8
   score layers added, everything fine-tuned end to end until validation mean IoU stops
   improving (Adam, 10x lower rate than from scratch).
2. **Residual forest**: the FCN-32s backbone frozen; its hypercolumn at stride 8 (the maps
   FCN-8s scores: strides 8, 16 and 32) and FCN-32s's class scores are computed once for
   class-balanced cells of the training frames; a randomised forest grows on them and its
   leaves are trained jointly with SGD (:func:`hybrid_keras.forest.train_residual_forest`),
   early-stopped on validation loss. "Correcting FCN-32s" is the same forest whose
   log-likelihoods are added to FCN-32s's scores (leaves start at zero), as FCN-8s adds
   finer maps' scores. The ablation "forest, leaves not trained" is the first forest's
   trees with their grown leaves.

Both are scored on the test split with the FCN paper's four metrics (11 classes, void
ignored) and timed from the same FCN-32s weights: FCN-8s's fine-tuning against the forest's
feature extraction, growth and leaf training (wall clock and process CPU seconds). Writes
``residual_forest_<backend>_<size>.json`` and a PNG (scores, times, overlays).

    python benchmarks/segmentation/residual_forest.py [--image-size 192x256] [--quick]
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import RESULTS_DIR, Timer, machine, save_figure, write_json  # noqa: E402
from benchmarks.segmentation import camvid_fcn  # noqa: E402
from benchmarks.segmentation.camvid_fcn import CLASSES, QUICK_RESULTS_DIR, VOID  # noqa: E402
from benchmarks.segmentation.data import camvid  # noqa: E402


def fcn32s_weights(args, data, height, width):
    """The FCN-32s weights ``camvid_fcn.py`` saved for this backend and size (trained here if absent)."""
    import keras

    path = camvid_fcn.trained_weights_path("fcn32s", keras.backend.backend(), height, width, args.quick)
    if not path.exists():
        print(f"{path} is missing: training FCN-32s first", flush=True)
        model, _ = camvid_fcn.train("fcn32s", args, data)
        path.parent.mkdir(parents=True, exist_ok=True)
        model.save_weights(path)
    model = camvid_fcn.build("fcn32s", args)
    model.load_weights(path)
    return model, path


def fcn8s_from_fcn32s(fcn32s, args, data):
    """FCN-8s with every layer FCN-32s has (backbone, stride-32 scores) copied in, fine-tuned end to end."""
    import keras

    from hybrid_keras.segmentation import MeanIoU, SegmentationCrossentropy, median_frequency_weights

    model = camvid_fcn.build("fcn8s", args)
    source = {layer.name: layer for layer in fcn32s.layers}
    for layer in model.layers:
        if layer.name in source and layer.weights and layer.name != "up_to_image":  # 8x there, 32x in FCN-32s
            layer.set_weights(source[layer.name].get_weights())
    (train_images, train_masks), validation = data["train"], data["validation"]
    weights = median_frequency_weights(train_masks, CLASSES, VOID)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate * args.fine_tune_factor),
                  loss=SegmentationCrossentropy(CLASSES, ignore_label=VOID, class_weights=weights),
                  metrics=[MeanIoU(CLASSES, VOID)])
    stop = keras.callbacks.EarlyStopping(monitor="val_mean_iou", mode="max", patience=args.patience,
                                         restore_best_weights=True)
    with Timer() as timer:
        history = model.fit(train_images, train_masks, validation_data=validation, epochs=args.epochs,
                            batch_size=args.batch_size, callbacks=[stop], verbose=2 if args.verbose else 0)
    return model, {"training_seconds": timer.wall, "training_cpu_seconds": timer.cpu, "epochs_run": len(history.history["loss"]),
                   "best_val_mean_iou": float(max(history.history["val_mean_iou"]))}


def forest_heads(fcn32s, args, data):
    """Forest heads on the frozen FCN-32s: ``{title: (segmenter, timing and settings)}``.

    The trees read the hypercolumn at stride 8 with FCN-32s's own class scores appended
    (FCN-8s starts from those scores too), sampled at ``--cells-per-image`` class-balanced
    cells of each frame. The timing counts feature extraction (train and validation frames),
    growth and leaf training.
    """
    from hybrid_keras.forest import ForestLayer, extract_pixel_features
    from hybrid_keras.forest.residual import grow_random_forest, train_residual_forest
    from zoo.architectures.fcn import forest_head, hypercolumn

    features = hypercolumn(fcn32s, scores=True)
    options = dict(num_trees=args.trees, max_depth=args.depth, candidates=args.candidates,
                   samples_per_tree=args.samples_per_tree, seed=args.seed)
    settings = {**options, "cells_per_image": args.cells_per_image, "learning_rate": args.forest_learning_rate}
    with Timer() as extraction:
        train_x, train_y, val_x, val_y = (
            array for split in ("train", "validation")
            for array in extract_pixel_features(features, data[split], pixels_per_image=args.cells_per_image,
                                                class_balanced=True, ignore_label=VOID, seed=args.seed, verbose=0))
    heads = {}
    for title, residual in (("residual forest", False), ("residual forest correcting FCN-32s", True)):
        base = {"base_logits": train_x[:, -CLASSES:]} if residual else {}
        validation = (val_x, val_y, val_x[:, -CLASSES:]) if residual else (val_x, val_y)
        with Timer() as training:
            forest, info = train_residual_forest(train_x, train_y, CLASSES, validation_data=validation,
                                                 epochs=args.forest_epochs, learning_rate=args.forest_learning_rate,
                                                 **base, **options)
        timing = {"training_seconds": extraction.wall + training.wall,
                  "training_cpu_seconds": extraction.cpu + training.cpu,
                  "feature_extraction_seconds": extraction.wall}
        heads[title] = (forest_head(fcn32s, forest, scores=True, residual=residual),
                        {**timing, **info, **settings, "training_cells": int(len(train_y))})
    grown = ForestLayer.from_compiled(grow_random_forest(train_x, train_y, CLASSES, **options), mode="log_sum")
    heads["forest, leaves not trained"] = (forest_head(fcn32s, grown, scores=True), settings)
    return heads


def plot(results, images, masks, predictions, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(results["heads"])
    width = 2 + len(predictions)
    fig = plt.figure(figsize=(2.6 * width, 2.0 * 3 + 3.2))
    grid = fig.add_gridspec(4, width, height_ratios=[1.6, 1, 1, 1])
    score_axis = fig.add_subplot(grid[0, : width // 2])
    time_axis = fig.add_subplot(grid[0, width // 2:])
    score_axis.bar(heads, [results["heads"][h]["test"]["mean_iou"] for h in heads], color="tab:blue")
    score_axis.set_ylabel("test mean IoU")
    time_axis.bar(heads, [results["heads"][h].get("training_seconds", 0.0) for h in heads], color="tab:orange")
    time_axis.set_ylabel("training seconds (from FCN-32s)")
    for axis in (score_axis, time_axis):
        axis.tick_params(axis="x", labelsize=7, rotation=15)
    camvid_fcn.draw_overlays([[fig.add_subplot(grid[row + 1, column]) for column in range(width)]
                              for row in range(3)], images, masks, predictions)
    return save_figure(fig, path)


def main(argv=None):
    import keras

    parser = camvid_fcn.training_arguments(__doc__.split("\n")[0])
    parser.add_argument("--fine-tune-factor", type=float, default=0.1, help="FCN-8s rate = this x --learning-rate")
    parser.add_argument("--trees", type=int, default=32)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--samples-per-tree", type=int, default=20_000)
    parser.add_argument("--cells-per-image", type=int, default=300, help="class-balanced training cells per frame")
    parser.add_argument("--forest-epochs", type=int, default=30)
    parser.add_argument("--forest-learning-rate", type=float, default=0.003, help="chosen on the validation split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few frames at 64x96, tiny forest: checks the script")
    args = parser.parse_args(argv)
    height, width = (64, 96) if args.quick else tuple(int(side) for side in args.image_size.split("x"))
    if args.quick:
        args.epochs, args.patience, args.trees, args.depth, args.forest_epochs = 2, 2, 4, 4, 2
        args.samples_per_tree = 2000
    keras.utils.set_random_seed(args.seed)
    limit = 6 if args.quick else None
    data = {split: camvid(args.data, split, (height, width), limit=limit) for split in ("train", "validation", "test")}
    test_images, test_masks = data["test"]

    fcn32s, weights_path = fcn32s_weights(args, data, height, width)
    results = {"machine": machine(), "backend": keras.backend.backend(), "image_size": [height, width],
               "backbone": args.backbone, "alpha": args.alpha,
               "initialisation": f"FCN-32s trained on CamVid train from {args.backbone_weights or 'random weights'} "
                                 f"({weights_path.name}, camvid_fcn.py)",
               "splits": {split: len(images) for split, (images, _) in data.items()},
               "arguments": {k: v for k, v in vars(args).items() if k != "data"}, "heads": {}}
    predictions = {}

    def score(title, model, extra):
        scores, predictions[title] = camvid_fcn.evaluate(model, test_images, test_masks, args.batch_size)
        results["heads"][title] = {**extra, "test": scores}
        print(f"{title}: test mean IoU {scores['mean_iou']:.3f}"
              + (f", {extra['training_seconds']:.0f} s" if "training_seconds" in extra else ""), flush=True)

    score("FCN-32s (start)", fcn32s, {})
    fcn8s, fcn8s_info = fcn8s_from_fcn32s(fcn32s, args, data)
    score("FCN-8s softmax", fcn8s, fcn8s_info)
    for title, (segmenter, info) in forest_heads(fcn32s, args, data).items():
        score(title, segmenter, info)

    forest, softmax = results["heads"]["residual forest"], results["heads"]["FCN-8s softmax"]
    results["forest_against_fcn8s"] = {
        "mean_iou_difference": forest["test"]["mean_iou"] - softmax["test"]["mean_iou"],
        "training_time_fraction": forest["training_seconds"] / softmax["training_seconds"],
        "training_cpu_time_fraction": forest["training_cpu_seconds"] / softmax["training_cpu_seconds"],
    }
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    stem = f"residual_forest_{keras.backend.backend()}_{height}x{width}" + (f"_seed{args.seed}" if args.seed else "")
    write_json(results_dir / f"{stem}.json", results)
    plot(results, test_images, test_masks, predictions, results_dir / f"{stem}.png")
    print(json.dumps(results["forest_against_fcn8s"]))


if __name__ == "__main__":
    main()
