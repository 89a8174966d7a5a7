"""DCGAN on MNIST and CIFAR-10 JPEG: training, sample quality (Frechet distance) and memorisation.

For each set (splits: ``benchmarks/generative/feature_classifier.py``; MNIST 8,000 train /
2,000 held out, CIFAR-10 JPEG 800 / 200), a zoo DCGAN (``dcgan_generator`` /
``dcgan_discriminator``, z of 100, ``--filters`` 32) is trained by
``hybrid_keras.generative.DCGAN`` (the paper's losses, Adam 2e-4 / beta_1 0.5, batch 64) for a
fixed number of steps (``--steps``: 2,500 on MNIST, 1,000 on CIFAR; ``--max-seconds`` stops a
set early on a slow machine, and the JSON says so). Every ``--eval-every`` steps (500 / 250),
and at the end, the samples of a fixed set of z are measured.

**Sample quality**: the Frechet distance between the feature-classifier features (a zoo
MobileNetV2 trained on the set's training split) of N images and of the training images,
N = the held-out count for every row, since the distance depends on N:

- DCGAN samples;
- held-out real images: the floor, what a generator of new real images would score;
- two baselines, the ceilings: per-pixel Gaussian noise with the training images' per-pixel
  mean and standard deviation, and training images cut into a 4x4 grid of blocks shuffled
  within each image (right pixels and strokes, wrong layout).

**Memorisation**: each sample's nearest training image in pixel space (FanngIndex; its
agreement with exact search is reported), compared with held-out real images' nearest
training distances (``hybrid_keras.generative.memorisation_report``).

Writes ``benchmarks/results/dcgan.json`` and PNGs per set: ``dcgan_<set>_samples.png`` (8x8
samples), ``dcgan_<set>_interpolation.png`` (linear paths between z, as the paper's Fig. 4),
``dcgan_<set>_nearest.png`` (samples above their nearest training images), and
``dcgan_training.png`` (losses, D outputs and the Frechet distance against steps). The
generator is exported as a SavedModel (``saved_models/dcgan_<set>/<version>``, verified in
a TensorFlow-only process) and its weights saved under ``hybrid_keras.CACHE_DIR /
"generative"``.

    python benchmarks/generative/dcgan.py [--data ../shared/data] [--dataset all|mnist|cifar10] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The Frechet distance's eigen-decompositions (1,280 x 1,280) took 21 s with OpenBLAS's two threads on
# this busy two-core machine and 3 s with one: threads fighting for cores. Set before NumPy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import (DEFAULT_DATA_DIR, REPO, RESULTS_DIR, Timer, machine, machine_load,  # noqa: E402
                               save_figure, write_json)
from benchmarks.generative.feature_classifier import (CACHE, DATASETS, classifier_card, extract,  # noqa: E402
                                                      feature_extractor, load_images)

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"  # --quick runs never touch the results
LATENT_DIM = 100
BATCH = 64
STEPS = {"mnist": 2500, "cifar10": 1000}
EVAL_EVERY = {"mnist": 500, "cifar10": 250}
TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10 JPEG"}


def block_shuffled(images: np.ndarray, grid: int, rng) -> np.ndarray:
    """Each image cut into ``grid`` x ``grid`` blocks, the blocks put back in a random order."""
    count, height, width, channels = images.shape
    bh, bw = height // grid, width // grid
    blocks = images[:, :bh * grid, :bw * grid].reshape(count, grid, bh, grid, bw, channels).transpose(0, 1, 3, 2, 4, 5)
    blocks = blocks.reshape(count, grid * grid, bh, bw, channels)
    order = np.argsort(rng.random((count, grid * grid)), axis=1)
    blocks = np.take_along_axis(blocks, order[:, :, None, None, None], axis=1)
    out = images.copy()
    out[:, :bh * grid, :bw * grid] = blocks.reshape(count, grid, grid, bh, bw, channels).transpose(
        0, 1, 3, 2, 4, 5).reshape(count, bh * grid, bw * grid, channels)
    return out


def pixel_noise(train: np.ndarray, count: int, rng) -> np.ndarray:
    """Independent Gaussian pixels with the training images' per-pixel mean and standard deviation."""
    pixels = train.astype(np.float64)
    noise = rng.normal(pixels.mean(0), pixels.std(0), size=(count, *train.shape[1:]))
    return np.clip(np.round(noise), 0, 255).astype(np.uint8)


