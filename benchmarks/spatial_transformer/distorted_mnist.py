"""Distorted MNIST (Jaderberg et al., Spatial Transformer Networks, NeurIPS 2015, section 4.1): the
zoo's ``mnist_cnn`` against the same CNN behind an affine spatial transformer (``st_cnn``).

Data: the 10,000 digits of the MNIST *test* set in the data folder (the only MNIST shipped), split
by index: digits 0-7,999 train, 8,000-9,999 test. The paper trains on the 60,000 training digits,
so our errors are higher than its; compare the two models here, and the gap between them, rather
than our numbers with the paper's. Each variant is made from those digits with OpenCV (bilinear
interpolation, black outside the digit's 28x28 frame); the training digits get fresh random
distortions every epoch, the test digits one fixed draw:

- **R** (28x28): rotated by an angle uniform in [-90, 90] degrees about the image centre.
- **RTS** (42x42): rotated by an angle uniform in [-45, 45] degrees and scaled by a factor uniform
  in [0.7, 1.2], both about the digit frame's centre, then placed at a uniformly random position
  in a 42x42 canvas such that the scaled 28x28 frame lies inside it.
- **P** (28x28): projective: the image scaled by 0.75 about its centre, then each of its four
  corners moved by an independent Gaussian offset (standard deviation 3 pixels per axis, clipped
  at 6), the image warped by the homography that moves the corners so. (Our own parameters.)
- **TC** (60x60, translated and cluttered): the 28x28 digit at a uniformly random position in a
  60x60 canvas, plus 6 pieces of clutter: each an 8x8 crop, at a uniformly random position inside
  the central 20x20 of a random *other* digit of the same split, pasted at a uniformly random
  position of the canvas (pixel-wise maximum, so clutter never erases the digit's ink).

Both networks train with the same budget: ``--steps`` Adam steps of batch 64 (learning rate 1e-3,
cosine-decayed to 0), from the same initial classifier weights (the ST-CNN's copy of the CNN's,
its transformer starting at the identity) and the same batch order. The localisation network's
learning rate ramps up from 0 over the first 30% of the steps (``--localisation-warmup``): trained
at full rate from the first step, it pushed the sampling grid off the 60x60 cluttered canvas in
one run (where the sampler gives no gradient, so it never came back: 88.5% error), while a tenth
of the rate throughout (the paper's SVHN setting) left theta at the identity within our budget. Reported: test error on the
2,000 test digits with its binomial standard error, steps, epochs and CPU seconds. The trained
RTS ST-CNN is exported as a SavedModel and verified in a fresh TensorFlow-only process. Writes
``spatial_transformer.json``, ``spatial_transformer.png`` (errors with the paper's for the same
settings) and ``spatial_transformer_samples.png`` (test inputs above what the transformer made of
them).

    ./dev.sh bench benchmarks/spatial_transformer/distorted_mnist.py [--steps 1000] [--variants R RTS P TC] [--quick]
    python benchmarks/spatial_transformer/distorted_mnist.py --table   # the README table, from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import (  # noqa: E402
    DEFAULT_DATA_DIR, RESULTS_DIR, Timer, machine, machine_load, save_figure, staged_arrays, write_json)

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
VARIANTS = ("R", "RTS", "P", "TC")
SIZES = {"R": 28, "RTS": 42, "P": 28, "TC": 60}
BATCH = 64
LEARNING_RATE = 1e-3
CLUTTER_PIECES, CLUTTER_SIZE = 6, 8
DESCRIPTIONS = {
    "R": "28x28; rotation uniform in [-90, 90] degrees about the centre",
    "RTS": "42x42; rotation uniform in [-45, 45] degrees, scale uniform in [0.7, 1.2], random position with the "
           "scaled 28x28 frame inside the canvas",
    "P": "28x28; scaled by 0.75, then each corner moved by N(0, 3 px) per axis (clipped at 6 px), homography warp "
         "(our parameters)",
    "TC": f"60x60; digit at a random position plus {CLUTTER_PIECES} clutter pieces of {CLUTTER_SIZE}x{CLUTTER_SIZE} "
          "cropped from the central 20x20 of other digits of the same split, pasted at random positions (maximum)",
}

# Jaderberg et al. 2015: Table 1 (left), percent test error on distorted MNIST, models trained on the
# 60,000 training digits; the cluttered (TC, 60x60) figures are quoted in section 4.1's text.
PAPER = {
    "source": "Jaderberg, Simonyan, Zisserman & Kavukcuoglu, Spatial Transformer Networks, NeurIPS 2015: Table 1 "
              "(left) for R, RTS, P, E; section 4.1 text for the 60x60 translated and cluttered digits (TC)",
    "training_digits": 60000,
    "test_error_percent": {
        "R": {"FCN": 2.1, "CNN": 1.2, "ST-FCN Aff": 1.2, "ST-FCN Proj": 1.3, "ST-FCN TPS": 1.1,
              "ST-CNN Aff": 0.7, "ST-CNN Proj": 0.8, "ST-CNN TPS": 0.7},
        "RTS": {"FCN": 5.2, "CNN": 0.8, "ST-FCN Aff": 0.8, "ST-FCN Proj": 0.9, "ST-FCN TPS": 0.8,
                "ST-CNN Aff": 0.5, "ST-CNN Proj": 0.6, "ST-CNN TPS": 0.5},
        "P": {"FCN": 3.1, "CNN": 1.5, "ST-FCN Aff": 1.5, "ST-FCN Proj": 1.4, "ST-FCN TPS": 1.4,
              "ST-CNN Aff": 0.8, "ST-CNN Proj": 0.8, "ST-CNN TPS": 0.8},
        "E": {"FCN": 3.2, "CNN": 1.4, "ST-FCN Aff": 2.7, "ST-FCN Proj": 2.6, "ST-FCN TPS": 2.4,
              "ST-CNN Aff": 1.2, "ST-CNN Proj": 1.3, "ST-CNN TPS": 1.1},
        "TC": {"FCN": 13.2, "CNN": 3.5, "ST-FCN": 2.0, "ST-CNN": 1.7},
    },
    # Which of the paper's rows our two models correspond to.
    "comparable_rows": {"cnn": "CNN", "st_cnn": {"R": "ST-CNN Aff", "RTS": "ST-CNN Aff", "P": "ST-CNN Aff",
                                                 "TC": "ST-CNN"}},
}


# ----------------------------------------------------------------------------- data

def load_digits(data_dir: Path, quick: bool):
    """The MNIST test set as (train, test) pairs of uint8 [N, 28, 28] and labels, split by index."""
    def arrays(split):
        images, labels = staged_arrays(data_dir, "mnist", split)
        return images[..., 0], labels

    return arrays("test[:1000]" if quick else "test[:8000]"), arrays("test[9500:]" if quick else "test[8000:]")


def _affine(digit, matrix, size):
    import cv2

    return cv2.warpAffine(digit, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=0)


def rotated(digits, rng):
    import cv2

    angles = rng.uniform(-90, 90, len(digits))
    return np.stack([_affine(d, cv2.getRotationMatrix2D((13.5, 13.5), a, 1.0), 28) for d, a in zip(digits, angles)])


def rotated_translated_scaled(digits, rng, size=42):
    import cv2

    out = []
    for digit in digits:
        scale = rng.uniform(0.7, 1.2)
        matrix = cv2.getRotationMatrix2D((13.5, 13.5), rng.uniform(-45, 45), scale)
        slack = (size - 28 * scale) / 2  # the scaled frame stays inside the canvas
        centre = (size - 1) / 2 + rng.uniform(-slack, slack, 2)
        matrix[:, 2] += centre - 13.5  # the frame's centre (13.5, 13.5) moves to `centre`
        out.append(_affine(digit, matrix, size))
    return np.stack(out)


def projective(digits, rng, scale=0.75, sigma=3.0, clip=6.0):
    import cv2

    corners = np.float32([[0, 0], [27, 0], [27, 27], [0, 27]])
    shrunk = (corners - 13.5) * scale + 13.5
    out = []
    for digit in digits:
        moved = shrunk + np.clip(rng.normal(0, sigma, (4, 2)), -clip, clip)
        matrix = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
        out.append(cv2.warpPerspective(digit, matrix, (28, 28), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                       borderValue=0))
    return np.stack(out)


def cluttered(digits, rng, size=60, pieces=CLUTTER_PIECES, piece=CLUTTER_SIZE):
    out = np.zeros((len(digits), size, size), np.uint8)
    for i, digit in enumerate(digits):
        canvas = out[i]
        for _ in range(pieces):
            other = rng.integers(len(digits) - 1)
            other += other >= i  # any digit but this one
            y, x = rng.integers(4, 24 - piece + 1, 2)  # inside the central 20x20, where the ink is
            top, left = rng.integers(0, size - piece + 1, 2)
            region = canvas[top:top + piece, left:left + piece]
            np.maximum(region, digits[other][y:y + piece, x:x + piece], out=region)
        top, left = rng.integers(0, size - 28 + 1, 2)
        region = canvas[top:top + 28, left:left + 28]
        np.maximum(region, digit, out=region)
    return out


DISTORT = {"R": rotated, "RTS": rotated_translated_scaled, "P": projective, "TC": cluttered}


def distort(variant, digits, rng):
    """uint8 [N, S, S, 1] of the variant, made from uint8 [N, 28, 28] digits."""
    return DISTORT[variant](digits, rng)[..., None]


# ----------------------------------------------------------------------------- training

def distorted_batches(variant, digits, labels, rng):
    """A ``keras.utils.PyDataset`` of one variant's batches, re-distorted and reshuffled every epoch."""
    import keras

    class DistortedDigits(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.on_epoch_end()

        def __len__(self):
            return math.ceil(len(digits) / BATCH)

        def __getitem__(self, index):
            rows = self.order[index * BATCH:(index + 1) * BATCH]
            return self.images[rows], labels[rows]

        def on_epoch_end(self):
            self.images = distort(variant, digits, rng)  # uint8: the models normalise their input
            self.order = rng.permutation(len(digits))

    return DistortedDigits()


def stop_after(steps: int):
    """A Keras callback that ends training after ``steps`` batches (``.done`` counts them)."""
    import keras

    class StopAfter(keras.callbacks.Callback):
        done = 0

        def on_train_batch_end(self, batch, logs=None):
            self.done += 1
            if self.done >= steps:
                self.model.stop_training = True

    return StopAfter()


def layerwise_adam(learning_rate, multipliers: dict[str, float], warmup_steps: int = 0):
    """Adam whose step on a variable of a layer named ``<prefix>...`` is scaled by ``multipliers[prefix]``,
    ramped up linearly from 0 over the first ``warmup_steps`` steps (the classifier learns first, so
    the localisation network's first gradients carry information rather than noise)."""
    import keras
    from keras import ops

    class LayerwiseAdam(keras.optimizers.Adam):
        def update_step(self, gradient, variable, learning_rate):
            layer = self._trainable_variables[self._get_variable_index(variable)].path.split("/")[0]
            scale = next((m for prefix, m in multipliers.items() if layer.startswith(prefix)), None)
            if scale is not None:
                if warmup_steps:
                    scale = scale * ops.minimum(1.0, ops.cast(self.iterations, "float32") / warmup_steps)
                learning_rate = learning_rate * scale
            return super().update_step(gradient, variable, learning_rate)

    return LayerwiseAdam(learning_rate)


def train_model(model, variant, train_digits, train_labels, *, steps, seed, test_x, test_y, localisation_lr,
                warmup_steps=0):
    import keras

    keras.utils.set_random_seed(seed)
    schedule = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, decay_steps=steps)
    # The localisation network (layers loc_* and theta; the plain CNN has none) learns more slowly.
    optimizer = layerwise_adam(schedule, {"loc_": localisation_lr, "theta": localisation_lr}, warmup_steps)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    batches = distorted_batches(variant, train_digits, train_labels, np.random.default_rng(seed + 1))  # same for both
    stop = stop_after(steps)
    with Timer() as timer:
        history = model.fit(batches, epochs=math.ceil(steps / len(batches)), callbacks=[stop], verbose=0)
    probabilities = model.predict(test_x, batch_size=256, verbose=0)
    error = float(np.mean(probabilities.argmax(1) != test_y))
    return {"test_error": error, "test_error_stderr": math.sqrt(error * (1 - error) / len(test_y)),
            "steps": stop.done, "epochs": len(history.history["loss"]),
            "last_epoch_loss": float(history.history["loss"][-1]),
            "train_cpu_seconds": timer.cpu, "train_wall_seconds": timer.wall, "parameters": model.count_params()}


