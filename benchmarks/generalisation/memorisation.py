"""Memorisation: a zoo network fits partially and fully random labels, and destroyed images.

The randomisation tests of Zhang et al., "Understanding deep learning requires rethinking
generalization" (ICLR 2017), section 2, on a small real set:

- ``--dataset mnist`` (the default): MNIST digits from the data folder's 10k test split,
  the first 500 for training and the last 1,000 for testing, zero-padded to 32x32 RGB;
- ``--dataset cifar10``: the 1,000 CIFAR-10 JPEG images (700 for training, files 0000-0069
  of each class; 300 for testing, 0070-0099; the split of
  ``benchmarks/forest/classification_heads.py``), the paper's dataset.

Network: the zoo's ``mnist_cnn`` (conv 5x5 16 - pool - conv 5x5 32 - pool - softmax, 34.5k
parameters at 32x32 RGB), random init: close to the paper's small AlexNet without its
regularisers, and it has neither batch norm nor dropout, so the training accuracy the
training loop sees is the accuracy of the network itself. (A first try with ``mobilenet_v2``
alpha 0.35 fitted every CIFAR-10 setting in the training forward pass, in 198-354 steps of
128, but with its stored batch-norm statistics it kept 1.6-6.7 % training error, and it
generalised poorly even from true labels: test error 0.87 on CIFAR-10 (0.90 with random
labels) and 0.60 on MNIST. The batch-norm mismatch would have hidden the effect measured.) Nothing regularises (no weight decay, no dropout, no data
augmentation): the paper's "no regularisation" runs. Adam (learning rate 1e-3), batches of
32 (the paper's 128 would be a quarter of the training set per step), reshuffled every
epoch; every setting starts from the same initial weights and a fresh optimizer state (the
run is seeded once, at the start).

Settings (labels of the test images are always the true ones):

- label corruption p in {0, 0.2, 0.4, 0.6, 0.8, 1.0}: each training label replaced with
  probability p by a uniform random class (fixed seed); p = 1 is "random labels";
- shuffled pixels: one fixed permutation of the pixel positions, applied to every image
  (training and test); random pixels: a different permutation per image; Gaussian: each
  image replaced by Gaussian noise with the training set's per-channel mean and variance.
  These three keep the true labels.

Each setting trains until its training accuracy reaches 100 % or ``--max-epochs``. The
training accuracy that stops it is the one the training loop measures: every training
image classified correctly in the forward pass of its batch during one epoch. The training
error of the final network (all images after the last step) is reported beside it, and so
is the test error. The time to fit is counted in optimizer steps (the machine is shared, so seconds
would measure the neighbours).

Writes ``memorisation.json`` and ``memorisation.png`` (``memorisation_cifar10.*`` for
CIFAR-10): the paper's Figure 1, training loss against steps per setting; steps to fit
against label corruption; test error against label corruption.

    ./dev.sh bench benchmarks/generalisation/memorisation.py [--dataset mnist|cifar10] [--max-epochs 150] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import (DEFAULT_DATA_DIR, RESULTS_DIR, machine, machine_load, save_figure,  # noqa: E402
                               staged_arrays, write_json)
from benchmarks.forest.classification_heads import cifar  # noqa: E402
from benchmarks.generalisation import corruptions  # noqa: E402

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"  # --quick runs never touch the results
LABEL_CORRUPTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
INPUT_CORRUPTIONS = ("shuffled pixels", "random pixels", "gaussian")
NUM_CLASSES = 10


def mnist_subset(data_dir: Path, train_images: int, test_images: int):
    """The first ``train_images`` and the last ``test_images`` of the MNIST test split, as 32x32
    RGB (zero-padded, grey repeated)."""
    def arrays(split):
        return staged_arrays(data_dir, "mnist", split, image_size=(32, 32), method="pad", rgb=True)

    return arrays(f"test[:{train_images}]"), arrays(f"test[-{test_images}:]")


def settings(train, test, seed: int):
    """(name, label corruption, training images, training labels, test images) per setting."""
    (train_x, train_y), (test_x, _) = train, test
    for p in LABEL_CORRUPTIONS:
        name = "true labels" if p == 0 else "random labels" if p == 1 else f"labels corrupted p={p:.1f}"
        yield name, p, train_x, corruptions.corrupt_labels(train_y, p, NUM_CLASSES, seed=seed), test_x
    yield ("shuffled pixels", None, corruptions.shuffle_pixels(train_x, seed), train_y,
           corruptions.shuffle_pixels(test_x, seed))
    yield ("random pixels", None, corruptions.random_pixels(train_x, seed), train_y,
           corruptions.random_pixels(test_x, seed + 1))
    yield ("gaussian", None, corruptions.gaussian_images(train_x, seed), train_y,
           corruptions.gaussian_images(test_x, seed + 1, reference=train_x))


def build_model(seed: int, learning_rate: float):
    """The network, compiled once; ``reset()`` puts back its initial weights and a fresh
    optimizer state, so every setting starts from the same point with no recompilation."""
    import keras

    import zoo

    keras.utils.set_random_seed(seed)
    model = zoo.load("mnist_cnn", input_shape=(32, 32, 3), classes=NUM_CLASSES)
    optimizer = keras.optimizers.Adam(learning_rate)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    optimizer_state = [variable.numpy() for variable in optimizer.variables]

    def reset():
        model.set_weights(weights)
        for variable, value in zip(optimizer.variables, optimizer_state):
            variable.assign(value)

    return model, reset


def accuracy(model, images, labels) -> float:
    predicted = model.predict(images, batch_size=350, verbose=0).argmax(-1)
    return float(np.mean(predicted == labels))


def fit_setting(model, train_x, train_y, test_x, test_y, *, max_epochs: int, batch_size: int) -> dict:
    """Train until the epoch's training accuracy is 100 % (or ``max_epochs``); the curve per epoch."""
    import keras

    steps_per_epoch = math.ceil(len(train_y) / batch_size)
    curve = {"epoch": [], "step": [], "loss": [], "train_accuracy": []}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            curve["epoch"].append(epoch + 1)
            curve["step"].append((epoch + 1) * steps_per_epoch)
            curve["loss"].append(float(logs["loss"]))
            curve["train_accuracy"].append(float(logs["accuracy"]))
            if not math.isfinite(logs["loss"]):
                self.model.stop_training = True
            # every image right: accuracy is a count over len(train_y) images, so 1.0 up to rounding
            if logs["accuracy"] >= 1.0 - 0.5 / len(train_y):
                self.model.stop_training = True

    started, cpu = time.perf_counter(), time.process_time()
    model.fit(train_x, train_y, batch_size=batch_size, epochs=max_epochs, shuffle=True, callbacks=[Record()],
              verbose=0)
    fitted = curve["train_accuracy"][-1] >= 1.0 - 0.5 / len(train_y)
    epochs = len(curve["epoch"])
    return {
        "fitted": fitted,
        "epochs_to_fit": epochs if fitted else None,
        "steps_to_fit": epochs * steps_per_epoch if fitted else None,
        "epochs_trained": epochs,
        "train_error_last_epoch": 1.0 - curve["train_accuracy"][-1],
        "train_error": 1.0 - accuracy(model, train_x, train_y),
        "test_error": 1.0 - accuracy(model, test_x, test_y),
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "curve": curve,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where results go (default {RESULTS_DIR}; with --quick, {QUICK_RESULTS_DIR})")
    parser.add_argument("--dataset", choices=("mnist", "cifar10"), default="mnist")
    parser.add_argument("--max-epochs", type=int, default=150, help="cap per setting (default 150)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="fewer images, 2 epochs per setting: checks the script runs")
    args = parser.parse_args(argv)
    args.out = args.out or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    max_epochs = 2 if args.quick else args.max_epochs

    import keras

    if args.dataset == "mnist":
        train, test = mnist_subset(args.data, 200 if args.quick else 500, 200 if args.quick else 1000)
        data = (f"MNIST: {len(train[1])} training images (test split [:{len(train[1])}]), {len(test[1])} test "
                f"images (test split [-{len(test[1])}:]), zero-padded to 32x32 RGB")
    else:
        train, test = cifar(args.data, args.quick)
        data = (f"CIFAR-10 JPEG: {len(train[1])} training images (the first 70 % of each class's files), "
                f"{len(test[1])} test images (the rest), 32x32")
    train = (train[0].astype(np.float32), train[1])  # raw pixels: the model normalises
    test = (test[0].astype(np.float32), test[1])
    model, reset = build_model(args.seed, args.learning_rate)
    results = {
        "machine": machine(), "load_before": machine_load(), "backend": keras.backend.backend(),
        "paper": "Zhang, Bengio, Hardt, Recht, Vinyals, Understanding deep learning requires rethinking "
                 "generalization, ICLR 2017 (arXiv:1611.03530), section 2 and Figure 1",
        "data": data,
        "model": f"zoo mnist_cnn (conv5x5 16, pool, conv5x5 32, pool, dense), random init, no batch norm, "
                 f"no dropout, {model.count_params()} parameters",
        "training": {"optimizer": "Adam", "learning_rate": args.learning_rate, "batch_size": args.batch_size,
                     "max_epochs": max_epochs, "steps_per_epoch": math.ceil(len(train[1]) / args.batch_size),
                     "weight_decay": 0, "data_augmentation": False, "seed": args.seed,
                     "fit_criterion": "training accuracy 100 % over one epoch as the training loop measures it "
                                      "(each image in the forward pass of its batch)"},
        "settings": {},
    }
    for name, p, train_x, train_y, test_x in settings(train, test, args.seed):
        reset()  # no re-seeding here: setting TensorFlow's global seed retraces the compiled step
        result = fit_setting(model, train_x, train_y, test_x, test[1], max_epochs=max_epochs,
                             batch_size=args.batch_size)
        result = {"label_corruption": p, "labels_changed": float(np.mean(train_y != train[1])), **result}
        results["settings"][name] = result
        print(f"[{name}] {'fitted in ' + str(result['steps_to_fit']) + ' steps' if result['fitted'] else 'not fitted'}"
              f" ({result['epochs_trained']} epochs); train error (last epoch) {result['train_error_last_epoch']:.3f} "
              f"(final network {result['train_error']:.3f}), test error {result['test_error']:.3f}; "
              f"{result['wall_seconds']:.0f} s wall, {result['cpu_seconds']:.0f} s CPU", flush=True)
    true_steps = results["settings"]["true labels"]["steps_to_fit"]
    for result in results["settings"].values():
        result["steps_to_fit_vs_true_labels"] = (result["steps_to_fit"] / true_steps
                                                 if result["steps_to_fit"] and true_steps else None)
    results["load_after"] = machine_load()
    stem = "memorisation" if args.dataset == "mnist" else "memorisation_cifar10"
    write_json(args.out / f"{stem}.json", results)
    plot(results, args.out / f"{stem}.png")
    return 0


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, slowdown, errors) = plt.subplots(1, 3, figsize=(15, 4.4))
    colours = plt.get_cmap("viridis")
    label_runs = {n: r for n, r in results["settings"].items() if r["label_corruption"] is not None}
    for name, result in results["settings"].items():
        p = result["label_corruption"]
        style = ({"color": colours(0.85 * p), "linestyle": "-"} if p is not None else
                 {"color": {"shuffled pixels": "tab:red", "random pixels": "tab:orange", "gaussian": "tab:gray"}[name],
                  "linestyle": "--"})
        curves.plot(result["curve"]["step"], result["curve"]["loss"], label=name, **style)
    curves.set_xlabel("optimizer steps (batches of %d)" % results["training"]["batch_size"])
    curves.set_ylabel("average training loss (epoch)")
    curves.set_yscale("log")
    curves.set_title("(a) learning curves")
    curves.legend(fontsize=7)

    ps = [r["label_corruption"] for r in label_runs.values()]
    cap = results["training"]["max_epochs"] * results["training"]["steps_per_epoch"]
    fitted = [(p, r["steps_to_fit"]) for p, r in zip(ps, label_runs.values()) if r["fitted"]]
    slowdown.plot([p for p, _ in fitted], [s for _, s in fitted], "o-", label="labels corrupted")
    unfitted = [p for p, r in zip(ps, label_runs.values()) if not r["fitted"]]
    if unfitted:
        slowdown.plot(unfitted, [cap] * len(unfitted), "o", markerfacecolor="none", color="tab:blue",
                      label=f"not fitted in {cap} steps")
    for name, marker in (("shuffled pixels", "s"), ("random pixels", "^"), ("gaussian", "D")):
        result = results["settings"][name]
        slowdown.plot([0.0], [result["steps_to_fit"] if result["fitted"] else cap], marker,
                      markerfacecolor=None if result["fitted"] else "none",
                      label=f"{name} (true labels)" + ("" if result["fitted"] else ", not fitted"))
    slowdown.set_xlabel("label corruption p")
    slowdown.set_ylabel("steps to 100 % training accuracy")
    slowdown.set_ylim(bottom=0)
    slowdown.set_title("(b) time to fit")
    slowdown.legend(fontsize=7)

    errors.plot(ps, [r["test_error"] for r in label_runs.values()], "o-", label="test error")
    errors.plot(ps, [r["train_error"] for r in label_runs.values()], "s:",
                label="training error, final network")
    errors.plot(ps, [r["train_error_last_epoch"] for r in label_runs.values()], "x--", label="training error, last epoch as trained")
    errors.axhline(0.9, color="grey", linewidth=0.8, linestyle=":")
    errors.set_xlabel("label corruption p")
    errors.set_ylabel("error")
    errors.set_ylim(-0.02, 1.0)
    errors.set_title("(c) test error against label noise")
    errors.legend(fontsize=7)
    fig.suptitle(f"Memorisation (Zhang et al. 2017): {results['model'].split(' (')[0]}; {results['data']}", fontsize=9)
    return save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
