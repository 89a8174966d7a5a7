"""Batch normalisation: the same network with and without it, at several learning rates.

The claim of Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift" (ICML 2015), sections 4.2-4.2.2: with batch norm a
network trains at much higher learning rates and reaches a given accuracy in far fewer
steps (BN-Inception matched Inception's 72.2 % in 14 times fewer steps at 5 times its
learning rate, BN-x5; BN-x30 at 30 times).

Networks: the zoo's ``vgg11`` and ``vgg11_bn`` (include_top=False, global average pooling,
a 10-way softmax ``Dense`` as the head; dropout is in the top only, so none here). The two
are identical apart from batch norm after each convolution: same layers, and ``vgg11_bn``
starts from a copy of ``vgg11``'s initial convolution and head weights. Both take raw
pixels and normalise them as VGG does (caffe: BGR, ImageNet mean subtracted). VGG rather
than GoogLeNet / BN-Inception because that pair differs only by batch norm (BN-Inception
also changes the modules: 5x5 convolutions replaced by two 3x3, other pooling), so a
difference in training speed can only come from batch norm.

Data: MNIST (the 10k test digits in the data folder: first 8,000 for training, last 2,000
held out), zero-padded to 32x32 and repeated to RGB. Training: SGD with momentum 0.9 at each
learning rate of ``--learning-rates``, batches of 32 in one fixed order (the same for every
run; fewer steps than images, so every batch is new to the network when it is seen),
``--steps`` steps.

Measured per step: the loss and the accuracy of the batch in its training forward pass
(before the update, on images not trained on yet: a held-out measure in training mode),
and its trailing mean over 10 batches; every ``--eval-every`` steps the accuracy on 300
held-out images in inference mode. The steps to ``--threshold`` (90 %) accuracy on both
curves, "not reached" when they never get there; a run whose loss turns NaN or infinite is
stopped and reported as diverged. Writes ``batch_norm.json`` and ``batch_norm.png``.

    ./dev.sh bench benchmarks/generalisation/batch_norm.py [--data ../shared/data] [--steps 100] [--quick]
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

from benchmarks.common import DEFAULT_DATA_DIR, RESULTS_DIR, machine, machine_load, save_figure, write_json  # noqa: E402
from benchmarks.forest.classification_heads import mnist  # noqa: E402
from benchmarks.generalisation.curves import moving_average, steps_to_threshold  # noqa: E402

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"  # --quick runs never touch the results
MODELS = ("vgg11", "vgg11_bn")
LEARNING_RATES = (0.003, 0.01, 0.03, 0.1)
SMOOTHING = 10  # batches in the trailing mean of the training-batch accuracy
EVAL_IMAGES = 300


def build(name: str, initial=None):
    """``name`` without its top, average-pooled, with a 10-way softmax head; compiled with SGD
    (momentum 0.9). ``initial``: a built model whose same-named layers' weights are copied in."""
    import keras

    import zoo

    base = zoo.load(name, weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(base.output)
    model = keras.Model(base.input, outputs, name=name)
    if initial is not None:
        for layer in initial.layers:
            if layer.weights:
                model.get_layer(layer.name).set_weights(layer.get_weights())
    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    optimizer.build(model.trainable_variables)
    return model


def train_run(model, initial_weights, initial_optimizer, learning_rate, batches, held_out, *, eval_every: int,
              threshold: float, seconds: float) -> dict:
    """One run from the initial weights at ``learning_rate``: per-step curves, held-out
    accuracy, steps to ``threshold``, divergence."""
    model.set_weights(initial_weights)
    for variable, value in zip(model.optimizer.variables, initial_optimizer):
        variable.assign(value)
    model.optimizer.learning_rate.assign(learning_rate)
    held_x, held_y = held_out

    def held_out_accuracy():
        return float(np.mean(model.predict(held_x, batch_size=250, verbose=0).argmax(-1) == held_y))

    steps, losses, accuracies, eval_steps, eval_accuracies = [], [], [], [0], [held_out_accuracy()]
    diverged_at, stopped_by_time = None, False
    started, cpu = time.perf_counter(), time.process_time()
    for step, (x, y) in enumerate(batches, start=1):
        model.reset_metrics()  # Keras 3 train_on_batch accumulates metrics until reset
        logs = model.train_on_batch(x, y, return_dict=True)
        loss = float(logs["loss"])
        steps.append(step)
        losses.append(loss)
        accuracies.append(float(logs["accuracy"]))
        if not math.isfinite(loss):
            diverged_at = step
            break
        if step % eval_every == 0 or step == len(batches):
            eval_steps.append(step)
            eval_accuracies.append(held_out_accuracy())
        if time.perf_counter() - started > seconds:
            stopped_by_time = step < len(batches)
            break
    smoothed = moving_average(accuracies, SMOOTHING)
    return {
        "learning_rate": learning_rate,
        "steps_run": len(steps),
        "diverged": diverged_at is not None,
        "diverged_at_step": diverged_at,
        "stopped_by_time_budget": stopped_by_time,
        "steps_to_threshold_train": steps_to_threshold(steps, smoothed, threshold),
        "steps_to_threshold_held_out": steps_to_threshold(eval_steps, eval_accuracies, threshold),
        "final_train_accuracy_smoothed": float(smoothed[-1]) if diverged_at is None else None,
        "final_held_out_accuracy": eval_accuracies[-1] if diverged_at is None else None,
        "best_held_out_accuracy": float(np.nanmax(eval_accuracies)),
        "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "curve": {"step": steps, "loss": losses, "batch_accuracy": accuracies,
                  "batch_accuracy_smoothed": smoothed.tolist()},
        "held_out_curve": {"step": eval_steps, "accuracy": eval_accuracies},
    }


