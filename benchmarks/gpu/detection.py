"""Detection on a GPU under Keras' JAX backend: the CPU runs' detectors with longer schedules and larger images.

    KERAS_BACKEND=jax python benchmarks/gpu/detection.py --data DIR [--parts raccoon,coco128_masks] [--out DIR]
        [--seconds 180] [--size 512] [--alpha 1.0] [--quick]

The GPU machine has JAX but no TensorFlow, so nothing here touches ``tf.data`` or TFDS: the
staged Raccoon files (the author's 160 / 40 split, VOC XML boxes) are read with PIL and
ElementTree, letterboxed in NumPy the way ``hybrid_keras.detection.letterbox`` does it, and fed
to ``model.fit`` through a ``keras.utils.PyDataset`` that flips images left-right at random.
The model, its losses and its detection dictionary are the zoo's ``faster_rcnn``, as on the
CPU (``benchmarks/detection/raccoon.py``), from random initialisation; scores are the
project's ``coco_metrics`` (equal to pycocotools, which the GPU image lacks) and
``voc_average_precision``.

Runs (``--parts``): ``raccoon`` (Faster R-CNN) writes ``detection_gpu_raccoon.json``,
``detection_gpu_raccoon.png`` (test images: ground truth beside the predictions) and
``detection_gpu_training.png``; ``coco128_masks`` (Mask R-CNN on COCO128's person instances,
with ``benchmarks/detection/coco128_masks.py``'s data functions, which need no TensorFlow)
writes ``detection_gpu_coco128_masks.json`` and its two PNGs, to ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from benchmarks.detection.arrays import flipped_batches, letterbox_numpy, predict_numpy, step_counter  # noqa: E402


def raccoon_split(data_dir: Path, split: str):
    """``(images [uint8 H x W x 3], boxes [float32 G x 4 pixel x1 y1 x2 y2])`` of the author's split."""
    names = []
    with open(data_dir / f"{split}_labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            if row["filename"] not in names:
                names.append(row["filename"])
    images, boxes = [], []
    for name in names:
        image = np.asarray(Image.open(data_dir / "images" / name).convert("RGB"))
        height, width = image.shape[:2]
        objects = ElementTree.parse(data_dir / "annotations" / (Path(name).stem + ".xml")).getroot().findall("object")
        corners = [[float(node.find(f"bndbox/{key}").text) for key in ("xmin", "ymin", "xmax", "ymax")]
                   for node in objects]
        images.append(image)
        boxes.append(np.clip(np.array(corners, np.float32), 0, [width, height, width, height]))
    return images, boxes


def training_arrays(images, boxes, size: int, max_boxes: int):
    """Letterboxed images and the ``{"boxes", "labels"}`` targets, ``-1`` labels on padding rows."""
    x = np.zeros((len(images), size, size, 3), np.uint8)
    y_boxes = np.zeros((len(images), max_boxes, 4), np.float32)
    y_labels = np.full((len(images), max_boxes), -1, np.int32)
    for i, (image, image_boxes) in enumerate(zip(images, boxes)):
        x[i], _, scale, _ = letterbox_numpy(image, size)
        count = min(len(image_boxes), max_boxes)
        y_boxes[i, :count] = image_boxes[:count] * scale
        y_labels[i, :count] = 0
    return x, {"boxes": y_boxes, "labels": y_labels}


def fit_within(model, x, y, *, seconds: float, batch_size: int, learning_rate: float, seed: int):
    """``model.fit`` with Adam (clipnorm 10) on flipped batches for ``seconds`` (XLA compilation
    included): ``(history, steps, wall seconds)``."""
    import keras

    from hybrid_keras.callbacks import TimeBudget

    model.compile(keras.optimizers.Adam(learning_rate, clipnorm=10.0))
    print(f"training {model.name} ({model.count_params():,} parameters) on {len(x)} images of "
          f"{x.shape[1]} px for {seconds:.0f} s", flush=True)
    steps = step_counter()
    start = time.perf_counter()
    history = model.fit(flipped_batches(x, y, batch_size, seed), epochs=100_000, verbose=2,
                        callbacks=[TimeBudget(seconds), steps]).history
    return history, steps.count, time.perf_counter() - start


def faster_rcnn_raccoon(data_dir: Path, out: Path, *, seconds: float, size: int, alpha: float, batch_size: int,
                        learning_rate: float, seed: int, quick: bool) -> dict:
    import keras

    import zoo
    from benchmarks.detection.raccoon import DETECTOR, LOSSES, plot_detections, plot_training
    from hybrid_keras.detection import coco_metrics, voc_average_precision

    keras.utils.set_random_seed(seed)
    train_images, train_boxes = raccoon_split(data_dir / "raccoon", "train")
    test_images, test_boxes = raccoon_split(data_dir / "raccoon", "test")
    if quick:
        test_images, test_boxes = test_images[:8], test_boxes[:8]
    x, y = training_arrays(train_images, train_boxes, size, max_boxes=8)
    model = zoo.load("faster_rcnn", backbone="mobilenet_v2", alpha=alpha, classes=1, input_shape=(size, size, 3),
                     seed=seed, **DETECTOR)
    for layer in model.backbone.layers:  # as on the CPU: faster-moving BN statistics from scratch
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    history, steps, wall = fit_within(model, x, y, seconds=seconds, batch_size=batch_size,
                                      learning_rate=learning_rate, seed=seed)

    truth = [{"boxes": boxes, "labels": np.zeros(len(boxes), int)} for boxes in test_boxes]
    detections, seconds_per_image = predict_numpy(model, test_images, size, batch_size=8)
    coco = coco_metrics(truth, detections)
    voc = voc_average_precision(truth, detections)
    plot_detections(test_images, truth, detections, out / "detection_gpu_raccoon.png")
    plot_training(history, out / "detection_gpu_training.png")
    print(f"raccoon: {steps} steps in {wall:.0f} s; AP {coco['AP']:.3f} AP50 {coco['AP50']:.3f} "
          f"VOC AP50 {voc['mAP']:.3f}; {seconds_per_image * 1000:.1f} ms per image", flush=True)
    return {
        "data": f"raccoon: train 160 (the author's split), test {len(test_images)}; letterboxed to {size}x{size}",
        "model": f"zoo faster_rcnn, mobilenet_v2 alpha {alpha} backbone at stride 16, random initialisation",
        "detector": {k: list(v) if isinstance(v, tuple) else v for k, v in DETECTOR.items()},
        "training": {"seconds_budget": seconds, "wall_seconds": wall, "steps": steps,
                     "epochs": len(history["loss"]), "batch_size": batch_size,
                     "optimizer": f"Adam {learning_rate}, clipnorm 10", "augmentation": "left-right flips",
                     "final_losses": {name: history[name][-1] for name in LOSSES + ("loss",)},
                     "note": "wall seconds include the XLA compilation of the training step"},
        "history": {name: history[name] for name in LOSSES + ("loss",)},
        "test": {"coco": coco, "voc_ap50": voc["mAP"], "inference_seconds_per_image": seconds_per_image,
                 "inference_batch_size": 8},
    }


def mask_rcnn_coco128(data_dir: Path, out: Path, *, seconds: float, size: int, alpha: float, batch_size: int,
                      learning_rate: float, seed: int, quick: bool) -> dict:
    """Mask R-CNN on COCO128's person instances, as ``benchmarks/detection/coco128_masks.py``
    runs it on the CPU (its NumPy data functions, split and scoring), at a larger size."""
    import keras

    from benchmarks.detection import coco128_masks as cpu
    from benchmarks.detection.raccoon import plot_training

    keras.utils.set_random_seed(seed)
    data = cpu.load_coco128_masks_numpy(data_dir)
    train, test = (cpu.person_subset(part) for part in cpu.split_by_id(data))
    x, y = cpu.training_arrays(train, size, max(len(labels) for labels in train["labels"]))
    model = cpu.build_model(size, alpha, 1, seed, mask_channels=256)
    history, steps, wall = fit_within(model, x, y, seconds=seconds, batch_size=batch_size,
                                      learning_rate=learning_rate, seed=seed)
    detections, seconds_per_image = predict_numpy(model, test["images"], size, cpu.BATCH)
    scores = cpu.evaluate(test, detections)
    cpu.plot_predictions(test, detections, out / "detection_gpu_coco128_masks.png")
    plot_training(history, out / "detection_gpu_coco128_masks_training.png",
                  f"Mask R-CNN, COCO128 person, random init, {size} px, one GPU", cpu.LOSSES)
    print(f"coco128 person: {steps} steps in {wall:.0f} s; box AP {scores['box']['AP']:.3f} AP50 "
          f"{scores['box']['AP50']:.3f}; mask AP {scores['mask']['AP']:.3f} AP50 {scores['mask']['AP50']:.3f}; "
          f"{seconds_per_image * 1000:.1f} ms per image", flush=True)
    return {
        "data": (f"coco128 instances, first {cpu.TRAIN_IMAGES} images by id train, the rest test; person instances "
                 f"of images with a person: {len(train['ids'])} training and {len(test['ids'])} test images; "
                 f"letterboxed to {size}x{size}"),
        "model": (f"zoo mask_rcnn, mobilenet_v2 alpha {alpha} at stride 16, 256-channel mask head, "
                  "random initialisation"),
        "training": {"seconds_budget": seconds, "wall_seconds": wall, "steps": steps,
                     "epochs": len(history["loss"]), "batch_size": batch_size,
                     "optimizer": f"Adam {learning_rate}, clipnorm 10", "augmentation": "left-right flips",
                     "final_losses": {name: history[name][-1] for name in cpu.LOSSES + ("loss",)},
                     "note": "wall seconds include the XLA compilation of the training step"},
        "history": {name: history[name] for name in cpu.LOSSES + ("loss",)},
        "test": {"box": scores["box"], "mask": scores["mask"], "inference_seconds_per_image": seconds_per_image},
        "published": cpu.PUBLISHED,
    }


PARTS = {"raccoon": faster_rcnn_raccoon, "coco128_masks": mask_rcnn_coco128}


def main(argv=None) -> int:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from benchmarks.gpu.run import machine

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="folder holding raccoon/ (the staged data)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--parts", default="raccoon,coco128_masks", help=f"which runs, of {', '.join(PARTS)}")
    parser.add_argument("--seconds", type=float, default=180.0, help="training budget of each run")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="160-pixel images, 20 s: a check that it runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.size, args.alpha, args.batch_size = 20.0, 160, 0.35, 4
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine(), "quick": args.quick}
    print(json.dumps(results["machine"]), flush=True)
    for part in args.parts.split(","):
        results[part] = PARTS[part](
            args.data, args.out, seconds=args.seconds, size=args.size, alpha=args.alpha, batch_size=args.batch_size,
            learning_rate=args.learning_rate, seed=args.seed, quick=args.quick)
        results["tensorflow_imported"] = "tensorflow" in sys.modules
        path = args.out / f"detection_gpu_{part}.json"
        path.write_text(json.dumps({"machine": results["machine"], "quick": args.quick, part: results[part],
                                    "tensorflow_imported": results["tensorflow_imported"]},
                                   indent=2, default=float) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
