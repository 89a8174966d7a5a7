"""Mask R-CNN on COCO128's instance masks: trained from random weights, box and mask AP on held-out images.

Data: the 100 COCO128 images with COCO panoptic annotations (this project's ``coco128``
``instances`` config; one instance per "thing" segment), in image-id order: the first 80 for
training, the last 20 for testing. From random initialisation on a CPU the 80 classes are out
of reach, so the default task is the ``person`` subset: images with at least one person, and
person instances only (crowd segments are left out of training and count as COCO crowd regions,
neither rewarded nor penalised, in the evaluation). ``--classes all`` trains and scores all 80
classes instead.

The zoo ``mask_rcnn`` (MobileNetV2 alpha ``--alpha`` at stride 16, random weights: no ImageNet
weights can be downloaded here) takes images letterboxed to ``--size`` pixels square (longer
side fitted, zero padding below or right; boxes and masks follow), mirrored left-right at random
in training, and trains with ``model.fit`` (Adam) for ``--seconds``. Test detections are mapped
back onto each original image: boxes scaled, the 28 x 28 box masks pasted at the image's size
(``paste_masks``, threshold 0.5). Scores: COCO box and mask AP, AP50, AP75 (the project's
``coco_metrics``, and pycocotools' ``COCOeval`` on RLE-encoded masks where it is installed:
both are reported), training wall and CPU seconds and steps, inference time per image.

Published context (not comparable: ImageNet-initialised ResNet-50 FPN, 118k training images,
all classes): torchvision's Mask R-CNN reaches 37.9 box AP and 34.6 mask AP on COCO val2017.

The data loading needs only NumPy and PIL (no TensorFlow): :func:`load_coco128_masks_numpy`,
:func:`person_subset`, :func:`split_by_id` and :func:`training_arrays` are
importable by scripts for machines without TensorFlow, with :func:`build_model`,
:func:`evaluate` (and ``benchmarks.detection.arrays``' letterboxing and batches).

    ./dev.sh bench benchmarks/detection/coco128_masks.py [--seconds 900] [--size 256] [--classes person|all] [--quick]

Writes ``benchmarks/results/detection_coco128_masks.json``, ``detection_coco128_masks.png``
(test images: ground truth beside the predicted masks and boxes) and
``detection_coco128_masks_training.png`` (the five losses per epoch).
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
from PIL import Image  # noqa: E402

from benchmarks.detection.arrays import flipped_batches, letterbox_numpy, predict_numpy, step_counter  # noqa: E402
from benchmarks.detection.raccoon import plot_training  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
TRAIN_IMAGES = 80  # of the 100 in id order; the rest are the test images
BATCH = 4  # images per forward pass when predicting
PERSON = 0  # TFDS coco/2017's label of "person"
# Persons fill anything from a few pixels to the whole photo: anchors from 16 to 256 pixels on a
# 256-pixel input. Fewer proposals and sampled RoIs than torchvision's, and a 64-channel mask
# head (the paper's 256 is configurable), keep a CPU step short.
DETECTOR = dict(anchor_sizes=(16, 32, 64, 128, 256), rpn_pre_nms_top_n=(1000, 500), rpn_post_nms_top_n=(500, 300),
                roi_batch_size=128, representation_size=512, detection_candidates=300, max_detections=100,
                mask_channels=64)
LOSSES = ("rpn_objectness_loss", "rpn_box_loss", "classifier_loss", "box_loss", "mask_loss")
PUBLISHED = ("torchvision Mask R-CNN ResNet-50 FPN, ImageNet backbone, COCO train2017 (118k images), COCO val2017: "
             "37.9 box AP / 34.6 mask AP (not comparable: pretrained backbone, all classes, 1,500x the data)")


# ----------------------------------------------------------------------------- data (NumPy + PIL only)

def load_coco128_masks_numpy(data_dir, split: str = "validation") -> dict:
    """COCO128's images with panoptic instance masks, as the ``coco128`` ``instances`` config
    reads them, with NumPy and PIL only (no TensorFlow): ``data_dir`` holds ``coco128/``.

    Returns a dict of per-image lists, in image-id order: ``ids``, ``images`` (uint8 ``[H, W, 3]``),
    ``boxes`` (float32 ``[G, 4]`` pixel ``[x1, y1, x2, y2]``), ``labels`` (int32 ``[G]``, TFDS
    coco/2017's 0-79), ``masks`` (uint8 0/1 ``[G, H, W]``) and ``iscrowd`` (bool ``[G]``); and
    ``classes``, the 80 class names."""
    folder = {"validation": "val2017", "train": "train2017"}[split]
    root = Path(data_dir) / "coco128"
    panoptic = json.loads((root / "panoptic" / f"panoptic_{folder}.json").read_text())
    things = sorted((c["id"], c["name"]) for c in panoptic["categories"] if c.get("isthing"))
    label_of = {category_id: label for label, (category_id, _) in enumerate(things)}
    segments_of = {a["image_id"]: a for a in panoptic["annotations"]}
    data = {key: [] for key in ("ids", "images", "boxes", "labels", "masks", "iscrowd")}
    for info in sorted(panoptic["images"], key=lambda i: i["id"]):
        annotation = segments_of[info["id"]]
        with Image.open(root / "panoptic" / f"panoptic_{folder}" / annotation["file_name"]) as png:
            rgb = np.asarray(png.convert("RGB"), np.uint32)
        segment_ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        with Image.open(root / "images" / folder / info["file_name"]) as image:
            pixels = np.asarray(image.convert("RGB"))
        segments = [s for s in annotation["segments_info"] if s["category_id"] in label_of]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (s["bbox"] for s in segments)]
        data["ids"].append(info["id"])
        data["images"].append(pixels)
        data["boxes"].append(np.array(boxes, np.float32).reshape(-1, 4))
        data["labels"].append(np.array([label_of[s["category_id"]] for s in segments], np.int32))
        data["masks"].append(np.array([segment_ids == s["id"] for s in segments], np.uint8).reshape(
            -1, *segment_ids.shape))
        data["iscrowd"].append(np.array([bool(s["iscrowd"]) for s in segments], bool))
    data["classes"] = [name for _, name in things]
    return data


def _select(data: dict, images, keep=None) -> dict:
    """The images at indices ``images``, each with its objects where ``keep(data, i)`` says so."""
    out = {key: [] for key in ("ids", "images", "boxes", "labels", "masks", "iscrowd")}
    for i in images:
        objects = keep(data, i) if keep else np.ones(len(data["labels"][i]), bool)
        for key in out:
            value = data[key][i]
            out[key].append(value if key in ("ids", "images") else value[objects])
    return {**out, "classes": data["classes"]}


def split_by_id(data: dict, train_images: int = TRAIN_IMAGES) -> tuple[dict, dict]:
    """``(train, test)``: the first ``train_images`` images by id, and the rest."""
    count = len(data["ids"])
    return _select(data, range(min(train_images, count))), _select(data, range(min(train_images, count), count))


def person_subset(data: dict) -> dict:
    """The images with at least one (non-crowd) person, with their person instances only."""
    def people(d, i):
        return d["labels"][i] == PERSON

    chosen = [i for i in range(len(data["ids"])) if np.any(people(data, i) & ~data["iscrowd"][i])]
    return _select(data, chosen, people)


def training_arrays(data: dict, size: int, max_boxes: int):
    """``(x uint8 [N, size, size, 3], {"boxes", "labels", "masks"})``: letterboxed images and the
    Mask R-CNN targets, ``-1`` labels and zero masks on padding rows; crowd regions left out."""
    count = len(data["ids"])
    x = np.zeros((count, size, size, 3), np.uint8)
    y = {"boxes": np.zeros((count, max_boxes, 4), np.float32), "labels": np.full((count, max_boxes), -1, np.int32),
         "masks": np.zeros((count, max_boxes, size, size), np.uint8)}
    for i in range(count):
        kept = ~data["iscrowd"][i]
        x[i], masks, scale, _ = letterbox_numpy(data["images"][i], size, data["masks"][i][kept])
        boxes = data["boxes"][i][kept] * scale
        visible = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
        objects = min(int(visible.sum()), max_boxes)
        y["boxes"][i, :objects] = boxes[visible][:objects]
        y["labels"][i, :objects] = data["labels"][i][kept][visible][:objects]
        y["masks"][i, :objects] = masks[visible][:objects]
    return x, y


def build_model(size: int, alpha: float, classes: int, seed: int, **overrides):
    """The zoo ``mask_rcnn`` on MobileNetV2 (random weights) with this benchmark's settings."""
    import keras

    import zoo

    model = zoo.load("mask_rcnn", backbone="mobilenet_v2", alpha=alpha, classes=classes,
                     input_shape=(size, size, 3), seed=seed, **{**DETECTOR, **overrides})
    for layer in model.backbone.layers:  # short runs from scratch: faster-moving BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def evaluate(data: dict, detections: list[dict]) -> dict:
    """Box and mask COCO metrics: the project's ``coco_metrics``, and pycocotools' where installed."""
    from hybrid_keras.detection import coco_metrics

    truth = [{"boxes": b, "labels": l, "masks": m.astype(bool), "iscrowd": c}
             for b, l, m, c in zip(data["boxes"], data["labels"], data["masks"], data["iscrowd"])]
    results = {"box": coco_metrics(truth, detections), "mask": coco_metrics(truth, detections, iou_type="segm")}
    try:
        results["pycocotools"] = {"box": _pycocotools(truth, detections, "bbox"),
                                  "mask": _pycocotools(truth, detections, "segm")}
    except ImportError:
        results["pycocotools"] = "not installed"
    return results


def _pycocotools(truth, detections, iou_type: str) -> dict:
    """COCOeval's AP, AP50, AP75 (masks RLE-encoded with ``pycocotools.mask.encode``)."""
    import contextlib
    import io

    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def rle(mask):
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        encoded["counts"] = encoded["counts"].decode("ascii")
        return encoded

    images, annotations, results = [], [], []
    labels = sorted({int(v) for t in truth for v in t["labels"]} | {int(v) for d in detections for v in d["labels"]})
    for image_id, (t, d) in enumerate(zip(truth, detections), start=1):
        height, width = t["masks"].shape[1:] if len(t["masks"]) else d["masks"].shape[1:]
        images.append({"id": image_id, "height": int(height), "width": int(width)})
        for g in range(len(t["labels"])):
            x1, y1, x2, y2 = (float(v) for v in t["boxes"][g])
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(t["labels"][g]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": int(t["iscrowd"][g]),
                                "area": float(t["masks"][g].sum() if iou_type == "segm" else (x2 - x1) * (y2 - y1)),
                                "segmentation": rle(t["masks"][g])})
        for k in range(len(d["labels"])):
            x1, y1, x2, y2 = (float(v) for v in d["boxes"][k])
            result = {"image_id": image_id, "category_id": int(d["labels"][k]), "score": float(d["scores"][k]),
                      "bbox": [x1, y1, x2 - x1, y2 - y1]}
            if iou_type == "segm":
                result["segmentation"] = rle(d["masks"][k])
            results.append(result)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()
        ground_truth.dataset = {"images": images, "annotations": annotations,
                                "categories": [{"id": label} for label in labels]}
        ground_truth.createIndex()
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(results) if results else COCO(), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"AP": float(evaluation.stats[0]), "AP50": float(evaluation.stats[1]), "AP75": float(evaluation.stats[2])}


