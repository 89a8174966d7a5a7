"""Autoencoder, denoising autoencoder and VAE on MNIST and the CIFAR-10 JPEG subset: reconstruction,
denoising, the held-out ELBO, and how good and how new the VAE's samples are.

Data: the generative benchmarks' shared splits (``benchmarks.generative.feature_classifier.
load_images``): MNIST test digits 0-7,999 train, 8,000-9,999 held out (28x28 grey); CIFAR-10
JPEG files 0-79 of each class train (800), 80-99 held out (200) (32x32 RGB). ``--quick``: 2,000
/ 500 digits, 400 / 200 photos and a few epochs, results into a temporary folder.

Models: the zoo's ``autoencoder``, ``denoising_autoencoder`` and ``vae`` (conv encoder with
filters 32, 64; dense bottleneck; transposed-conv decoder), trained from random init with Adam
for a fixed number of epochs (below; the VAE with a KL warm-up). Pixels are [0, 255] in and out.

Measured on the held-out images:

- reconstruction error of each model: MSE of intensities in [0, 1] and PSNR (dB, peak 1,
  the mean of per-image values); the VAE decodes its posterior mean;
- denoising: the held-out images corrupted exactly as the denoising autoencoder was trained
  (its :class:`hybrid_keras.generative.Corruption`, seeded), and the PSNR against the clean
  image of the noisy input itself, the plain autoencoder's output and the denoising one's;
- the VAE's ELBO per image in nats, with its reconstruction and KL terms (5 samples of z per
  image), on held-out and on as many training images;
- the Frechet distance (Heusel et al. 2017) on the penultimate features of the set's
  classifier (``feature_classifier.feature_extractor``: zoo mobilenet_v2 alpha 0.35 trained
  here on the training split) between the held-out images and, at the same count: VAE samples
  (z ~ N(0, I)), the VAE's and the autoencoder's reconstructions of the held-out images (a
  reference: how far "almost the real image" lies), and real training images (the floor);
- a memorisation check of the VAE samples (``hybrid_keras.generative.memorisation_report``:
  each sample's nearest training image in pixels, found with FanngIndex, against the same
  distance for held-out real images, and for the VAE's reconstructions of them: pixel
  distances favour blurry images, and those are as blurry as the samples but new by
  construction).

Writes ``benchmarks/results/autoencoders.json`` and, per set, PNGs of reconstructions (input /
AE / VAE / noisy input / AE on it / DAE on it), VAE samples, and latent interpolations between
held-out images of different classes (VAE and AE rows).

    python benchmarks/generative/autoencoders.py [--dataset mnist|cifar10|all] [--quick] [--data ../shared/data]
    python benchmarks/generative/autoencoders.py --table   # the README's tables from the results JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import (DEFAULT_DATA_DIR, RESULTS_DIR, Timer, machine, machine_load, save_figure,  # noqa: E402
                               write_json)
from benchmarks.generative.feature_classifier import (DATASETS, classifier_card, extract, feature_extractor,  # noqa: E402
                                                      load_images)

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
ELBO_SAMPLES = 5
# Per set: the models' arguments and their training. MNIST: 63 steps an epoch (batch 128);
# CIFAR-10 JPEG: 13 (batch 64).
SETTINGS = {
    "mnist": {"latent_dim": 32, "vae_latent_dim": 16, "reconstruction": "bernoulli", "sigma": 0.1,
              "noise_stddev": 0.3, "mask_fraction": 0.0, "batch_size": 128, "learning_rate": 1e-3,
              "epochs": {"autoencoder": 4, "denoising_autoencoder": 4, "vae": 6}, "warmup_epochs": 2},
    "cifar10": {"latent_dim": 64, "vae_latent_dim": 32, "reconstruction": "gaussian", "sigma": 0.1,
                "noise_stddev": 0.2, "mask_fraction": 0.0, "batch_size": 64, "learning_rate": 2e-3,
                "epochs": {"autoencoder": 20, "denoising_autoencoder": 20, "vae": 30}, "warmup_epochs": 5},
}
QUICK_EPOCHS = {"mnist": {"autoencoder": 1, "denoising_autoencoder": 1, "vae": 2},
                "cifar10": {"autoencoder": 3, "denoising_autoencoder": 3, "vae": 4}}
CLASS_NAMES = {"mnist": [str(i) for i in range(10)],
               "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]}


def build(name: str, settings: dict, shape, seed: int):
    import zoo

    common = {"input_shape": shape, "reconstruction": settings["reconstruction"], "sigma": settings["sigma"]}
    if name == "vae":
        return zoo.load("vae", latent_dim=settings["vae_latent_dim"], seed=seed, **common)
    if name == "denoising_autoencoder":
        return zoo.load(name, latent_dim=settings["latent_dim"], noise_stddev=settings["noise_stddev"],
                        mask_fraction=settings["mask_fraction"], seed=seed, **common)
    return zoo.load(name, latent_dim=settings["latent_dim"], **common)


def train(name: str, settings: dict, epochs: int, images: np.ndarray, seed: int):
    import keras

    from hybrid_keras.generative import KLWarmup

    keras.utils.set_random_seed(seed)
    model = build(name, settings, images.shape[1:], seed)
    model.compile(optimizer=keras.optimizers.Adam(settings["learning_rate"]))
    callbacks = [KLWarmup(min(settings["warmup_epochs"], epochs))] if name == "vae" else []
    with Timer() as timer:
        history = model.fit(images.astype(np.float32), epochs=epochs, batch_size=settings["batch_size"],
                            callbacks=callbacks, shuffle=True, verbose=0).history
    final = {key: float(values[-1]) for key, values in history.items()}
    print(f"[{name}] {epochs} epochs in {timer.wall:.0f} s: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()),
          flush=True)
    info = {"epochs": epochs, "steps": epochs * int(np.ceil(len(images) / settings["batch_size"])),
            "wall_seconds": timer.wall, "cpu_seconds": timer.cpu, "parameters": int(model.count_params()),
            "history": {key: [float(v) for v in values] for key, values in history.items()}}
    return model, info


def batched(function, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    from keras import ops

    return np.concatenate([ops.convert_to_numpy(function(images[i:i + batch_size].astype(np.float32)))
                           for i in range(0, len(images), batch_size)])


def reconstruction_error(clean: np.ndarray, output: np.ndarray) -> dict:
    """MSE of intensities in [0, 1] and the mean of per-image PSNRs (dB, peak 1)."""
    difference = (np.asarray(output, np.float64) - np.asarray(clean, np.float64)) / 255.0
    per_image = np.mean(difference**2, axis=(1, 2, 3))
    psnr = 10 * np.log10(1.0 / np.maximum(per_image, 1e-10))
    return {"mse": float(per_image.mean()), "psnr_db": float(psnr.mean())}


def corrupt(images: np.ndarray, settings: dict, seed: int) -> np.ndarray:
    """The held-out images corrupted as the denoising autoencoder's training corrupted its inputs."""
    from hybrid_keras.generative import Corruption

    layer = Corruption(noise_stddev=settings["noise_stddev"], mask_fraction=settings["mask_fraction"], seed=seed)
    return batched(lambda x: layer(x, training=True), images)


