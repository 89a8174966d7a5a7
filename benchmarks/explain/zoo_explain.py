"""What a zoo classifier looks at: deconvnet, occlusion and Grad-CAM on translated MNIST.

Data: the MNIST digits in the data folder (the 10k test split: first 8,000 to train on, last
2,000 to test), each pasted at a random position (seeded) on a 64x64 black canvas, grey
repeated to RGB: the "translated MNIST" setting of Jaderberg et al. (Spatial Transformer
Networks, 2015, who used 60x60), so that the digit can be anywhere and "where the network
looks" can be checked against where the digit is. The object is the digit's ink bounding box
(pixels >= 64 out of 255).

Model (``--model``): the zoo's ``zfnet`` (Zeiler & Fergus's own network: max pooling, so the
deconvnet has switches; headless, global average pooling and a 10-way softmax) or
``mobilenet_v2`` (alpha 0.35; no max pooling at all), random init, raw pixels in, trained for
``--epochs`` epochs or ``--seconds``, whichever ends first. Then, on ``--images`` test digits:

- Grad-CAM (Selvaraju et al. 2017) at the default layer (the last feature map larger than
  1x1) and at a finer one (``conv2``, 6x6; ``block_12_add``, 4x4);
- occlusion (Zeiler & Fergus 2014): a 12x12 square, stride 6, filled with the training digits'
  mean pixel (what the network saw as background), and again with the model's own mean
  pixel (its Preprocessing layer's; mid grey), as the paper's grey square on photos;
- deconvnet projections (Zeiler & Fergus 2014) of the strongest activation at three depths,
  and guided backpropagation at the deepest.

The measurable check is the pointing game (Zhang et al., "Top-down Neural Attention by
Excitation Backprop", ECCV 2016): a hit when Grad-CAM's maximum (occlusion's minimum) falls
inside the object's box, for the true class. Baselines: a random map (its maximum is a
uniformly random pixel, so its expected hit rate is the box's share of the image, averaged
exactly) and the image centre. Also the share of each map's mass inside the box (Grad-CAM's
map, occlusion's probability drop, deconvnet's |projection|) against the box's share of the
image. Writes ``explain_mnist_<model>.json`` and ``explain_mnist_<model>_{deconvnet,occlusion,gradcam}.png``;
keeps the trained model and a few test digits as PNG in the cache folder (``CACHE_DIR/explain``)
for trying ``hybrid-keras explain`` on.

    ./dev.sh bench benchmarks/explain/zoo_explain.py [--model zfnet|mobilenet_v2] [--epochs N] [--images 200] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import (CACHE_DIR, DEFAULT_DATA_DIR, RESULTS_DIR, Timer, machine, machine_load,  # noqa: E402
                               staged_arrays, write_json)

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
CANVAS = 64
INK = 64  # a pixel is ink from this grey level up (out of 255)
# Per model: epochs, Adam learning rate, deconvnet layers, a finer Grad-CAM layer.
MODELS = {"zfnet": (2, 1e-3, ("conv1", "conv2", "conv5"), "conv2"),
          "mobilenet_v2": (8, 2e-3, ("block_2_add", "block_5_add", "block_12_add"), "block_12_add")}
OCCLUDER, OCCLUDER_STRIDE = 12, 6
SHOWN = 6  # digits drawn in each PNG


def translated_mnist(data_dir: Path, split: str, seed: int):
    """``(images [N, 64, 64, 3] uint8, labels [N], boxes [N, 4] as (top, left, bottom, right) exclusive)``."""
    digits, labels = staged_arrays(data_dir, "mnist", split)
    rng = np.random.default_rng(seed)
    images = np.zeros((len(digits), CANVAS, CANVAS, 3), np.uint8)
    boxes = np.zeros((len(digits), 4), np.int64)
    for index, digit in enumerate(digits[..., 0]):
        top, left = rng.integers(0, CANVAS - 28 + 1, size=2)
        images[index, top:top + 28, left:left + 28] = digit[..., None]
        rows, cols = np.nonzero(digit >= INK)
        boxes[index] = top + rows.min(), left + cols.min(), top + rows.max() + 1, left + cols.max() + 1
    return images, labels.astype(np.int64), boxes


def classifier(name: str):
    import keras

    import zoo

    if name == "zfnet":  # its flatten + 4096-unit top is sized for 224x224: headless, pooled, 10-way softmax
        backbone = zoo.load("zfnet", weights=None, include_top=False, pooling="avg", input_shape=(CANVAS, CANVAS, 3))
        outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(backbone.output)
        return keras.Model(backbone.input, outputs, name="zfnet_translated_mnist")
    model = zoo.load("mobilenet_v2", weights=None, alpha=0.35, input_shape=(CANVAS, CANVAS, 3), classes=10)
    for layer in model.layers:  # short runs from scratch: faster-moving BN statistics
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def train(name, train_x, train_y, test_x, test_y, epochs: int, seconds: float) -> tuple:
    import keras

    from hybrid_keras.callbacks import TimeBudget

    model = classifier(name)
    model.compile(optimizer=keras.optimizers.Adam(MODELS[name][1]), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    with Timer() as timer:
        history = model.fit(train_x, train_y, batch_size=64, epochs=epochs, verbose=2,
                            callbacks=[TimeBudget(seconds)])
    accuracy = float(np.mean(model.predict(test_x, batch_size=256, verbose=0).argmax(-1) == test_y))
    info = {"epochs_run": len(history.history["loss"]), "steps_per_epoch": int(np.ceil(len(train_x) / 64)),
            "wall_seconds": timer.wall, "cpu_seconds": timer.cpu, "final_train_loss": history.history["loss"][-1],
            "test_accuracy": accuracy}
    return model, info


def inside(points, boxes) -> np.ndarray:
    """Whether each (row, col) point lies in its (top, left, bottom, right) box."""
    rows, cols = points[:, 0], points[:, 1]
    return (rows >= boxes[:, 0]) & (rows < boxes[:, 2]) & (cols >= boxes[:, 1]) & (cols < boxes[:, 3])


def box_masks(boxes) -> np.ndarray:
    masks = np.zeros((len(boxes), CANVAS, CANVAS), bool)
    for mask, (top, left, bottom, right) in zip(masks, boxes):
        mask[top:bottom, left:right] = True
    return masks


def pointing(maps, boxes, *, lowest=False) -> dict:
    """Hit rate of each map's maximum (minimum with ``lowest``) in the box, and mass share."""
    flat = maps.reshape(len(maps), -1)
    index = flat.argmin(1) if lowest else flat.argmax(1)
    hits = inside(np.stack(np.unravel_index(index, maps.shape[1:]), 1), boxes)
    return {"hit_rate": float(hits.mean()), "hits": int(hits.sum())}


