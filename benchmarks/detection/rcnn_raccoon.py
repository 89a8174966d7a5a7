"""R-CNN (SVM head and forest head) and Fast R-CNN on Raccoon, on the same selective-search proposals.

Data: the author's split, 160 training and 40 test images, each resized so its longer side is
``--size`` pixels (aspect kept). Proposals: OpenCV's selective search, "fast" mode, on the
resized image, at most ``--proposals`` per image (deterministic:
``hybrid_keras.detection.proposals``); computed once per run and cached in memory, their
count and their recall of the ground truth at IoU 0.5 / 0.7 are reported.

- **R-CNN, SVMs** (``zoo.load("rcnn", head="svm")``): MobileNetV2 (alpha ``--alpha``) on
  ``--crop``-pixel warped crops, fine-tuned for ``--finetune-steps`` batches of 32 foreground
  and 96 background windows (Adam), then per-class linear SVMs with hard-negative mining and
  ridge box regressors on its pooled features; NMS 0.3.
- **R-CNN, forest** (``detector.forest_detector()``): the same backbone, features, ground-truth
  rows, final hard-negative caches and box regressors; a random forest (YDF, 100 trees) in
  place of the SVMs, its class probability as the score.
- **Fast R-CNN** (``zoo.load("fast_rcnn")``, ``FasterRCNN(rpn=False)``, RoI max pooling): the
  same backbone architecture, a fresh random initialisation, trained with ``model.fit`` for
  ``--fast-seconds`` on the same proposals (images letterboxed to ``--size`` square).

All start from random weights: no ImageNet weights can be downloaded here, and R-CNN's
published results (53.7 mAP on VOC 2010 with box regression) rest on an ImageNet-trained
network fine-tuned on VOC, so these numbers are not comparable with the paper's.

Reports, on the 40 test images: COCO AP@[.5:.95], AP50, AP75 (``coco_metrics``) and VOC AP50,
training wall and CPU seconds, inference seconds per image (proposals apart: selective
search's time per image is reported on its own). Writes
``benchmarks/results/detection_rcnn_raccoon.json``, ``detection_rcnn_raccoon_<method>.png``
(ground truth beside the predictions) and ``detection_rcnn_raccoon_bars.png``.

    ./dev.sh bench benchmarks/detection/rcnn_raccoon.py [--quick]
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
from benchmarks.detection.raccoon import load_split, plot_detections  # noqa: E402

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
METHODS = ("rcnn_svm", "rcnn_forest", "fast_rcnn")
FAST_DETECTOR = dict(representation_size=512, roi_batch_size=128, detection_candidates=300, max_detections=100)
MAX_BOXES = 8


def resized_examples(dataset, size: int):
    """Examples with the image resized so its longer side is ``size`` (normalised boxes unchanged),
    plus the originals and their ground truth in original pixels."""
    from hybrid_keras.detection import letterbox

    examples, originals, truth = [], [], []
    for example in dataset.as_numpy_iterator():
        image = example["image"]
        padded, (height, width) = letterbox(image, (size, size))
        small = padded.numpy()[:int(height), :int(width)].astype(np.uint8)
        bbox = example["objects"]["bbox"].reshape(-1, 4)
        labels = example["objects"]["label"].astype(np.int64)
        examples.append({"image": small, "objects": {"bbox": bbox, "label": labels}})
        originals.append(image)
        h, w = image.shape[:2]
        truth.append({"boxes": bbox[:, [1, 0, 3, 2]] * [w, h, w, h], "labels": labels})
    return examples, originals, truth


def pixel_boxes(example):
    h, w = example["image"].shape[:2]
    return example["objects"]["bbox"][:, [1, 0, 3, 2]] * np.float32([w, h, w, h])


def propose_all(examples, mode: str, count: int):
    from hybrid_keras.detection.proposals import selective_search

    proposals, seconds = [], []
    for example in examples:
        start = time.perf_counter()
        proposals.append(selective_search(example["image"], mode, count))
        seconds.append(time.perf_counter() - start)
    return proposals, seconds


def padded(proposals, count: int):
    out = np.zeros((len(proposals), count, 4), np.float32)
    for i, boxes in enumerate(proposals):
        out[i, :min(count, len(boxes))] = boxes[:count]
    return out


def to_original(outputs, i, examples, originals, scale_shape=None):
    """One image's detections (normalised yxyx of the model's input) in original pixels, labels 0-based."""
    count = int(outputs["num_detections"][i])
    yxyx = np.asarray(outputs["detection_boxes"][i, :count], np.float64)
    if scale_shape is not None:  # letterboxed: normalised to the padded square
        size = scale_shape
        h, w = examples[i]["image"].shape[:2]
        yxyx = yxyx * [size / h, size / w, size / h, size / w]
    height, width = originals[i].shape[:2]
    yxyx = np.clip(yxyx, 0, 1) * [height, width, height, width]
    return {"boxes": yxyx[:, [1, 0, 3, 2]], "scores": np.asarray(outputs["detection_scores"][i, :count]),
            "labels": np.asarray(outputs["detection_classes"][i, :count]).astype(int) - 1}


def rcnn_predict(detector, examples, proposals, originals):
    import keras

    detector.model((examples[0]["image"][None].astype(np.float32), proposals[0][None]))  # warm up
    detections, seconds = [], 0.0
    for i, example in enumerate(examples):
        start = time.perf_counter()
        outputs = detector.model((example["image"][None].astype(np.float32), proposals[i][None]))
        outputs = {k: keras.ops.convert_to_numpy(v) for k, v in outputs.items()}
        seconds += time.perf_counter() - start
        detections.append(to_original(outputs, 0, [example], [originals[i]]))
    return detections, seconds / len(examples)


def letterboxed(examples, size: int):
    images = np.zeros((len(examples), size, size, 3), np.float32)
    for i, example in enumerate(examples):
        h, w = example["image"].shape[:2]
        images[i, :h, :w] = example["image"]
    return images


def train_fast_rcnn(args, examples, proposals):
    import keras
    import tensorflow as tf

    import zoo
    from hybrid_keras.callbacks import TimeBudget

    images = letterboxed(examples, args.size)
    boxes = np.zeros((len(examples), MAX_BOXES, 4), np.float32)
    labels = -np.ones((len(examples), MAX_BOXES), np.int32)
    for i, example in enumerate(examples):
        gt = pixel_boxes(example)[:MAX_BOXES]
        boxes[i, :len(gt)], labels[i, :len(gt)] = gt, example["objects"]["label"][:MAX_BOXES]
    data = (tf.data.Dataset.from_tensor_slices(((images, padded(proposals, args.proposals)),
                                                {"boxes": boxes, "labels": labels}))
            .shuffle(len(examples), seed=args.seed).repeat().batch(args.batch_size))
    model = zoo.load("fast_rcnn", backbone="mobilenet_v2", alpha=args.alpha, classes=1,
                     input_shape=(args.size, args.size, 3), seed=args.seed, **FAST_DETECTOR)
    for layer in model.backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=10.0))
    with Timer() as timer:
        history = model.fit(data, epochs=10_000, steps_per_epoch=len(examples) // args.batch_size, verbose=2,
                            callbacks=[TimeBudget(args.fast_seconds)]).history
    steps = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    return model, {"wall_seconds": timer.wall, "cpu_seconds": timer.cpu, "steps": steps, "epochs": len(history["loss"]),
                   "batch_size": args.batch_size, "optimizer": f"Adam {args.learning_rate}, clipnorm 10",
                   "seconds_budget": args.fast_seconds,
                   "final_losses": {k: v[-1] for k, v in history.items()}}


def fast_predict(model, examples, proposals, originals, size: int, count: int):
    images, boxes = letterboxed(examples, size), padded(proposals, count)
    model.predict((images[:1], boxes[:1]), verbose=0)
    start = time.perf_counter()
    outputs = model.predict((images, boxes), batch_size=4, verbose=0)
    seconds = (time.perf_counter() - start) / len(images)
    return [to_original(outputs, i, examples, originals, size) for i in range(len(images))], seconds


def plot_bars(results: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ("AP", "AP50", "AP75", "VOC AP50")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(METHODS)
    for j, method in enumerate(METHODS):
        test = results[method]["test"]
        values = [test["coco"]["AP"], test["coco"]["AP50"], test["coco"]["AP75"], test["voc_ap50"]]
        bars = ax.bar(np.arange(len(metrics)) + (j - 1) * width, values, width, label=method.replace("_", " "))
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(metrics)), metrics)
    ax.set_ylim(0, 1)
    ax.set_title("Raccoon, 40 test images, random initialisation, same selective-search proposals", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def main(argv=None):
    import keras

    import zoo
    from hybrid_keras.detection import coco_metrics, voc_average_precision
    from hybrid_keras.detection.proposals import proposal_recall

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--size", type=int, default=256, help="longer image side for proposals and training")
    parser.add_argument("--proposals", type=int, default=500, help="selective-search boxes kept per image")
    parser.add_argument("--mode", default="fast", choices=("fast", "quality"))
    parser.add_argument("--crop", type=int, default=64, help="R-CNN's warped crop size")
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--fast-seconds", type=float, default=240.0, help="Fast R-CNN training budget (wall)")
    parser.add_argument("--batch-size", type=int, default=4, help="Fast R-CNN images per batch")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="24 / 8 images, 160 px, short training: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.proposals, args.finetune_steps, args.fast_seconds = 160, 150, 10, 20.0
    keras.utils.set_random_seed(args.seed)
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR

    train, train_originals, _ = resized_examples(load_split(args.data, "train[:24]" if args.quick else "train"),
                                                 args.size)
    test, test_originals, truth = resized_examples(load_split(args.data, "test[:8]" if args.quick else "test"),
                                                   args.size)
    print(f"selective search ({args.mode}) on {len(train) + len(test)} images ...", flush=True)
    train_proposals, train_ss = propose_all(train, args.mode, args.proposals)
    test_proposals, test_ss = propose_all(test, args.mode, args.proposals)
    proposals_info = {
        "method": f"OpenCV selective search, {args.mode} mode, on images resized to {args.size} px (longer side)",
        "max_per_image": args.proposals,
        "mean_per_image": {"train": float(np.mean([len(p) for p in train_proposals])),
                           "test": float(np.mean([len(p) for p in test_proposals]))},
        "recall_train": proposal_recall(train_proposals, [pixel_boxes(e) for e in train]),
        "recall_test": proposal_recall(test_proposals, [pixel_boxes(e) for e in test]),
        "seconds_per_image": float(np.mean(train_ss + test_ss)),
    }
    print(proposals_info, flush=True)

    results = {"machine": machine(), "load": machine_load(), "backend": keras.backend.backend(),
               "data": (f"raccoon: train {len(train)} (the author's split), test {len(test)}; images resized to "
                        f"{args.size} px on the longer side"),
               "initialisation": "random (no ImageNet weights) for every network",
               "proposals": proposals_info}

    detector = zoo.load("rcnn", backbone="mobilenet_v2", alpha=args.alpha, classes=1, head="svm", crop_size=args.crop,
                        seed=args.seed)
    for layer in detector.backbone.layers:  # short runs from scratch: faster-moving BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    with Timer() as timer:
        record = detector.fit(train, proposals=train_proposals, finetune_steps=args.finetune_steps,
                              optimizer=keras.optimizers.Adam(args.learning_rate))
    svm_training = {"wall_seconds": timer.wall, "cpu_seconds": timer.cpu, "stages_seconds": record["seconds"],
                    "finetune_steps": args.finetune_steps,
                    "finetune_windows": record["finetune"]["windows"],
                    "finetune_final_loss": float(np.mean(record["finetune"]["loss"][-20:])),
                    "finetune_final_accuracy": float(np.mean(record["finetune"]["accuracy"][-20:])),
                    "svm_positives": record["positives"], "svm_negative_pool": record["negatives"],
                    "hard_negative_rounds": record["hard_negatives"],
                    "regression_examples": record["regression_examples"]}
    with Timer() as timer:
        forest = detector.forest_detector()
    shared = timer.wall
    forest_training = {"wall_seconds": svm_training["wall_seconds"] - record["seconds"]["svm"] + timer.wall,
                       "cpu_seconds_forest_only": timer.cpu, "forest_wall_seconds": shared,
                       "note": ("shares the SVM pipeline's proposals, fine-tuning, features and hard-negative caches; "
                                "wall = the SVM pipeline's minus its SVM stage plus the forest's"),
                       "forest": "YDF random forest, 100 trees, depth 16", "rows": forest.history["forest_rows"]}

    detections, seconds = {}, {}
    detections["rcnn_svm"], seconds["rcnn_svm"] = rcnn_predict(detector, test, test_proposals, test_originals)
    detections["rcnn_forest"], seconds["rcnn_forest"] = rcnn_predict(forest, test, test_proposals, test_originals)

    fast_model, fast_training = train_fast_rcnn(args, train, train_proposals)
    detections["fast_rcnn"], seconds["fast_rcnn"] = fast_predict(fast_model, test, test_proposals, test_originals,
                                                                 args.size, args.proposals)

    models = {
        "rcnn_svm": (f"zoo rcnn head='svm': mobilenet_v2 alpha {args.alpha}, {args.crop}-px warped crops "
                     "(context 16/227), "
                     "linear SVMs (C 0.001, positive weight 2, 3 hard-negative rounds), ridge box regression, NMS 0.3"),
        "rcnn_forest": "as rcnn_svm with a YDF random forest (100 trees) in place of the SVMs",
        "fast_rcnn": (f"zoo fast_rcnn: mobilenet_v2 alpha {args.alpha} stride 16, RoI max pooling 7x7, "
                      f"{args.size}-px letterboxed input, fed the same proposals"),
    }
    trainings = {"rcnn_svm": svm_training, "rcnn_forest": forest_training, "fast_rcnn": fast_training}
    for method in METHODS:
        coco = coco_metrics(truth, detections[method])
        voc = voc_average_precision(truth, detections[method])
        results[method] = {"model": models[method], "training": trainings[method],
                           "test": {"coco": coco, "voc_ap50": voc["mAP"],
                                    "inference_seconds_per_image": seconds[method],
                                    "proposal_seconds_per_image": proposals_info["seconds_per_image"],
                                    "mean_detections_per_image": float(np.mean([len(d["scores"])
                                                                                for d in detections[method]]))}}
        threshold = 0.0 if method == "rcnn_svm" else 0.5
        plot_detections(test_originals, truth, detections[method], results_dir / f"detection_rcnn_raccoon_{method}.png",
                        count=min(8, len(test)), threshold=threshold)
        print(f"{method}: AP {coco['AP']:.3f}, AP50 {coco['AP50']:.3f}, AP75 {coco['AP75']:.3f}, VOC AP50 "
              f"{voc['mAP']:.3f}; {seconds[method] * 1000:.0f} ms per image (+ proposals)", flush=True)
    results["published"] = ("R-CNN (AlexNet, ImageNet-trained then fine-tuned, with box regression): 53.7 mAP on "
                            "VOC 2010 "
                            "test, 58.5 on VOC 2007 test; not comparable (other data, pretrained network)")
    write_json(results_dir / "detection_rcnn_raccoon.json", results)
    plot_bars(results, results_dir / "detection_rcnn_raccoon_bars.png")


if __name__ == "__main__":
    main()