def describe(run, threshold) -> str:
    if run["diverged"]:
        return f"diverged (NaN loss) at step {run['diverged_at_step']}"
    reached = lambda steps: f"{steps} steps" if steps is not None else "not reached"  # noqa: E731
    return (f"steps to {threshold:.0%}: train (10-batch mean) {reached(run['steps_to_threshold_train'])}, "
            f"held out {reached(run['steps_to_threshold_held_out'])}; final held out "
            f"{run['final_held_out_accuracy']:.3f}")


REPORTED_THRESHOLDS = (0.5, 0.7, 0.9)


def _curve(run, curve: str):
    """(steps, accuracies) of a run's smoothed training-batch curve or its held-out curve."""
    if curve == "train":
        return run["curve"]["step"], run["curve"]["batch_accuracy_smoothed"]
    return run["held_out_curve"]["step"], run["held_out_curve"]["accuracy"]


def summarise(results) -> dict:
    """Per curve (smoothed training-batch accuracy, held-out accuracy):

    - ``steps_to``: steps to 50 / 70 / 90 % per model and learning rate (None: not reached);
    - ``best``: per model, the fastest learning rate to ``--threshold``;
    - the paper's own comparison (Inception's best accuracy, 72.2 %, as the bar BN-Inception
      had to reach): the plain network's best accuracy over all its runs, the steps it took
      there, the steps each batch-norm run takes to the same accuracy, and the ratio of the
      plain network's steps to the fastest batch-norm run's.
    """
    summary = {}
    for curve in ("train", "held_out"):
        steps_to = {name: {str(run["learning_rate"]): {f"{t:g}": steps_to_threshold(*_curve(run, curve), t)
                                                        for t in REPORTED_THRESHOLDS}
                           for run in results["runs"][name]} for name in MODELS}
        key = f"steps_to_threshold_{curve}"
        best = {}
        for name in MODELS:
            reached = [(run[key], run["learning_rate"]) for run in results["runs"][name] if run[key] is not None]
            best[name] = {"steps": min(reached)[0], "learning_rate": min(reached)[1]} if reached else None
        plain_best = max(((accuracy, step, run["learning_rate"]) for run in results["runs"]["vgg11"]
                          for step, accuracy in zip(*_curve(run, curve))), key=lambda entry: (entry[0], -entry[1]))
        accuracy, plain_steps, plain_rate = plain_best
        bn_steps = {str(run["learning_rate"]): steps_to_threshold(*_curve(run, curve), accuracy)
                    for run in results["runs"]["vgg11_bn"]}
        fastest = min((steps for steps in bn_steps.values() if steps is not None), default=None)
        summary[curve] = {
            "steps_to": steps_to, "best": best,
            "plain_best": {"accuracy": accuracy, "step": plain_steps, "learning_rate": plain_rate},
            "bn_steps_to_plain_best": bn_steps,
            "plain_steps_over_fastest_bn_steps": plain_steps / fastest if fastest else None,
        }
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--out", type=Path, default=None,
                        help=f"where results go (default {RESULTS_DIR}; with --quick, {QUICK_RESULTS_DIR})")
    parser.add_argument("--learning-rates", type=float, nargs="+", default=list(LEARNING_RATES))
    parser.add_argument("--steps", type=int, default=100, help="SGD steps per run (default 100)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=20, help="steps between held-out evaluations")
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--seconds", type=float, default=240.0,
                        help="wall-clock guard per run (a run cut by it is reported as such)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="6 steps per run, 2 rates: checks the script runs")
    args = parser.parse_args(argv)
    args.out = args.out or (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR)
    if args.quick:
        args.steps, args.eval_every, args.learning_rates = 6, 3, args.learning_rates[:1] + args.learning_rates[-1:]

    import keras

    keras.utils.set_random_seed(args.seed)  # once: re-seeding TensorFlow retraces compiled steps
    (train_x, train_y), (test_x, test_y) = mnist(args.data, args.quick)
    order = np.random.default_rng(args.seed).permutation(len(train_y))[: args.steps * args.batch_size]
    if len(order) < args.steps * args.batch_size:
        raise ValueError(f"--steps x --batch-size must not exceed the {len(train_y)} training images (one pass). "
                         f"Received: {args.steps} x {args.batch_size}")
    batches = [(train_x[chunk].astype(np.float32), train_y[chunk]) for chunk in np.split(order, args.steps)]
    held_out = (test_x[:EVAL_IMAGES].astype(np.float32), test_y[:EVAL_IMAGES])

    results = {
        "machine": machine(), "load_before": machine_load(), "backend": keras.backend.backend(),
        "paper": "Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal "
                 "Covariate Shift, ICML 2015 (arXiv:1502.03167), section 4.2 and Figure 2",
        "data": f"MNIST test split: {len(train_y)} training images (one pass of {args.steps} batches), "
                f"the first {len(held_out[1])} of the {len(test_y)} held-out images, 32x32 zero-padded RGB",
        "models": "zoo vgg11 / vgg11_bn, include_top=False, pooling='avg', Dense(10, softmax); "
                  "vgg11_bn starts from vgg11's initial convolution and head weights",
        "training": {"optimizer": "SGD momentum 0.9", "learning_rates": args.learning_rates,
                     "batch_size": args.batch_size, "steps": args.steps, "eval_every": args.eval_every,
                     "threshold": args.threshold, "smoothing_batches": SMOOTHING, "seed": args.seed,
                     "seconds_guard_per_run": args.seconds},
        "runs": {},
    }
    plain = build("vgg11")
    models = {"vgg11": plain, "vgg11_bn": build("vgg11_bn", initial=plain)}  # before any training
    for name, model in models.items():
        results.setdefault("parameters", {})[name] = model.count_params()
        initial_weights = model.get_weights()
        initial_optimizer = [variable.numpy() for variable in model.optimizer.variables]
        results["runs"][name] = []
        for learning_rate in args.learning_rates:
            run = train_run(model, initial_weights, initial_optimizer, learning_rate, batches, held_out,
                            eval_every=args.eval_every, threshold=args.threshold, seconds=args.seconds)
            results["runs"][name].append(run)
            print(f"[{name} lr {learning_rate:g}] {describe(run, args.threshold)}; {run['steps_run']} steps in "
                  f"{run['wall_seconds']:.0f} s wall, {run['cpu_seconds']:.0f} s CPU"
                  + ("; cut by the time guard" if run["stopped_by_time_budget"] else ""), flush=True)
    results["summary"] = summarise(results)
    for curve, entry in results["summary"].items():
        plain = entry["plain_best"]
        print(f"[{curve}] vgg11's best accuracy {plain['accuracy']:.3f} (lr {plain['learning_rate']:g}, step "
              f"{plain['step']}); vgg11_bn steps to it per rate {entry['bn_steps_to_plain_best']}; "
              f"ratio {entry['plain_steps_over_fastest_bn_steps']}", flush=True)
    results["load_after"] = machine_load()
    write_json(args.out / "batch_norm.json", results)
    plot(results, args.out / "batch_norm.png")
    return 0


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    threshold = results["training"]["threshold"]
    rates = results["training"]["learning_rates"]
    colours = {rate: plt.get_cmap("plasma")(0.85 * i / max(1, len(rates) - 1)) for i, rate in enumerate(rates)}
    styles = {"vgg11": "--", "vgg11_bn": "-"}
    fig, (train_axis, held_axis, bars) = plt.subplots(1, 3, figsize=(16, 4.6))
    for name in MODELS:
        for run in results["runs"][name]:
            label = f"{name} lr {run['learning_rate']:g}" + (" (diverged)" if run["diverged"] else "")
            kwargs = {"color": colours[run["learning_rate"]], "linestyle": styles[name], "label": label}
            train_axis.plot(run["curve"]["step"], run["curve"]["batch_accuracy_smoothed"], **kwargs)
            held_axis.plot(run["held_out_curve"]["step"], run["held_out_curve"]["accuracy"], marker=".", **kwargs)
            if run["diverged"]:
                train_axis.plot([run["diverged_at_step"]], [0.0], "x", color=colours[run["learning_rate"]])
    for axis, title in ((train_axis, "training-batch accuracy (mean of 10 batches, each new)"),
                        (held_axis, f"held-out accuracy ({EVAL_IMAGES} images, inference mode)")):
        axis.axhline(threshold, color="grey", linewidth=0.8, linestyle=":")
        axis.set_xlabel("SGD steps (batches of %d)" % results["training"]["batch_size"])
        axis.set_ylabel("accuracy")
        axis.set_ylim(0, 1.0)
        axis.set_title(title, fontsize=9)
    train_axis.legend(fontsize=6, ncol=2)

    width = 0.38
    cap = results["training"]["steps"]
    for offset, name in ((-width / 2, "vgg11"), (width / 2, "vgg11_bn")):
        for i, run in enumerate(results["runs"][name]):
            steps = run["steps_to_threshold_train"]
            x = i + offset
            bars.bar(x, steps if steps is not None else cap, width, color="tab:blue" if name == "vgg11_bn" else "tab:grey",
                     alpha=1.0 if steps is not None else 0.25, label=name if i == 0 else None)
            note = str(steps) if steps is not None else ("diverged" if run["diverged"] else "not\nreached")
            bars.text(x, (steps if steps is not None else cap) + cap * 0.01, note, ha="center", va="bottom", fontsize=7)
    bars.set_xticks(range(len(rates)), [f"{rate:g}" for rate in rates])
    bars.set_xlabel("learning rate (SGD, momentum 0.9)")
    bars.set_ylabel(f"steps to {threshold:.0%} training-batch accuracy")
    bars.set_ylim(0, cap * 1.15)
    bars.set_title(f"steps to {threshold:.0%} (pale: not within {cap} steps)", fontsize=9)
    bars.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    paper = results["summary"]["train"]
    plain = paper["plain_best"]
    reached = {rate: steps for rate, steps in paper["bn_steps_to_plain_best"].items() if steps is not None}
    note = (f"vgg11's best training-batch accuracy: {plain['accuracy']:.2f}\n(lr {plain['learning_rate']:g}, "
            f"step {plain['step']}); vgg11_bn reaches it\n"
            + (f"in {min(reached.values())} steps (lr {min(reached, key=reached.get)}): "
               f"{paper['plain_steps_over_fastest_bn_steps']:.1f}x fewer" if reached else "never"))
    bars.text(0.62, 0.45, note, transform=bars.transAxes, ha="center", fontsize=7,
              bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"})
    fig.suptitle("Batch normalisation (Ioffe & Szegedy 2015): zoo vgg11 vs vgg11_bn on MNIST 32x32; "
                 "solid = with BN, dashed = without", fontsize=10)
    return save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