def run_variant(variant, train, test, *, steps, seed, localisation_lr, warmup_steps):
    import keras

    import zoo

    (train_digits, train_labels), (test_digits, test_labels) = train, test
    test_x = distort(variant, test_digits, np.random.default_rng(seed + 1000))
    shape = (SIZES[variant], SIZES[variant], 1)
    keras.utils.set_random_seed(seed)
    cnn = zoo.load("mnist_cnn", input_shape=shape)
    st = zoo.load("st_cnn", input_shape=shape)
    for name in ("conv1", "conv2", "predictions"):  # the same starting classifier: paired runs
        st.get_layer(name).set_weights(cnn.get_layer(name).get_weights())
    results = {}
    for key, model in (("cnn", cnn), ("st_cnn", st)):
        results[key] = train_model(model, variant, train_digits, train_labels, steps=steps, seed=seed, test_x=test_x,
                                   test_y=test_labels, localisation_lr=localisation_lr,
                                   warmup_steps=warmup_steps)
        print(f"{variant} {key}: test error {100 * results[key]['test_error']:.2f}% after {results[key]['steps']} steps "
              f"({results[key]['train_cpu_seconds']:.0f} CPU s)", flush=True)
    return results, st, test_x, test_labels



# ----------------------------------------------------------------------------- figures

