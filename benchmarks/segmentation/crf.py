"""The DenseCRF layer against exact fully connected mean-field and against pydensecrf.

Accuracy: CamVid test images resized small enough for the exact O(N^2) mean-field in NumPy
(float64, kernel rows computed in blocks), unaries from coarse ground truth (the one-hot
masks averaged over 8x8 cells and upsampled bilinearly, as an FCN's blurry scores look,
plus noise). For each size: mean and largest |Q - Q_exact|, the share of pixels whose label
matches the exact CRF's, and mean IoU against the ground truth (11 classes, void ignored),
for the layer's grid filtering and for pydensecrf (Krähenbühl's permutohedral lattice in
C++, ``pip install pydensecrf2``) when it is installed. Both use symmetric normalisation
and Potts compatibility, the layer's defaults; kernel widths scale with the image.

Speed: one 360x480 image, 11 classes, 5 and 10 iterations, the layer compiled for the
current Keras backend (tf.function, jax.jit; PyTorch eager) against pydensecrf, timed in
alternation (each once per round, fastest of the rounds kept).

    KERAS_BACKEND=tensorflow python benchmarks/segmentation/crf.py [--data ../shared/data] [--quick]

Writes ``crf_<backend>.json`` and ``.png`` (results folder, or a temporary one with ``--quick``).
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

from benchmarks.common import DEFAULT_DATA_DIR, RESULTS_DIR, fastest_interleaved, save_figure, write_json  # noqa: E402
from benchmarks.segmentation.data import camvid  # noqa: E402

CLASSES, VOID = 11, 11
FULL_SIZE = (360, 480)
# The layer's defaults, for 360x480 images; spatial widths scale with the image.
DEFAULTS = dict(spatial_weight=3.0, spatial_sigma=3.0, bilateral_weight=5.0, bilateral_spatial_sigma=80.0,
                bilateral_color_sigma=13.0)
QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"


def parameters(height: int) -> dict:
    scale = height / FULL_SIZE[0]
    return dict(DEFAULTS, spatial_sigma=max(DEFAULTS["spatial_sigma"] * scale, 0.5),
                bilateral_spatial_sigma=DEFAULTS["bilateral_spatial_sigma"] * scale)


def coarse_unaries(masks: np.ndarray, seed: int, cell: int = 8, confidence: float = 3.0) -> np.ndarray:
    """Logits [N, H, W, C] from ground truth seen through 8x8 cells: what a stride-8 net might score."""
    rng = np.random.default_rng(seed)
    count, height, width = masks.shape
    one_hot = np.where((masks == VOID)[..., None], 1.0 / CLASSES, np.eye(CLASSES + 1)[masks][..., :CLASSES])
    rows, columns = -(-height // cell), -(-width // cell)
    padded = np.pad(one_hot, ((0, 0), (0, rows * cell - height), (0, columns * cell - width), (0, 0)), mode="edge")
    coarse = padded.reshape(count, rows, cell, columns, cell, CLASSES).mean((2, 4))
    # Bilinear upsampling of the cell averages back to the pixels (cell centres at (cell - 1) / 2).
    def axis_weights(n, cells):
        position = np.clip((np.arange(n) - (cell - 1) / 2) / cell, 0, cells - 1)
        low = np.minimum(np.floor(position).astype(int), cells - 2) if cells > 1 else np.zeros(n, int)
        return low, position - low
    low_r, frac_r = axis_weights(height, rows)
    low_c, frac_c = axis_weights(width, columns)
    high_r, high_c = np.minimum(low_r + 1, rows - 1), np.minimum(low_c + 1, columns - 1)
    fr, fc = frac_r[None, :, None, None], frac_c[None, None, :, None]
    smooth = ((1 - fr) * (1 - fc) * coarse[:, low_r][:, :, low_c] + (1 - fr) * fc * coarse[:, low_r][:, :, high_c]
              + fr * (1 - fc) * coarse[:, high_r][:, :, low_c] + fr * fc * coarse[:, high_r][:, :, high_c])
    return (confidence * np.log(smooth + 0.05) + rng.normal(0, 0.5, smooth.shape)).astype(np.float32)


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def exact_mean_field(logits, image, options, iterations, block=1024):
    """Fully connected mean-field in float64 with every kernel entry exp(-|f_i - f_j|^2 / 2) computed."""
    height, width, classes = logits.shape
    rows, columns = np.mgrid[0:height, 0:width]
    positions = np.stack([rows, columns], -1).reshape(-1, 2).astype(np.float64)
    colours = image.reshape(-1, 3).astype(np.float64)
    features = [positions / options["spatial_sigma"],
                np.concatenate([positions / options["bilateral_spatial_sigma"],
                                colours / options["bilateral_color_sigma"]], 1)]
    weights = [options["spatial_weight"], options["bilateral_weight"]]

    def filter_(f, values):
        out = np.empty_like(values)
        squared = (f ** 2).sum(1)
        for start in range(0, len(f), block):
            part = f[start:start + block]
            distances = (part ** 2).sum(1)[:, None] + squared[None] - 2 * part @ f.T
            out[start:start + block] = np.exp(-0.5 * np.maximum(distances, 0)) @ values
        return out

    scales = [1 / np.sqrt(filter_(f, np.ones((len(f), 1)))) for f in features]
    unary = logits.reshape(-1, classes).astype(np.float64)
    q = _softmax(unary)
    for _ in range(iterations):
        messages = sum(w * s * filter_(f, s * q) for w, s, f in zip(weights, scales, features))
        q = _softmax(unary - (messages.sum(1, keepdims=True) - messages))  # Potts
    return q.reshape(height, width, classes)


def pydensecrf_available() -> bool:
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def pydensecrf_mean_field(logits, image, options, iterations):
    import pydensecrf.densecrf as dcrf

    height, width, classes = logits.shape
    crf = dcrf.DenseCRF2D(width, height, classes)
    crf.setUnaryEnergy(np.ascontiguousarray(-logits.reshape(-1, classes).T, dtype=np.float32))
    # Potts compatibility w: the same marginals as the layer's 1 - identity times w.
    crf.addPairwiseGaussian(sxy=options["spatial_sigma"], compat=options["spatial_weight"])
    crf.addPairwiseBilateral(sxy=options["bilateral_spatial_sigma"], srgb=options["bilateral_color_sigma"],
                             rgbim=np.ascontiguousarray(image, dtype=np.uint8), compat=options["bilateral_weight"])
    return np.asarray(crf.inference(iterations), np.float32).T.reshape(height, width, classes)


def compiled_layer(options, iterations):
    """The DenseCRF layer as a function of (logits, images), compiled for the current backend."""
    import keras

    from hybrid_keras.layers import DenseCRF

    layer = DenseCRF(CLASSES, iterations, **options)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda logits, images: layer([logits, images]))
    elif backend == "jax":
        import jax

        layer.build([(None, None, None, CLASSES), (None, None, None, 3)])
        function = jax.jit(lambda logits, images: layer([logits, images]))
    else:
        import torch

        def function(logits, images):
            with torch.no_grad():
                return layer([logits, images])
    return lambda logits, images: keras.ops.convert_to_numpy(function(logits, images))


def mean_iou(probabilities, masks):
    from hybrid_keras.segmentation import confusion_matrix, scores_from_confusion

    counts, _ = confusion_matrix(masks, np.argmax(probabilities, -1), CLASSES, ignore_label=VOID)
    return scores_from_confusion(counts)["mean_iou"]


def accuracy(data_dir, sizes, count, iterations, use_pydensecrf):
    rows = []
    for size in sizes:
        images, masks = camvid(data_dir, "test", size, limit=count)
        logits = coarse_unaries(masks, seed=size[0])
        options = parameters(size[0])
        layer = compiled_layer(options, iterations)
        methods = {"grid": lambda i: layer(logits[i:i + 1], images[i:i + 1].astype(np.float32))[0]}
        if use_pydensecrf:
            methods["pydensecrf"] = lambda i: pydensecrf_mean_field(logits[i], images[i], options, iterations)
        exact = np.stack([exact_mean_field(logits[i], images[i], options, iterations) for i in range(len(images))])
        row = {"size": list(size), "images": len(images), "parameters": options,
               "mean_iou": {"unary": mean_iou(_softmax(logits), masks), "exact": mean_iou(exact, masks)},
               "labels_changed_by_exact_crf": float(np.mean(exact.argmax(-1) != logits.argmax(-1)))}
        refined = {}
        for name, method in methods.items():
            refined[name] = np.stack([method(i) for i in range(len(images))])
            difference = np.abs(refined[name] - exact)
            row[name] = {"mean_abs_error": float(difference.mean()), "max_abs_error": float(difference.max()),
                         "labels_as_exact": float(np.mean(refined[name].argmax(-1) == exact.argmax(-1)))}
            row["mean_iou"][name] = mean_iou(refined[name], masks)
        print(f"{size[0]}x{size[1]}: " + "; ".join(
            f"{name} mean |dQ| {row[name]['mean_abs_error']:.4f}, labels as exact {row[name]['labels_as_exact']:.4f}"
            for name in methods) + f"; mean IoU {row['mean_iou']}", flush=True)
        rows.append(row)
        last = (images[0], masks[0], logits[0], exact[0], {name: r[0] for name, r in refined.items()})
    return rows, last


def speed(data_dir, iterations_list, rounds, use_pydensecrf):
    images, masks = camvid(data_dir, "test", FULL_SIZE, limit=1)
    logits = coarse_unaries(masks, seed=0)
    options = parameters(FULL_SIZE[0])
    out = {}
    for iterations in iterations_list:
        layer = compiled_layer(options, iterations)
        tasks = {"grid": lambda: layer(logits, images.astype(np.float32))}
        if use_pydensecrf:
            tasks["pydensecrf"] = lambda: pydensecrf_mean_field(logits[0], images[0], options, iterations)
        start = time.perf_counter()
        tasks["grid"]()  # compile / trace outside the timing
        compile_seconds = time.perf_counter() - start
        best = fastest_interleaved(tasks, rounds)
        out[str(iterations)] = {name: seconds[0] for name, seconds in best.items()}
        out[str(iterations)]["grid_first_call"] = compile_seconds
        print(f"360x480, {iterations} iterations: " + ", ".join(f"{k} {v:.3f} s" for k, v in out[str(iterations)].items()),
              flush=True)
    return out


def figure(last, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image, mask, logits, exact, refined = last
    palette = np.array(plt.get_cmap("tab20").colors[:CLASSES] + ((0.0, 0.0, 0.0),))
    panels = [("image", image / 255.0), ("ground truth", palette[mask]), ("unary", palette[logits.argmax(-1)]),
              ("exact CRF", palette[exact.argmax(-1)])] + [(f"{name} CRF", palette[q.argmax(-1)])
                                                          for name, q in refined.items()]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 2.6))
    for axis, (title, picture) in zip(axes, panels):
        axis.imshow(picture)
        axis.set_title(title)
        axis.axis("off")
    return save_figure(fig, path)


def _version(package):
    from importlib import metadata

    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return None


def main(argv=None):
    import keras

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--images", type=int, default=4, help="test images for the accuracy part")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-pydensecrf", action="store_true")
    parser.add_argument("--quick", action="store_true", help="one small image, one round: checks the script")
    args = parser.parse_args(argv)
    use_pydensecrf = not args.no_pydensecrf and pydensecrf_available()
    sizes = [(36, 48)] if args.quick else [(45, 60), (90, 120)]
    rows, last = accuracy(args.data, sizes, 1 if args.quick else args.images, args.iterations, use_pydensecrf)
    timings = speed(args.data, [args.iterations] if args.quick else [5, 10], 1 if args.quick else args.rounds,
                    use_pydensecrf)
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    stem = f"crf_{keras.backend.backend()}"
    write_json(results_dir / f"{stem}.json", {
        "backend": keras.backend.backend(), "iterations": args.iterations,
        "pydensecrf": _version("pydensecrf2") or _version("pydensecrf") if use_pydensecrf else None,
        "accuracy": rows, "seconds_360x480": timings, "cpu_count": os.cpu_count(),
        "unaries": "ground truth averaged over 8x8 cells, upsampled bilinearly; logits 3 log(p + 0.05) + N(0, 0.5)",
    })
    figure(last, results_dir / f"{stem}.png")


if __name__ == "__main__":
    main()
