"""The vanishing gradient: ||d loss_T / d h_t|| against T - t for a tanh RNN and an LSTM.

Two one-layer character models of the zoo with the same hidden size (``char_rnn``: Keras'
SimpleRNN with tanh; ``char_lstm``), each measured twice: at initialisation (Keras' defaults:
Glorot-uniform input kernels, orthogonal recurrent kernels, zero biases, the LSTM's forget-gate
bias 1) and after ``--steps`` training steps on the standard-library corpus (as in
``char_lm.py``: 32 windows of 100 characters, Adam 4e-3, global norm clip 1.0).

For ``--sequences`` windows of T = ``--length`` validation characters, the recurrent layer's
cell is stepped by hand (``hybrid_keras.sequence.gradient_norms_through_time``); loss_T is the
cross-entropy of the character after the window, predicted from h_T, and the norm of its
gradient with respect to the hidden state h_t (for the LSTM also the cell state c_t) is
averaged over the windows for every lag T - t. Writes ``vanishing_gradient.json`` and ``.png``
(log scale; solid: trained, dashed: at initialisation). Also reported: the mean decay per
step, a least-squares fit of log10 norm against the lag.

    ./dev.sh bench benchmarks/sequence/vanishing_gradient.py [--steps 300] [--quick]
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

from benchmarks.common import RESULTS_DIR, machine_load, save_figure, write_json  # noqa: E402

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
MODELS = {"char_rnn": "tanh RNN", "char_lstm": "LSTM"}


def measure(model, ids, length: int, sequences: int, seed: int) -> dict:
    """Mean (and median) gradient norms per lag over ``sequences`` random windows of ``ids``."""
    import keras

    from hybrid_keras.sequence import gradient_norms_through_time

    rng = np.random.default_rng(seed)
    starts = rng.choice(len(ids) - length - 1, size=sequences, replace=False)
    windows = ids[starts[:, None] + np.arange(length + 1)[None, :]]
    inputs = model.get_layer("embedding")(windows[:, :-1])
    targets = keras.ops.convert_to_tensor(windows[:, -1])
    head = model.get_layer("logits")
    cell = model.get_layer("rnn_1").cell

    def loss(h_last):  # the cross-entropy of the character after the window, per sequence
        return keras.losses.sparse_categorical_crossentropy(targets, head(h_last), from_logits=True)

    result = {}
    lstm = isinstance(cell.state_size, (list, tuple)) and len(cell.state_size) == 2
    states = {"h": 0, "c": 1} if lstm else {"h": 0}
    for label, index in states.items():
        norms = gradient_norms_through_time(cell, inputs, loss, state=index)[:, ::-1]  # column k: lag T - t = k
        lags = np.arange(length)
        mean = norms.mean(axis=0)  # NaN at lag 0 for the LSTM's c (see gradient_norms_through_time)
        known = np.isfinite(mean)
        slope = np.polyfit(lags[known], np.log10(np.maximum(mean[known], 1e-30)), 1)[0]
        first = int(np.argmax(known))
        result[label] = {"mean": [float(v) if np.isfinite(v) else None for v in mean],
                         "median": [float(v) if np.isfinite(v) else None for v in np.median(norms, axis=0)],
                         "decay_per_step": float(10 ** slope), "first_lag": first,
                         f"ratio_lag_{min(50, length - 1)}_to_{first}": float(mean[min(50, length - 1)] / mean[first])}
    return result


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axis = plt.subplots(figsize=(7, 4.5))
    colours = {"char_rnn": "tab:red", "char_lstm": "tab:blue"}
    for name, entry in results["models"].items():
        for stage, style in (("trained", "-"), ("initial", "--")):
            for state, data in entry[stage].items():
                if state == "c":
                    axis.plot([np.nan if v is None else v for v in data["mean"]], ls=":" if stage == "trained" else "-.",
                              color="tab:purple", alpha=1.0 if stage == "trained" else 0.6,
                              label=f"LSTM cell state c_t, {stage} (x{data['decay_per_step']:.3f}/step)")
                    continue
                axis.plot(data["mean"], ls=style, color=colours[name],
                          label=f"{MODELS[name]} h_t, {stage} (x{data['decay_per_step']:.3f}/step)")
    axis.set_yscale("log")
    axis.set_xlabel("T - t (steps back from the loss)")
    axis.set_ylabel("mean ||d loss_T / d state_t||")
    config = results["config"]
    axis.set_title(f"1 x {config['units']} units; {config['sequences']} windows of {config['length']} stdlib characters; "
                   f"trained {config['steps']} steps", fontsize=9)
    axis.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv=None):
    import keras

    import zoo
    from benchmarks.sequence.char_lm import load_corpus
    from hybrid_keras.sequence import bits_per_character, train_char_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps before the 'trained' measurement")
    parser.add_argument("--units", type=int, default=128)
    parser.add_argument("--length", type=int, default=100, help="T: the window the gradient flows back through")
    parser.add_argument("--sequences", type=int, default=32, help="windows the norms are averaged over")
    parser.add_argument("--stdlib", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="20 steps, short windows: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.units, args.length, args.sequences = 20, 32, 30, 8
    start = time.perf_counter()
    vocabulary, ids, corpus = load_corpus(args)
    results = {"backend": keras.backend.backend(), "load_before": machine_load(),
               "config": vars(args) | {"stdlib": str(args.stdlib) if args.stdlib else None, "layers": 1,
                                       "embedding_dim": 64, "optimizer": "Adam 4e-3, global_clipnorm 1.0",
                                       "batch": "32 windows of 100 characters"},
               "corpus_characters": corpus["characters"], "vocabulary_size": len(vocabulary), "models": {}}
    for name in MODELS:
        keras.utils.set_random_seed(args.seed)
        model = zoo.load(name, vocabulary=vocabulary, units=args.units, layers=1, embedding_dim=64)
        entry = {"parameters": model.count_params(),
                 "initial": measure(model, ids["validation"], args.length, args.sequences, args.seed)}
        curve = train_char_model(model, ids["train"], steps=args.steps, batch_size=32, sequence_length=100,
                                 learning_rate=4e-3, global_clipnorm=1.0, seed=args.seed)
        entry["training_bpc"] = curve["train_bpc"][-1]
        entry["validation_bpc"] = bits_per_character(model, ids["validation"][:30_000])
        entry["trained"] = measure(model, ids["validation"], args.length, args.sequences, args.seed)
        results["models"][name] = entry
        for stage in ("initial", "trained"):
            for state, data in entry[stage].items():
                print(f"{MODELS[name]} {stage} {state}: lag {data['first_lag']} {data['mean'][data['first_lag']]:.3g}, lag {min(50, args.length - 1)} "
                      f"{data['mean'][min(50, args.length - 1)]:.3g}, last {data['mean'][-1]:.3g}, "
                      f"x{data['decay_per_step']:.4f} per step", flush=True)
        print(f"{MODELS[name]}: validation {entry['validation_bpc']:.3f} bpc after {args.steps} steps", flush=True)
    results["load_after"] = machine_load()
    results["total_seconds"] = time.perf_counter() - start
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    write_json(results_dir / "vanishing_gradient.json", results)
    plot(results, results_dir / "vanishing_gradient.png")
    print(f"total {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