def mass_share(maps, boxes) -> float:
    """Mean share of a non-negative map's total inside the box (images with an all-zero map skipped)."""
    masks = box_masks(boxes)
    totals = maps.reshape(len(maps), -1).sum(1)
    keep = totals > 0
    return float(np.mean((maps * masks).reshape(len(maps), -1).sum(1)[keep] / totals[keep]))


def grid_png(rows, titles, path: Path) -> Path:
    """Rows of panels (each row one digit) stacked into one PNG."""
    from hybrid_keras.explain.overlay import side_by_side, write_png

    strips = [side_by_side(panels, titles if index == 0 else None, min_panel=128) for index, panels in enumerate(rows)]
    width = max(s.shape[1] for s in strips)
    strips = [np.pad(s, ((0, 4), (0, width - s.shape[1]), (0, 0)), constant_values=255) for s in strips]
    return write_png(path, np.concatenate(strips))


def draw_box(image, box, colour=(255, 0, 0)) -> np.ndarray:
    image = np.array(image, np.uint8)
    top, left, bottom, right = box
    image[top, left:right] = image[bottom - 1, left:right] = colour
    image[top:bottom, left] = image[top:bottom, right - 1] = colour
    return image


def main(argv=None):
    import keras

    from hybrid_keras import explain
    from hybrid_keras.explain.overlay import colorize, heatmap_overlay, projection_image, scaled

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--model", choices=tuple(MODELS), default="zfnet")
    parser.add_argument("--epochs", type=int, default=None, help="default: 2 (zfnet), 8 (mobilenet_v2)")
    parser.add_argument("--seconds", type=float, default=540.0, help="training budget (stops early)")
    parser.add_argument("--images", type=int, default=200, help="test digits explained")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1,000 training digits, 1 epoch, 24 test digits")
    args = parser.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    train_x, train_y, _ = translated_mnist(args.data, "test[:1000]" if args.quick else "test[:8000]", args.seed)
    test_x, test_y, test_boxes = translated_mnist(args.data, "test[8000:]", args.seed + 1)
    epochs, _, deconv_layers, fine_layer = MODELS[args.model]
    args.epochs = epochs if args.epochs is None else args.epochs
    if args.quick:
        args.epochs, args.images = 1, 24
    model, training = train(args.model, train_x, train_y, test_x, test_y, args.epochs, args.seconds)
    print(f"trained: {training}", flush=True)
    keep = CACHE_DIR / "explain" / ("quick" if args.quick else "")
    keep.mkdir(parents=True, exist_ok=True)
    model.save(keep / f"{args.model}_translated_mnist.keras")
    for index in range(SHOWN):
        from PIL import Image

        Image.fromarray(test_x[index]).save(keep / f"digit{index}_label{test_y[index]}.png")
    print(f"model and digits kept in {keep}", flush=True)

    images, labels, boxes = test_x[:args.images].astype(np.float32), test_y[:args.images], test_boxes[:args.images]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / CANVAS ** 2
    centre = np.full((len(boxes), 2), CANVAS // 2)
    data_mean = train_x.reshape(-1, 3).mean(0)
    results = {
        "machine": machine(), "load": machine_load(), "backend": keras.backend.backend(),
        "data": (f"translated MNIST: the data folder's MNIST test digits (train: first "
                 f"{len(train_x)}, test: 8000-9999), each pasted at a seeded random place on a {CANVAS}x{CANVAS} "
                 f"black canvas; object = ink box (grey >= {INK})"),
        "model": {"zfnet": "zoo zfnet (include_top=False, pooling='avg') + Dense(10, softmax), random init",
                  "mobilenet_v2": "zoo mobilenet_v2, alpha 0.35, random init"}[args.model]
                 + f"; {CANVAS}x{CANVAS} RGB raw pixels", "training": training,
        "images_explained": len(images), "box_area_share_mean": float(area.mean()),
        "baselines": {"random_map_expected_hit_rate": float(area.mean()),
                      "image_centre_hit_rate": float(inside(centre, boxes).mean())},
    }

    timings = {}
    with Timer() as timer:
        cam = explain.grad_cam(model, images, class_index=labels)
        cam_fine = explain.grad_cam(model, images, layer=fine_layer, class_index=labels)
    timings["gradcam_two_layers"] = timer.wall
    occlusions = {}
    for title, fill in (("training mean pixel", data_mean), ("model mean pixel", None)):
        with Timer() as timer:
            occlusions[title] = explain.occlusion(model, images, size=OCCLUDER, stride=OCCLUDER_STRIDE, fill=fill,
                                                  class_index=labels)
        timings[f"occlusion, {title}"] = timer.wall
    with Timer() as timer:
        projections = {layer: explain.deconvnet(model, images, layer) for layer in deconv_layers}
        guided = explain.deconvnet(model, images, deconv_layers[-1], rule="guided")
    timings["deconvnet_four"] = timer.wall
    drops = {title: np.maximum(o.probability[:, None, None] - o.heatmap, 0.0) for title, o in occlusions.items()}
    results["pointing_game"] = {
        f"gradcam {cam.layer} (default layer, {cam.cam.shape[1]}x{cam.cam.shape[2]})": pointing(cam.heatmap, boxes),
        f"gradcam {fine_layer} ({cam_fine.cam.shape[1]}x{cam_fine.cam.shape[2]})": pointing(cam_fine.heatmap, boxes),
        **{f"occlusion minimum, {title} fill": pointing(o.heatmap, boxes, lowest=True)
           for title, o in occlusions.items()},
    }
    results["mass_inside_box"] = {
        f"gradcam {cam.layer}": mass_share(cam.heatmap, boxes),
        f"gradcam {fine_layer}": mass_share(cam_fine.heatmap, boxes),
        **{f"occlusion probability drop, {title} fill": mass_share(drop, boxes) for title, drop in drops.items()},
        **{f"deconvnet {layer} |projection|": mass_share(np.abs(p.pixels).sum(-1), boxes)
           for layer, p in projections.items()},
        f"guided backpropagation {deconv_layers[-1]} |projection|": mass_share(np.abs(guided.pixels).sum(-1), boxes),
        "uniform map (box share of the image)": float(area.mean()),
    }
    results["occlusion"] = {
        "size": OCCLUDER, "stride": OCCLUDER_STRIDE,
        **{title: {"fill": o.fill.tolist(), "mean_unoccluded_probability": float(o.probability.mean()),
                   "mean_lowest_probability": float(o.grid.reshape(len(images), -1).min(1).mean())}
           for title, o in occlusions.items()}}
    results["explain_seconds"] = timings
    for name, entry in results["pointing_game"].items():
        print(f"pointing game, {name}: {entry['hit_rate']:.3f}", flush=True)
    print(f"baselines: random map {results['baselines']['random_map_expected_hit_rate']:.3f}, "
          f"centre {results['baselines']['image_centre_hit_rate']:.3f}", flush=True)

    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    prefix = f"explain_mnist_{args.model}"
    shown = range(min(SHOWN, len(images)))
    boxed = [draw_box(images[i], boxes[i]) for i in shown]
    main_fill, grey_fill = occlusions["training mean pixel"], occlusions["model mean pixel"]
    pngs = [
        grid_png([[boxed[i]] + [projection_image(projections[layer].pixels[i]) for layer in deconv_layers]
                  + [projection_image(guided.pixels[i])] for i in shown],
                 ["digit, ink box"] + [f"deconvnet {layer}" for layer in deconv_layers]
                 + [f"guided {deconv_layers[-1]}"], results_dir / f"{prefix}_deconvnet.png"),
        grid_png([[boxed[i], colorize(scaled(main_fill.heatmap[i], 0.0, 1.0), "viridis"),
                   heatmap_overlay(boxed[i], drops["training mean pixel"][i]),
                   colorize(scaled(grey_fill.heatmap[i], 0.0, 1.0), "viridis")] for i in shown],
                 ["digit, ink box", "p(true), dark square", "its probability drop", "p(true), grey square"],
                 results_dir / f"{prefix}_occlusion.png"),
        grid_png([[boxed[i], heatmap_overlay(boxed[i], cam.heatmap[i]), heatmap_overlay(boxed[i], cam_fine.heatmap[i])]
                  for i in shown], ["digit, ink box", f"Grad-CAM {cam.layer}", f"Grad-CAM {fine_layer}"],
                 results_dir / f"{prefix}_gradcam.png"),
    ]
    results["pngs"] = [str(p.relative_to(p.parents[2])) if not args.quick else str(p) for p in pngs]
    write_json(results_dir / f"{prefix}.json", results)


if __name__ == "__main__":
    main()