def next_version(base: Path) -> Path:
    versions = [int(p.name) for p in base.glob("*") if p.name.isdigit()] if base.exists() else []
    return base / str(max(versions, default=0) + 1)


def train_and_measure(dataset: str, args, out: Path) -> dict:
    import keras

    import zoo
    from hybrid_keras.generative import (DCGAN, export_generator, frechet_distance, generate_images,
                                         memorisation_report, nearest_training_images)

    title = TITLES[dataset]
    began = time.perf_counter()

    def elapsed():
        return f"[{title}] {time.perf_counter() - began:.0f} s:"

    data = load_images(dataset, args.data, args.quick)
    train, held_out = data["train"][0], data["held_out"][0]
    count = len(held_out)  # every Frechet distance is between `count` images and the training set
    card = classifier_card(dataset, args.data, quick=args.quick)
    extractor = feature_extractor(dataset, args.data, quick=args.quick)
    train_features = extract(extractor, train)
    print(f"{elapsed()} {len(train)} training / {count} held-out images; feature classifier held-out accuracy "
          f"{card['held_out_accuracy']:.3f}", flush=True)

    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    shape = train.shape[1:]
    generator = zoo.load("dcgan_generator", latent_dim=LATENT_DIM, image_shape=shape, filters=args.filters)
    discriminator = zoo.load("dcgan_discriminator", input_shape=shape, filters=args.filters)
    gan = DCGAN(generator, discriminator, seed=args.seed)
    gan.compile()
    fixed_z = rng.normal(size=(count, LATENT_DIM)).astype(np.float32)  # the same z at every checkpoint

    def quality():
        return frechet_distance(extract(extractor, generate_images(gan, fixed_z)), train_features)

    steps = args.steps or STEPS[dataset]
    curve, checkpoints, done, stopped_early = [], [], 0, False
    train_float = train.astype(np.float32)
    order = np.zeros(0, np.int64)
    training = {"wall": 0.0, "cpu": 0.0}
    eval_every = args.eval_every or EVAL_EVERY[dataset]
    while done < steps:
        chunk = min(eval_every, steps - done)
        need = chunk * BATCH
        while len(order) < need:  # epochs of the training set in shuffled order, drawn ahead
            order = np.concatenate([order, rng.permutation(len(train))])
        batch_rows, order = order[:need], order[need:]
        with Timer() as timer:
            history = gan.fit(train_float[batch_rows], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        training["wall"] += timer.wall
        training["cpu"] += timer.cpu
        done += chunk
        logs = {key: float(values[-1]) for key, values in history.history.items()}
        curve.append({"step": done, **logs})
        fd = quality()
        checkpoints.append({"step": done, "frechet_distance": fd, "training_seconds": training["wall"]})
        print(f"[{title}] step {done}/{steps}: d_loss {logs['d_loss']:.3f} g_loss {logs['g_loss']:.3f} "
              f"D(x) {logs['d_x']:.3f} D(G(z)) {logs['d_g_z']:.3f}  FD {fd:.2f}  ({training['wall']:.0f} s)", flush=True)
        if training["wall"] > args.max_seconds and done < steps:
            stopped_early = True
            print(f"[{title}] stopping at step {done}: the {args.max_seconds:.0f} s cap is spent", flush=True)
            break

    print(f"{elapsed()} trained; measuring", flush=True)
    samples = generate_images(gan, fixed_z)
    baselines = {"pixel noise (per-pixel Gaussian)": pixel_noise(train, count, rng),
                 "training images, 4x4 blocks shuffled": block_shuffled(train[rng.choice(len(train), count, False)], 4,
                                                                        rng)}
    distances = {"DCGAN samples": checkpoints[-1]["frechet_distance"],
                 "held-out real images (floor)": frechet_distance(extract(extractor, held_out), train_features)}
    for name, images in baselines.items():
        distances[name] = frechet_distance(extract(extractor, images), train_features)

    with Timer() as search_timer:
        report = memorisation_report(samples, train, held_out, search="fanng", details=True)
    exact_index, _ = nearest_training_images(samples, train, search="exact")
    fanng_agreement = float(np.mean(exact_index[:, 0] == report["sample_index"]))
    print(f"{elapsed()} Frechet distances and nearest training images done", flush=True)

    weights = CACHE / f"dcgan_{dataset}{'_quick' if args.quick else ''}"
    CACHE.mkdir(parents=True, exist_ok=True)
    generator.save_weights(f"{weights}_generator.weights.h5")
    discriminator.save_weights(f"{weights}_discriminator.weights.h5")
    export = None
    if keras.backend.backend() == "tensorflow":
        base = (Path(tempfile.mkdtemp()) if args.quick else REPO / "saved_models") / f"dcgan_{dataset}"
        path = export_generator(gan, next_version(base))
        export = {"path": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
                  "signatures": ["generate (serving_default)", "generate_from_seed"], "verified_tf_only": True}

    print(f"{elapsed()} generator exported", flush=True)
    pngs = plot_set(dataset, gan, samples, train, report, out, rng)
    result = {
        "images": {"train": int(len(train)), "held_out": int(count), "shape": list(shape)},
        "feature_classifier": card,
        "model": {"generator": generator.count_params(), "discriminator": discriminator.count_params(),
                  "filters": args.filters, "latent_dim": LATENT_DIM, "kernel_size": 4},
        "training": {"steps": done, "steps_planned": steps, "stopped_early_by_time_cap": stopped_early,
                     "batch_size": BATCH, "epochs": done * BATCH / len(train), "wall_seconds": training["wall"],
                     "cpu_seconds": training["cpu"], "optimizer": "Adam 2e-4, beta_1 0.5 (both networks)",
                     "curve": curve},
        "frechet_distance": {"n_images": int(count), "reference": f"the {len(train)} training images", **distances},
        "frechet_distance_by_step": checkpoints,
        "memorisation": {k: v for k, v in report.items() if k not in ("sample_index", "sample_distance",
                                                                        "held_out_distance")},
        "nearest_search": {"method": "FanngIndex (uint8 pixels, ef 256)", "agreement_with_exact": fanng_agreement,
                           "seconds": search_timer.wall},
        "weights": [f"{weights}_generator.weights.h5", f"{weights}_discriminator.weights.h5"],
        "export": export,
        "png": pngs,
    }
    print(f"[{title}] FD: " + ", ".join(f"{k} {v:.2f}" for k, v in distances.items()), flush=True)
    print(f"[{title}] memorisation: median nearest-training distance, samples {report['sample_nearest']['median']:.1f}"
          f" vs held-out {report['held_out_nearest']['median']:.1f} (ratio {report['median_ratio']:.2f}); "
          f"{report['fraction_closer']:.3f} of samples closer than the held-out 5th percentile; relative to the "
          f"held-out set: {report['relative']['fraction_below']:.3f} below its 5th percentile", flush=True)
    return result


def _grid(images: np.ndarray, rows: int, cols: int, pad: int = 2) -> np.ndarray:
    count, height, width, channels = images.shape
    canvas = np.full((rows * (height + pad) + pad, cols * (width + pad) + pad, channels), 255, np.uint8)
    for i, image in enumerate(images[:rows * cols]):
        r, c = divmod(i, cols)
        canvas[pad + r * (height + pad):pad + r * (height + pad) + height,
               pad + c * (width + pad):pad + c * (width + pad) + width] = image
    return canvas


def _show(ax, image):
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
              vmin=0, vmax=255, interpolation="nearest")
    ax.axis("off")