# ----------------------------------------------------------------------------- figures

def plot_predictions(data: dict, detections: list[dict], path: Path, count: int = 6, threshold: float = 0.5):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = min(count, len(data["images"]))
    rows = (count + 1) // 2
    fig, axes = plt.subplots(rows, 4, figsize=(14, 3.3 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for i, pair in zip(range(count), axes.reshape(-1, 2)):
        shown = [j for j, s in enumerate(detections[i]["scores"]) if s > threshold] or list(
            range(min(1, len(detections[i]["scores"]))))
        sides = (("ground truth", data["boxes"][i], data["masks"][i], None, range(len(data["boxes"][i]))),
                 (f"predicted (score > {threshold}, else the best)", detections[i]["boxes"], detections[i]["masks"],
                  detections[i]["scores"], shown))
        for ax, (title, boxes, masks, scores, chosen) in zip(pair, sides):
            image = data["images"][i].astype(np.float32) / 255
            for n, j in enumerate(chosen):
                colour = np.array(colours(n % 10)[:3])
                image = np.where(np.asarray(masks[j], bool)[..., None], 0.45 * image + 0.55 * colour, image)
            ax.imshow(image)
            ax.set_axis_off()
            ax.set_title(f"test {i}: {title}", fontsize=8)
            for n, j in enumerate(chosen):
                x1, y1, x2, y2 = boxes[j]
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=colours(n % 10), linewidth=1.5))
                if scores is not None:
                    ax.text(x1, y1, f"{scores[j]:.2f}", color="white", fontsize=7, backgroundcolor=colours(n % 10))
    for ax in axes.reshape(-1)[2 * count:]:
        ax.set_axis_off()
    from benchmarks.common import save_figure

    save_figure(fig, path)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    import keras

    from benchmarks.common import DEFAULT_DATA_DIR, RESULTS_DIR, Timer, machine, machine_load, write_json
    from hybrid_keras.callbacks import TimeBudget

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seconds", type=float, default=900.0, help="training budget (wall clock)")
    parser.add_argument("--size", type=int, default=256, help="letterboxed input size")
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width")
    parser.add_argument("--classes", choices=("person", "all"), default="person")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jit", action="store_true", help="compile the training step with XLA")
    parser.add_argument("--quick", action="store_true", help="160-pixel images, 45 s, 6 test images: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.size = 45.0, 160
    keras.utils.set_random_seed(args.seed)

    started = time.perf_counter()
    data = load_coco128_masks_numpy(args.data)
    train, test = split_by_id(data)
    if args.classes == "person":
        train, test = person_subset(train), person_subset(test)
    if args.quick:
        test = _select(test, range(min(6, len(test["ids"]))))
    classes = 1 if args.classes == "person" else len(data["classes"])
    max_boxes = max(len(labels) for labels in train["labels"])
    x, y = training_arrays(train, args.size, max_boxes)
    batches = flipped_batches(x, y, args.batch_size, args.seed)
    print(f"data ready in {time.perf_counter() - started:.0f} s", flush=True)

    model = build_model(args.size, args.alpha, classes, args.seed)
    model.compile(keras.optimizers.Adam(args.learning_rate, clipnorm=10.0), jit_compile=args.jit)
    print(f"training {model.name} ({model.count_params():,} parameters) on {len(x)} images for {args.seconds:.0f} s",
          flush=True)
    counter = step_counter()
    with Timer() as timer:
        history = model.fit(batches, epochs=100_000, verbose=2, callbacks=[TimeBudget(args.seconds), counter]).history
    epochs, steps = len(history["loss"]), counter.count

    started = time.perf_counter()
    detections, seconds_per_image = predict_numpy(model, test["images"], args.size, BATCH)
    print(f"predicted in {time.perf_counter() - started:.0f} s", flush=True)
    scores = evaluate(test, detections)
    print(f"evaluated in {time.perf_counter() - started:.0f} s", flush=True)
    # How well it fits the images it trained on:
    seen = evaluate(train, predict_numpy(model, train["images"], args.size, BATCH)[0])
    subset = "person instances of images with a person" if args.classes == "person" else "all 80 classes"
    results = {
        "machine": machine(), "load": machine_load(), "backend": keras.backend.backend(),
        "data": (f"coco128 instances (COCO panoptic thing segments), 100 images in id order: first {TRAIN_IMAGES} "
                 f"train, last {len(data['ids']) - TRAIN_IMAGES} test; {subset}: {len(train['ids'])} training and "
                 f"{len(test['ids'])} test images, {sum(len(v) for v in train['labels'])} training and "
                 f"{sum(len(v) for v in test['labels'])} test instances; letterboxed to {args.size}x{args.size}"),
        "classes": args.classes,
        "model": (f"zoo mask_rcnn, mobilenet_v2 alpha {args.alpha} backbone at stride 16, random initialisation "
                  "(no ImageNet weights)"),
        "detector": {k: list(v) if isinstance(v, tuple) else v for k, v in DETECTOR.items()},
        "training": {"seconds_budget": args.seconds, "wall_seconds": timer.wall, "cpu_seconds": timer.cpu,
                     "steps": steps, "epochs": epochs, "batch_size": args.batch_size, "xla": args.jit,
                     "optimizer": f"Adam {args.learning_rate}, clipnorm 10", "augmentation": "left-right flips",
                     "final_losses": {name: history[name][-1] for name in LOSSES + ("loss",)}},
        "history": {name: history[name] for name in LOSSES + ("loss",)},
        "test": {"box": scores["box"], "mask": scores["mask"], "pycocotools": scores["pycocotools"],
                 "inference_seconds_per_image": seconds_per_image,
                 "mean_detections_per_image": float(np.mean([len(d["scores"]) for d in detections]))},
        "training_images": {"box": seen["box"], "mask": seen["mask"],
                            "note": "the same scores on the training images (how well the model fits what it saw)"},
        "published": PUBLISHED,
    }
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    suffix = "" if args.classes == "person" else "_all"
    write_json(results_dir / f"detection_coco128_masks{suffix}.json", results)
    plot_predictions(test, detections, results_dir / f"detection_coco128_masks{suffix}.png")
    plot_training(history, results_dir / f"detection_coco128_masks{suffix}_training.png",
                  f"Mask R-CNN, COCO128 {args.classes}, random init", LOSSES)
    box, mask = scores["box"], scores["mask"]
    print(f"{steps} steps ({epochs} epochs) in {timer.wall:.0f} s wall / {timer.cpu:.0f} s CPU; test box AP "
          f"{box['AP']:.3f} AP50 {box['AP50']:.3f} AP75 {box['AP75']:.3f}; mask AP {mask['AP']:.3f} AP50 "
          f"{mask['AP50']:.3f} AP75 {mask['AP75']:.3f}; {seconds_per_image * 1000:.0f} ms per image; training images: "
          f"box AP50 {seen['box']['AP50']:.3f}, mask AP50 {seen['mask']['AP50']:.3f}")


if __name__ == "__main__":
    main()
