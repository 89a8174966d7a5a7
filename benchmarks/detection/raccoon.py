"""Faster R-CNN on Raccoon: trained from scratch on the 160 training images, AP on the 40 test images.

The zoo ``faster_rcnn`` (MobileNetV2 backbone, alpha ``--alpha``) starts from random weights:
no ImageNet weights can be downloaded here, so the backbone learns from 160 photos, which is
far from the published setting (torchvision's Faster R-CNN starts from an ImageNet backbone
and reaches 37.0 box AP on COCO val2017 with ResNet-50 FPN). Images are letterboxed to
``--size`` pixels square (longer side fitted, padded below or right; boxes follow), randomly
flipped left-right in training, and batched by ``hybrid_keras.detection.detection_batches``;
``model.fit`` trains for ``--seconds`` (the step count is reported: prefer it to seconds on a
shared machine) with Adam. Test images are letterboxed the same way and the detections are
mapped back onto the original image (``restore_boxes``) before scoring.

Reports, on the author's 40 test images: COCO AP@[.5:.95], AP50, AP75 (``coco_metrics``, equal
to pycocotools) and VOC AP@0.5 (``voc_average_precision``), plus training steps, wall and CPU
seconds and inference time per image. Writes ``benchmarks/results/detection_raccoon.json``,
``detection_raccoon.png`` (test images: ground truth beside the predictions) and
``detection_raccoon_training.png`` (the four losses per epoch).

    ./dev.sh bench benchmarks/detection/raccoon.py [--seconds 780] [--size 256] [--alpha 0.35] [--quick]
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

from benchmarks.common import (DEFAULT_DATA_DIR, RESULTS_DIR, Timer, machine, machine_load, save_figure,  # noqa: E402
                               write_json)

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
# Raccoons fill much of each photo: anchors from 32 to 256 pixels on a 256-pixel input; fewer
# proposals than torchvision's 2000/1000 keep a CPU step short.
DETECTOR = dict(anchor_sizes=(32, 64, 128, 256), rpn_pre_nms_top_n=(1000, 500), rpn_post_nms_top_n=(500, 300),
                roi_batch_size=128, representation_size=512, detection_candidates=300, max_detections=100)
LOSSES = ("rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss")


def load_split(data_dir: Path, split: str):
    from hybrid_keras import datasets

    return datasets.load("raccoon", split=split, manual_dir=data_dir / "raccoon")


def flip(images, targets):
    """Mirror a batch left-right with probability 1/2 per image (boxes follow)."""
    import tensorflow as tf

    width = tf.cast(tf.shape(images)[2], tf.float32)
    flipped = tf.random.uniform((tf.shape(images)[0],)) < 0.5
    images = tf.where(flipped[:, None, None, None], tf.reverse(images, axis=[2]), images)
    boxes = targets["boxes"]
    mirrored = tf.stack([width - boxes[..., 2], boxes[..., 1], width - boxes[..., 0], boxes[..., 3]], axis=-1)
    present = (targets["labels"] >= 0)[..., None]
    boxes = tf.where(flipped[:, None, None] & present, mirrored, boxes)
    return images, {"boxes": boxes, "labels": targets["labels"]}


def test_set(dataset, size: int):
    """``(letterboxed float images [N, size, size, 3], resized sizes [N, 2], original images, ground truth)``."""
    from hybrid_keras.detection import letterbox

    images, resized, originals, truth = [], [], [], []
    for example in dataset.as_numpy_iterator():
        image = example["image"]
        padded, resized_size = letterbox(image, (size, size))
        images.append(padded.numpy())
        resized.append(resized_size.numpy())
        originals.append(image)
        height, width = image.shape[:2]
        bbox = example["objects"]["bbox"].reshape(-1, 4)
        truth.append({"boxes": bbox[:, [1, 0, 3, 2]] * [width, height, width, height],
                      "labels": example["objects"]["label"].astype(int)})
    return np.stack(images), np.stack(resized), originals, truth


def predict(model, images, resized, originals, size: int):
    """Detections per test image in its own pixels (labels 0-based), and seconds per image."""
    from hybrid_keras.detection import restore_boxes

    model.predict(images[:1], verbose=0)  # trace / warm up
    start = time.perf_counter()
    outputs = model.predict(images, batch_size=8, verbose=0)
    seconds = (time.perf_counter() - start) / len(images)
    boxes = restore_boxes(outputs["detection_boxes"], resized, (size, size)).numpy()
    detections = []
    for i, image in enumerate(originals):
        count = int(outputs["num_detections"][i])
        height, width = image.shape[:2]
        yxyx = boxes[i, :count] * [height, width, height, width]
        detections.append({"boxes": yxyx[:, [1, 0, 3, 2]], "scores": outputs["detection_scores"][i, :count],
                           "labels": outputs["detection_classes"][i, :count].astype(int) - 1})
    return detections, seconds


def plot_detections(originals, truth, detections, path: Path, count: int = 8, threshold: float = 0.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    fig, axes = plt.subplots(count // 2, 4, figsize=(13, 3.2 * count // 2))
    for i, ax_pair in zip(range(count), axes.reshape(-1, 2)):
        for ax, (title, boxes, scores, colour) in zip(ax_pair, (
                ("ground truth", truth[i]["boxes"], None, "lime"),
                (f"predicted (score > {threshold}, else the best)", detections[i]["boxes"], detections[i]["scores"],
                 "red"))):
            ax.imshow(originals[i])
            ax.set_axis_off()
            ax.set_title(f"test {i}: {title}", fontsize=8)
            shown = range(len(boxes))
            if scores is not None:
                shown = [j for j in shown if scores[j] > threshold] or list(range(min(1, len(boxes))))
            for j in shown:
                x1, y1, x2, y2 = boxes[j]
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colour, linewidth=2))
                if scores is not None:
                    ax.text(x1, y1, f"{scores[j]:.2f}", color="white", fontsize=7, backgroundcolor=colour)
    save_figure(fig, path)
    plt.close(fig)


def plot_training(history: dict, path: Path, title: str = "Faster R-CNN on Raccoon, from random weights",
                  losses: tuple = LOSSES):
    """Each loss term (and their sum) per epoch, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in losses + ("loss",):
        ax.plot(np.arange(1, len(history[name]) + 1), history[name], label=name)
    ax.set_xlabel("epoch (the training images once)")
    ax.set_ylabel("mean loss")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    import keras

    import zoo
    from hybrid_keras.callbacks import TimeBudget
    from hybrid_keras.detection import coco_metrics, detection_batches, voc_average_precision

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seconds", type=float, default=780.0, help="training budget (wall clock)")
    parser.add_argument("--size", type=int, default=256, help="letterboxed input size")
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--quick", action="store_true", help="160-pixel images, 60 s, 16 test images: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.size = 60.0, 160
    keras.utils.set_random_seed(args.seed)

    train = load_split(args.data, "train")
    test = load_split(args.data, "test[:16]" if args.quick else "test")
    batches = detection_batches(train, image_size=(args.size, args.size), batch_size=args.batch_size, classes=1,
                                max_boxes=8, shuffle=160, seed=args.seed, repeat=True).map(flip)
    steps_per_epoch = 160 // args.batch_size

    model = zoo.load("faster_rcnn", backbone="mobilenet_v2", alpha=args.alpha, classes=1,
                     input_shape=(args.size, args.size, 3), seed=args.seed, **DETECTOR)
    for layer in model.backbone.layers:  # short runs from scratch: faster-moving BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=10.0), jit_compile=args.jit)
    print(f"training {model.name} ({model.count_params():,} parameters) for {args.seconds:.0f} s", flush=True)
    with Timer() as timer:
        history = model.fit(batches, epochs=10_000, steps_per_epoch=steps_per_epoch, verbose=2,
                            callbacks=[TimeBudget(args.seconds)]).history
    epochs = len(history["loss"])
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))

    images, resized, originals, truth = test_set(test, args.size)
    detections, seconds_per_image = predict(model, images, resized, originals, args.size)
    coco = coco_metrics(truth, detections)
    voc = voc_average_precision(truth, detections)
    results = {
        "machine": machine(), "load": machine_load(), "backend": keras.backend.backend(),
        "data": f"raccoon: train 160 (the author's split), test {len(originals)}; letterboxed to {args.size}x{args.size}",
        "model": (f"zoo faster_rcnn, mobilenet_v2 alpha {args.alpha} backbone at stride 16, random initialisation "
                  "(no ImageNet weights)"),
        "detector": {k: list(v) if isinstance(v, tuple) else v for k, v in DETECTOR.items()},
        "training": {"seconds_budget": args.seconds, "wall_seconds": timer.wall, "cpu_seconds": timer.cpu,
                     "steps": steps, "epochs": epochs, "batch_size": args.batch_size, "xla": args.jit,
                     "optimizer": f"Adam {args.learning_rate}, clipnorm 10", "augmentation": "left-right flips",
                     "final_losses": {name: history[name][-1] for name in LOSSES + ("loss",)}},
        "history": {name: history[name] for name in LOSSES + ("loss",)},
        "test": {"coco": coco, "voc_ap50": voc["mAP"], "inference_seconds_per_image": seconds_per_image,
                 "mean_detections_per_image": float(np.mean([len(d["scores"]) for d in detections]))},
        "published": ("torchvision Faster R-CNN ResNet-50 FPN, ImageNet backbone, COCO val2017: 37.0 box AP "
                      "(not comparable: other data, pretrained backbone)"),
    }
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    write_json(results_dir / "detection_raccoon.json", results)
    plot_detections(originals, truth, detections, results_dir / "detection_raccoon.png")
    plot_training(history, results_dir / "detection_raccoon_training.png")
    print(f"{steps} steps ({epochs} epochs) in {timer.wall:.0f} s wall / {timer.cpu:.0f} s CPU; test AP "
          f"{coco['AP']:.3f}, AP50 {coco['AP50']:.3f}, AP75 {coco['AP75']:.3f}, VOC AP50 {voc['mAP']:.3f}; "
          f"{seconds_per_image * 1000:.0f} ms per image")


if __name__ == "__main__":
    main()