def plot_set(dataset: str, gan, samples, train, report, out: Path, rng) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hybrid_keras.generative import generate_images

    title = TITLES[dataset]
    paths = []
    fig, ax = plt.subplots(figsize=(6, 6))
    _show(ax, _grid(samples[:64], 8, 8))
    ax.set_title(f"DCGAN samples, {title}")
    paths.append(save_figure(fig, out / f"dcgan_{dataset}_samples.png"))
    plt.close(fig)

    rows, steps = 6, 10
    ends = rng.normal(size=(rows, 2, LATENT_DIM)).astype(np.float32)
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None]
    path_z = ((1 - weights) * ends[:, :1] + weights * ends[:, 1:]).reshape(rows * steps, LATENT_DIM)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    _show(ax, _grid(generate_images(gan, path_z), rows, steps))
    ax.set_title(f"DCGAN latent interpolations, {title} (each row: z1 to z2 in straight steps)")
    paths.append(save_figure(fig, out / f"dcgan_{dataset}_interpolation.png"))
    plt.close(fig)

    distance, index = report["sample_distance"], report["sample_index"]
    closest = np.argsort(distance)[:5]
    others = rng.choice(np.setdiff1d(np.arange(len(samples)), closest), 5, replace=False)
    picks = np.concatenate([closest, others])
    fig, axes = plt.subplots(2, len(picks), figsize=(1.3 * len(picks), 3.2))
    for column, pick in enumerate(picks):
        _show(axes[0, column], samples[pick])
        _show(axes[1, column], train[index[pick]])
        axes[0, column].set_title(("closest " if column < 5 else "random ") + f"\n{distance[pick]:.0f}", fontsize=7)
    axes[0, 0].text(-0.15, 0.5, "sample", transform=axes[0, 0].transAxes, rotation=90, va="center", ha="right")
    axes[1, 0].text(-0.15, 0.5, "nearest\ntraining", transform=axes[1, 0].transAxes, rotation=90, va="center",
                    ha="right")
    fig.suptitle(f"{title}: samples and their nearest training images (pixel distance; held-out real images' "
                 f"median {report['held_out_nearest']['median']:.0f})", fontsize=8)
    paths.append(save_figure(fig, out / f"dcgan_{dataset}_nearest.png"))
    plt.close(fig)
    return [str(Path(p).relative_to(REPO)) if Path(p).is_relative_to(REPO) else str(p) for p in paths]