def pair_indices(labels: np.ndarray, count: int, seed: int) -> list[tuple[int, int]]:
    """``count`` pairs of held-out images of different classes (class c and class c + 5)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for first in range(count):
        a = rng.choice(np.flatnonzero(labels == first))
        b = rng.choice(np.flatnonzero(labels == (first + 5) % 10))
        pairs.append((int(a), int(b)))
    return pairs


def interpolations(models: dict, held_out: np.ndarray, pairs, steps: int = 10) -> list[tuple[str, np.ndarray]]:
    """Rows of ``steps`` images decoded along the straight line between two held-out images'
    codes (the VAE's posterior means, the autoencoder's codes), between the two real images."""
    from keras import ops

    rows = []
    weights = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    for a, b in pairs:
        ends = held_out[[a, b]].astype(np.float32)
        for title, model in (("VAE", models["vae"]), ("AE", models["autoencoder"])):
            code = model.encode(ends)
            code = ops.convert_to_numpy(code[0] if title == "VAE" else code)
            line = (1 - weights) * code[0] + weights * code[1]
            rows.append((title, np.concatenate([ends[:1], ops.convert_to_numpy(model.decode(line)), ends[1:]])))
    return rows


class Phases:
    """Wall seconds of each named phase of the evaluation, printed as they end (progress)."""

    def __init__(self, dataset: str):
        self.dataset, self.seconds = dataset, {}

    def __call__(self, name: str):
        phases = self

        class Phase(Timer):
            def __exit__(self, *exc):
                super().__exit__(*exc)
                phases.seconds[name] = self.wall
                print(f"[{phases.dataset}] {name}: {self.wall:.0f} s", flush=True)

        return Phase()


def evaluate(dataset: str, data: dict, models: dict, settings: dict, args) -> tuple[dict, dict]:
    from keras import ops

    from hybrid_keras.generative import elbo_per_image, frechet_distance, memorisation_report

    phase = Phases(dataset)
    (train_x, _), (test_x, test_y) = data["train"], data["held_out"]
    ae, dae, vae = models["autoencoder"], models["denoising_autoencoder"], models["vae"]
    with phase("reconstructions"):
        outputs = {"AE": batched(ae.reconstruct, test_x), "DAE": batched(dae.reconstruct, test_x),
                   "VAE": batched(vae.reconstruct, test_x)}
        noisy = corrupt(test_x, settings, args.seed + 1)
        denoised = {"AE": batched(ae.reconstruct, noisy), "DAE": batched(dae.reconstruct, noisy)}
    results = {"reconstruction": {name: reconstruction_error(test_x, out) for name, out in outputs.items()}}
    results["denoising"] = {"corruption": {"noise_stddev": settings["noise_stddev"],
                                           "mask_fraction": settings["mask_fraction"]},
                            "noisy_input": reconstruction_error(test_x, noisy),
                            **{name: reconstruction_error(test_x, out) for name, out in denoised.items()}}

    elbo = {}
    with phase("ELBO"):
        for split, images in (("held_out", test_x), ("train", train_x[:len(test_x)])):
            terms = elbo_per_image(vae, images, samples=ELBO_SAMPLES, seed=args.seed)
            elbo[split] = {key: float(values.mean()) for key, values in terms.items()}
    pixels = int(np.prod(test_x.shape[1:]))
    elbo["nats_per_dimension_held_out"] = -elbo["held_out"]["elbo"] / pixels
    elbo["samples_of_z_per_image"] = ELBO_SAMPLES
    elbo["likelihood"] = settings["reconstruction"] + (f" (sigma {settings['sigma']} on [0, 1] intensities)"
                                                       if settings["reconstruction"] == "gaussian" else "")
    results["vae_elbo"] = elbo

    count = len(test_x)
    samples = ops.convert_to_numpy(vae.sample(count, seed=args.seed))
    with phase("Frechet distances"):
        extractor = feature_extractor(dataset, args.data, quick=args.quick)
        real = extract(extractor, test_x)
        candidates = {"vae_samples": samples, "vae_reconstructions": outputs["VAE"], "ae_reconstructions": outputs["AE"],
                      "real_training_images": train_x[:count]}
        card = classifier_card(dataset, args.data, quick=args.quick)
        results["frechet_distance"] = {
            "features": f"{card['backbone']}; {card['features']} penultimate features; held-out accuracy "
                        f"{card['held_out_accuracy']:.4f}",
            "images_per_set": count, "against": "held-out real images",
            **{name: frechet_distance(extract(extractor, images), real) for name, images in candidates.items()}}
    with phase("memorisation"):
        # Pixel distances favour blurry images (they sit near many training images), so beside the
        # held-out real images the VAE's reconstructions of them are a blur-matched reference: new
        # images by construction, as blurry as the samples.
        results["memorisation_vae_samples"] = {
            "against_held_out_images": memorisation_report(samples, train_x, test_x),
            "against_vae_reconstructions_of_held_out": memorisation_report(samples, train_x, outputs["VAE"])}
    results["evaluation_seconds"] = phase.seconds
    pictures = {"inputs": test_x, "outputs": outputs, "noisy": noisy, "denoised": denoised, "samples": samples,
                "interpolations": interpolations(models, test_x, pair_indices(test_y, 4, args.seed))}
    return results, pictures


# ----------------------------------------------------------------------------- pictures

def _show(axis, image):
    image = np.clip(np.asarray(image, np.float32) / 255.0, 0, 1)
    if image.shape[-1] == 1:
        axis.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        axis.imshow(image)
    axis.set_xticks([])
    axis.set_yticks([])


def _grid(rows: list[tuple[str, np.ndarray]], title: str, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.1 * columns + 1.2, 1.1 * len(rows) + 0.5), squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            if c < len(images):
                _show(axes[r, c], images[c])
            else:
                axes[r, c].axis("off")
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    plt.close(fig)


def draw(dataset: str, pictures: dict, results_dir: Path) -> list[str]:
    shown = np.arange(10)
    stem = results_dir / f"autoencoders_{dataset}"
    _grid([("input", pictures["inputs"][shown]), ("AE", pictures["outputs"]["AE"][shown]),
           ("VAE", pictures["outputs"]["VAE"][shown]), ("noisy", pictures["noisy"][shown]),
           ("AE(noisy)", pictures["denoised"]["AE"][shown]), ("DAE(noisy)", pictures["denoised"]["DAE"][shown])],
          f"{dataset}: held-out reconstructions (VAE: posterior mean) and denoising", Path(f"{stem}_reconstructions.png"))
    samples = pictures["samples"][:80]
    _grid([("", samples[i:i + 10]) for i in range(0, len(samples), 10)], f"{dataset}: VAE samples, z ~ N(0, I)",
          Path(f"{stem}_samples.png"))
    _grid(pictures["interpolations"], f"{dataset}: two held-out images (first, last) and decodings along the line "
          "between their codes",
          Path(f"{stem}_interpolations.png"))
    return [f"{stem.name}_{kind}.png" for kind in ("reconstructions", "samples", "interpolations")]


def table(results: dict) -> str:
    """The README's tables (Markdown) from a results JSON of this script."""
    lines = ["| set | model | epochs | held-out MSE | PSNR (dB) | PSNR on noisy input (dB) |", "|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        if dataset not in results:
            continue
        entry = results[dataset]
        noisy = entry["denoising"]
        lines.append(f"| {dataset} | noisy input (corruption) | | {noisy['noisy_input']['mse']:.4f} | "
                     f"{noisy['noisy_input']['psnr_db']:.2f} | |")
        for key, name in (("autoencoder", "AE"), ("denoising_autoencoder", "DAE"), ("vae", "VAE")):
            error = entry["reconstruction"][name]
            on_noisy = f"{noisy[name]['psnr_db']:.2f}" if name in noisy else ""
            lines.append(f"| {dataset} | {name} | {entry['training'][key]['epochs']} | {error['mse']:.4f} | "
                         f"{error['psnr_db']:.2f} | {on_noisy} |")
    lines += ["", "| set | VAE ELBO, held-out (nats/image) | reconstruction | KL | ELBO, training images | "
              "FD: VAE samples | FD: VAE recon. | FD: AE recon. | FD: real training images |",
              "|---|---|---|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        if dataset not in results:
            continue
        elbo, fd = results[dataset]["vae_elbo"], results[dataset]["frechet_distance"]
        lines.append(f"| {dataset} ({elbo['likelihood']}) | {elbo['held_out']['elbo']:.1f} | "
                     f"{elbo['held_out']['reconstruction']:.1f} | {elbo['held_out']['kl']:.1f} | "
                     f"{elbo['train']['elbo']:.1f} | {fd['vae_samples']:.3g} | {fd['vae_reconstructions']:.3g} | "
                     f"{fd['ae_reconstructions']:.3g} | {fd['real_training_images']:.3g} |")
    lines += ["", "| set | reference | median distance: samples / reference | fraction of samples closer than the "
              "reference's 5th percentile | samples closer than any reference image |", "|---|---|---|---|---|"]
    for dataset in DATASETS:
        if dataset not in results:
            continue
        for key, title in (("against_held_out_images", "held-out images"),
                           ("against_vae_reconstructions_of_held_out", "VAE reconstructions of held-out images")):
            report = results[dataset]["memorisation_vae_samples"][key]
            lines.append(f"| {dataset} | {title} | {report['median_ratio']:.2f} | {report['fraction_closer']:.3f} | "
                         f"{report['closer_than_any_held_out']} of {report['samples']} |")
    return "\n".join(lines)


def run(dataset: str, args) -> dict:
    settings = dict(SETTINGS[dataset])
    epochs = QUICK_EPOCHS[dataset] if args.quick else settings["epochs"]
    data = load_images(dataset, args.data, quick=args.quick)
    train_x = data["train"][0]
    print(f"[{dataset}] train {len(train_x)}, held out {len(data['held_out'][0])}, images {train_x.shape[1:]}", flush=True)
    models, training = {}, {}
    for name in ("autoencoder", "denoising_autoencoder", "vae"):
        models[name], training[name] = train(name, settings, epochs[name], train_x, args.seed)
    with Timer() as timer:
        results, pictures = evaluate(dataset, data, models, settings, args)
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    pngs = draw(dataset, pictures, results_dir)
    settings["epochs"] = epochs
    return {"data": {"train": int(len(train_x)), "held_out": int(len(data["held_out"][0])),
                     "image_shape": list(train_x.shape[1:])},
            "settings": settings, "training": training, **results, "evaluation_wall_seconds": timer.wall, "png": pngs}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS + ("all",), default="all")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="fewer images and epochs; results into a temporary folder")
    parser.add_argument("--table", type=Path, nargs="?", const=RESULTS_DIR / "autoencoders.json",
                        help="print the README's tables from a results JSON (default: the committed one) and exit")
    args = parser.parse_args(argv)
    if args.table is not None:
        print(table(json.loads(args.table.read_text())))
        return 0
    import keras

    results = {"machine": machine(), "backend": keras.backend.backend(), "quick": args.quick, "seed": args.seed,
               "load_before": machine_load()}
    with Timer() as timer:
        for dataset in DATASETS if args.dataset == "all" else (args.dataset,):
            results[dataset] = run(dataset, args)
    results["wall_seconds"], results["cpu_seconds"] = timer.wall, timer.cpu
    results["load_after"] = machine_load()
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    name = "autoencoders.json" if args.dataset == "all" else f"autoencoders_{args.dataset}.json"
    write_json(results_dir / name, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