def plot_errors(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(results["variants"])
    paper = results["paper"]["test_error_percent"]
    rows = results["paper"]["comparable_rows"]
    fig, axis = plt.subplots(figsize=(7.5, 4.2))
    positions = np.arange(len(variants))
    styles = ((-0.2, "cnn", "CNN (mnist_cnn)", "tab:blue"), (0.2, "st_cnn", "ST-CNN (st_cnn)", "tab:orange"))
    for offset, key, label, colour in styles:
        errors = [100 * results["variants"][v][key]["test_error"] for v in variants]
        spread = [100 * results["variants"][v][key]["test_error_stderr"] for v in variants]
        bars = axis.bar(positions + offset, errors, 0.38, yerr=spread, capsize=3, color=colour, label=f"{label}, ours")
        axis.bar_label(bars, [f"{e:.1f}" for e in errors], padding=2, fontsize=8)
        row = {v: rows[key] if isinstance(rows[key], str) else rows[key][v] for v in variants}
        axis.scatter(positions + offset, [paper[v][row[v]] for v in variants], marker="_", s=400, color="black",
                     zorder=3, label="paper (60k training digits)" if key == "cnn" else None)
    axis.set_xticks(positions, [f"{v}\n{SIZES[v]}x{SIZES[v]}" for v in variants])
    axis.set_ylabel("test error (%)")
    axis.set_title(f"Distorted MNIST, {results['train_digits']:,} training digits, {results['steps']} steps each")
    axis.legend(fontsize=8)
    return save_figure(fig, path)


def plot_samples(samples, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = max(len(images) for images, _ in samples.values())
    fig, axes = plt.subplots(2 * len(samples), count, figsize=(count * 0.9, len(samples) * 2.0), squeeze=False)
    for row, (variant, (inputs, warped)) in enumerate(samples.items()):
        for column in range(count):
            for k, (images, title) in enumerate(((inputs, "input"), (warped, "transformed"))):
                axis = axes[2 * row + k, column]
                axis.imshow(images[column, ..., 0], cmap="gray", vmin=0, vmax=255)
                axis.set_xticks([])
                axis.set_yticks([])
                if column == 0:
                    axis.set_ylabel(f"{variant}\n{title}", fontsize=8)
    fig.suptitle("ST-CNN test inputs (odd rows) and the spatial transformer's output (even rows)", fontsize=9)
    return save_figure(fig, path)


def markdown_table(results) -> str:
    """The README's table, generated from the results JSON."""
    lines = [f"{results['steps']} steps of batch 64 per model, {results['train_digits']:,} training digits "
             f"(the paper: 60,000); test error on {results['test_digits']:,} test digits, +- its standard error.",
             "",
             "| variant | input | CNN (ours) | ST-CNN (ours) | CNN (paper) | ST-CNN (paper) "
             "| training CPU s, CNN / ST-CNN |",
             "|---|---|---|---|---|---|---|"]
    for variant, entry in results["variants"].items():
        ours = [f"{100 * entry[k]['test_error']:.2f}% +- {100 * entry[k]['test_error_stderr']:.2f}"
                for k in ("cnn", "st_cnn")]
        cpu = " / ".join(f"{entry[k]['train_cpu_seconds']:.0f}" for k in ("cnn", "st_cnn"))
        size = entry["input_size"]
        lines.append(f"| {variant} | {size}x{size} | {ours[0]} | {ours[1]} | {entry['paper']['CNN']}% | "
                     f"{entry['paper']['ST-CNN']}% | {cpu} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main

def main(argv=None):
    import keras

    import hybrid_keras as hk
    from zoo.architectures.spatial_transformer import transformer_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--steps", type=int, default=1000, help="training steps (batch 64) of each model")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--localisation-lr", type=float, default=1.0,
                        help="the localisation network's learning rate, relative to the classifier's")
    parser.add_argument("--localisation-warmup", type=float, default=0.3,
                        help="fraction of the steps over which the localisation network's learning rate ramps up from 0")
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="also save each trained ST-CNN as <dir>/st_cnn_<variant>.weights.h5")
    parser.add_argument("--quick", action="store_true", help="1,000 digits, 40 steps: checks the script")
    parser.add_argument("--table", action="store_true",
                        help="only print the README table from benchmarks/results/spatial_transformer.json")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(json.loads((RESULTS_DIR / "spatial_transformer.json").read_text())))
        return
    if args.quick:
        args.steps = 40
    started = time.perf_counter()
    train, test = load_digits(args.data, args.quick)
    results = {"machine": machine(), "backend": keras.backend.backend(), "steps": args.steps, "batch": BATCH,
               "learning_rate": f"Adam {LEARNING_RATE}, cosine decay to 0 over the steps",
               "localisation_learning_rate": (f"x{args.localisation_lr} of the classifier's, ramped up linearly from 0 "
                                              f"over the first {round(args.localisation_warmup * args.steps)} steps"),
               "train_digits": len(train[0]), "test_digits": len(test[0]),
               "data": (f"MNIST test set split by index: digits 0-{len(train[0]) - 1} train, the last {len(test[0])} "
                        "test; training digits re-distorted every epoch, test digits once (fixed seed)"),
               "note": ("the paper trains on MNIST's 60,000 training digits; ours are the "
                        f"{len(train[0]):,} first test digits, so our errors are higher"),
               "models": {"cnn": "zoo mnist_cnn (conv 5x5x16, pool, conv 5x5x32, pool, dense)",
                          "st_cnn": "zoo st_cnn: localisation CNN -> affine theta -> SpatialTransformer (bilinear, "
                                    "output = input size) -> the same CNN"},
               "variants": {}, "paper": PAPER}
    samples = {}
    for variant in args.variants:
        scores, st, test_x, test_y = run_variant(variant, train, test, steps=args.steps, seed=args.seed,
                                                 localisation_lr=args.localisation_lr,
                                                 warmup_steps=round(args.localisation_warmup * args.steps))
        results["variants"][variant] = {"input_size": SIZES[variant], "distortion": DESCRIPTIONS[variant], **scores,
                                        "paper": {"CNN": PAPER["test_error_percent"][variant]["CNN"],
                                                  "ST-CNN": PAPER["test_error_percent"][variant][
                                                      PAPER["comparable_rows"]["st_cnn"][variant]]}}
        parts = transformer_model(st).predict(test_x[:8], verbose=0)
        samples[variant] = (test_x[:8], np.clip(parts["warped"], 0, 255))
        theta = transformer_model(st).predict(test_x, batch_size=256, verbose=0)["theta"]
        results["variants"][variant]["theta_on_test"] = {"mean": theta.astype(float).mean(0).round(4).tolist(),
                                                          "std": theta.astype(float).std(0).round(4).tolist()}
        if args.weights_dir is not None:
            args.weights_dir.mkdir(parents=True, exist_ok=True)
            st.save_weights(args.weights_dir / f"st_cnn_{variant.lower()}.weights.h5")
        if variant == ("RTS" if "RTS" in args.variants else args.variants[-1]):
            with tempfile.TemporaryDirectory() as folder:
                with Timer() as timer:
                    hk.export_saved_model(st, Path(folder) / "st_cnn" / "1")  # raises unless a fresh process agrees
            results["export"] = {"variant": variant, "verified_in_fresh_process": True,
                                 "seconds": round(timer.wall, 1)}
    results["total_wall_seconds"] = time.perf_counter() - started
    results["load"] = machine_load()
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    write_json(results_dir / "spatial_transformer.json", results)
    plot_errors(results, results_dir / "spatial_transformer.png")
    plot_samples(samples, results_dir / "spatial_transformer_samples.png")
    for variant, entry in results["variants"].items():
        print(f"{variant}: CNN {100 * entry['cnn']['test_error']:.2f}%  ST-CNN {100 * entry['st_cnn']['test_error']:.2f}%  "
              f"(paper {entry['paper']['CNN']}% / {entry['paper']['ST-CNN']}%)")
    print(f"total {results['total_wall_seconds']:.0f} s wall")


if __name__ == "__main__":
    main()