def plot_training(results: dict, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(results)
    fig, axes = plt.subplots(len(sets), 3, figsize=(13, 3.4 * len(sets)), squeeze=False)
    for row, dataset in enumerate(sets):
        entry, title = results[dataset], TITLES[dataset]
        curve = entry["training"]["curve"]
        steps = [point["step"] for point in curve]
        axes[row, 0].plot(steps, [p["d_loss"] for p in curve], "o-", label="d_loss")
        axes[row, 0].plot(steps, [p["g_loss"] for p in curve], "s-", label="g_loss")
        axes[row, 0].set_title(f"{title}: losses (mean over each stretch)")
        axes[row, 1].plot(steps, [p["d_x"] for p in curve], "o-", label="D(x)")
        axes[row, 1].plot(steps, [p["d_g_z"] for p in curve], "s-", label="D(G(z))")
        axes[row, 1].set_title(f"{title}: discriminator outputs")
        fd = entry["frechet_distance"]
        axes[row, 2].plot([p["step"] for p in entry["frechet_distance_by_step"]],
                          [p["frechet_distance"] for p in entry["frechet_distance_by_step"]], "o-", label="DCGAN samples")
        for (name, value), style in zip([(k, v) for k, v in fd.items() if k not in ("n_images", "reference",
                                                                                     "DCGAN samples")],
                                        ("g--", "r:", "m-.")):
            axes[row, 2].axhline(value, color=style[0], linestyle=style[1:], label=name)
        axes[row, 2].set_yscale("log")
        axes[row, 2].set_title(f"{title}: Frechet distance to training set, n={fd['n_images']}", fontsize=10)
        for ax in axes[row]:
            ax.set_xlabel("training step (batch 64)")
            ax.legend(fontsize=7)
    return str(save_figure(fig, out / "dcgan_training.png"))


def main(argv=None) -> int:
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where results go (default {RESULTS_DIR}; with --quick, {QUICK_RESULTS_DIR})")
    parser.add_argument("--dataset", choices=DATASETS + ("all",), default="all")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per set (default {STEPS})")
    parser.add_argument("--eval-every", type=int, default=None,
                        help=f"steps between Frechet-distance checkpoints (default {EVAL_EVERY})")
    parser.add_argument("--max-seconds", type=float, default=360.0, help="stop a set's training after this wall time")
    parser.add_argument("--filters", type=int, default=32, help="the networks' base width")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="few images and steps: checks the script runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every = args.steps or 20, 10
    out = args.out or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    sets = DATASETS if args.dataset == "all" else (args.dataset,)
    started = time.perf_counter()
    results = {"machine": machine(), "backend": keras.backend.backend(), "load_before": machine_load(),
               "reference": "Radford, Metz & Chintala, ICLR 2016 (DCGAN); Heusel et al., NeurIPS 2017 (Frechet distance)",
               "sets": {}}
    for dataset in sets:
        results["sets"][dataset] = train_and_measure(dataset, args, out)
    results["training_png"] = plot_training(results["sets"], out)
    results["load_after"] = machine_load()
    results["wall_seconds"] = time.perf_counter() - started
    name = "dcgan.json" if args.dataset == "all" else f"dcgan_{args.dataset}.json"
    write_json(out / name, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
