"""Character language models on the CPython standard library: LSTM vs GRU vs tanh RNN, in bits per character.

The corpus (``hybrid_keras.sequence.stdlib_corpus``): the running interpreter's top-level
standard-library modules (``<stdlib>/*.py``), split by file name hash into train / validation
/ test and capped at 3,000,000 / 300,000 / 500,000 characters. The vocabulary: the characters
seen at least 50 times in the training split, plus an unknown id. The JSON lists every file
used and its character count.

The three zoo models (``char_lstm``, ``char_gru``, ``char_rnn``) get the same budget: the same
hidden size (2 layers of ``--units``, a 64-d embedding), the same number of training steps
of the same batches (32 windows of 100 characters, truncated BPTT), Adam at 4e-3 with the
gradient clipped to a global norm of 1.0 (4e-3 rather than 2e-3: after 200 steps it gave
3.49 instead of 3.86 validation bpc for the LSTM, 3.20 instead of 3.38 for the tanh RNN). Their parameter counts therefore differ (LSTM 4,
GRU 3, RNN 1 weight set per unit); training wall and CPU seconds are reported beside.

Reports held-out bits per character on the test split (``bits_per_character``: every character
from the 20th of the text on, each predicted with 20..100 characters of context), validation
bpc every ``--eval-every`` steps (the first 30,000 validation characters), samples at
temperatures 0.5 and 1.0, and count baselines on the same positions: character frequencies
(unigram) and order-3 / order-5 n-grams with add-k smoothing (k chosen on validation). The
trained models are saved (with their vocabulary) for ``hybrid-keras sample``. Writes
``char_lm.json`` and ``char_lm.png``.

    ./dev.sh bench benchmarks/sequence/char_lm.py [--steps 600] [--units 128] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import CACHE_DIR, RESULTS_DIR, Timer, machine_load, save_figure, write_json  # noqa: E402

QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "hybrid_keras_quick"
CELLS = ("char_lstm", "char_gru", "char_rnn")
LABELS = {"char_lstm": "LSTM", "char_gru": "GRU", "char_rnn": "tanh RNN"}
TEMPERATURES = (0.5, 1.0)
PRIME = "def "
SMOOTHING = (0.001, 0.01, 0.1, 1.0)
MIN_COUNT = 50
CONTEXT, WARMUP = 100, 20
SAVE_DIR = CACHE_DIR / "char_rnn"


def load_corpus(args):
    from hybrid_keras.sequence import MAX_CHARACTERS, CharVocabulary, stdlib_corpus

    caps = dict(MAX_CHARACTERS) if not args.quick else {"train": 200_000, "validation": 20_000, "test": 20_000}
    corpus = stdlib_corpus(caps, stdlib=args.stdlib)
    vocabulary = CharVocabulary.fit(corpus["train"]["text"], min_count=MIN_COUNT if not args.quick else 5)
    ids = {split: vocabulary.encode(corpus[split]["text"]) for split in corpus}
    unknown = {split: float(np.mean(ids[split] == 0)) for split in ids}
    info = {"source": "CPython standard library, top-level modules (<stdlib>/*.py), sorted by name",
            "stdlib": str(args.stdlib or sysconfig.get_paths()["stdlib"]), "python": platform.python_version(),
            "split_rule": "sha256(file name)[:8] % 10: 0 test, 1 validation, else train", "caps": caps,
            "characters": {split: len(ids[split]) for split in ids}, "unknown_fraction": unknown,
            "files": {split: corpus[split]["files"] for split in corpus}}
    return vocabulary, ids, info


def baselines(ids, vocabulary_size):
    """Unigram and order-3 / order-5 add-k models: k picked on validation, bpc on test."""
    from hybrid_keras.sequence import ngram_bits_per_character

    results = {}
    for order in (1, 3, 5):
        validation = {k: ngram_bits_per_character(ids["train"], ids["validation"], vocabulary_size, order=order, k=k,
                                                  warmup=WARMUP) for k in SMOOTHING}
        k = min(validation, key=validation.get)
        results[f"order_{order}"] = {
            "k": k, "validation_bpc": validation[k],
            "test_bpc": ngram_bits_per_character(ids["train"], ids["test"], vocabulary_size, order=order, k=k,
                                                 warmup=WARMUP)}
        print(f"order-{order} add-{k}: test {results[f'order_{order}']['test_bpc']:.3f} bpc", flush=True)
    return results


def train_one(name, args, vocabulary, ids):
    import keras

    import zoo
    from hybrid_keras.sequence import bits_per_character, sample, save_char_model, train_char_model

    keras.utils.set_random_seed(args.seed)
    model = zoo.load(name, vocabulary=vocabulary, units=args.units, layers=args.layers, embedding_dim=64, dropout=0.0)
    print(f"{name}: {model.count_params():,} parameters", flush=True)
    with Timer() as timer:
        curve = train_char_model(model, ids["train"], steps=args.steps, batch_size=args.batch_size,
                                 sequence_length=args.sequence_length, learning_rate=args.learning_rate,
                                 global_clipnorm=args.clipnorm, validation_ids=ids["validation"][:args.validation_characters],
                                 eval_every=args.eval_every, context=CONTEXT, warmup=WARMUP, seed=args.seed, log=True)
    with Timer() as evaluation:
        test_bpc = bits_per_character(model, ids["test"], context=CONTEXT, warmup=WARMUP)
    samples = {str(t): sample(model, vocabulary, prime=PRIME, length=args.sample_length, temperature=t, seed=args.seed)
               for t in TEMPERATURES}
    print(f"{name}: test {test_bpc:.3f} bpc ({timer.wall:.0f} s training)", flush=True)
    for t, text in samples.items():
        print(f"--- {name}, temperature {t}:\n{PRIME}{text}\n---", flush=True)
    saved = None
    if not args.quick:
        saved = str(save_char_model(model, vocabulary, SAVE_DIR / f"{name}.weights.h5"))
    return {"parameters": model.count_params(), "test_bpc": test_bpc, "curve": curve,
            "training_seconds": {"wall": timer.wall, "cpu": timer.cpu}, "test_evaluation_seconds": evaluation.wall,
            "samples": samples, "saved": saved}


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 2]})
    colours = {"char_lstm": "tab:blue", "char_gru": "tab:green", "char_rnn": "tab:red"}
    for name, entry in results["models"].items():
        curve = entry["curve"]
        curves.plot(curve["step"], curve["validation_bpc"], marker="o", ms=3, color=colours[name],
                    label=f"{LABELS[name]} validation ({entry['parameters'] / 1e3:.0f}k params)")
        curves.plot(curve["step"], curve["train_bpc"], ls="--", color=colours[name], alpha=0.6,
                    label=f"{LABELS[name]} training (mean of the interval)")
    for key, style in (("order_1", ":"), ("order_3", "-."), ("order_5", (0, (5, 1)))):
        entry = results["baselines"][key]
        curves.axhline(entry["validation_bpc"], color="grey", ls=style, lw=1,
                       label=f"{key.replace('_', '-')} add-{entry['k']:g} (validation)")
    curves.set_xlabel("training step (batch of 32 x 100 characters)")
    curves.set_ylabel("bits per character")
    curves.set_ylim(top=min(6.0, curves.get_ylim()[1]))
    curves.set_title(f"{results['config']['layers']} x {results['config']['units']} units, same steps and batches")
    curves.legend(fontsize=7)
    names = list(results["models"]) + ["order_5", "order_3", "order_1"]
    values = [results["models"][n]["test_bpc"] if n in results["models"] else results["baselines"][n]["test_bpc"]
              for n in names]
    labels = [LABELS.get(n, n.replace("_", "-") + " n-gram") for n in names]
    bars.barh(labels, values, color=[colours.get(n, "grey") for n in names])
    for i, value in enumerate(values):
        bars.text(value, i, f" {value:.2f}", va="center", fontsize=8)
    bars.invert_yaxis()
    bars.set_xlabel("test bits per character")
    bars.set_title(f"held-out: {results['corpus']['characters']['test']:,} characters of stdlib modules")
    return save_figure(fig, path)


def main(argv=None):
    import keras

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps of each model")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation points")
    parser.add_argument("--units", type=int, default=128, help="hidden units of every recurrent layer")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sequence-length", type=int, default=100, help="characters per window (BPTT length)")
    parser.add_argument("--learning-rate", type=float, default=4e-3)
    parser.add_argument("--clipnorm", type=float, default=1.0, help="global gradient norm clip")
    parser.add_argument("--validation-characters", type=int, default=30_000, help="validation text for the curves")
    parser.add_argument("--sample-length", type=int, default=300)
    parser.add_argument("--stdlib", type=Path, default=None, help="another directory of .py modules (default: this "
                                                                  "Python's standard library)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="40 steps on a small corpus: checks the script")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.eval_every, args.units, args.sample_length = 40, 20, 32, 60
        args.validation_characters = 5_000
    start = time.perf_counter()
    vocabulary, ids, corpus = load_corpus(args)
    print(f"corpus: {corpus['characters']} characters, vocabulary {len(vocabulary)} ids", flush=True)
    results = {"backend": keras.backend.backend(), "load_before": machine_load(), "corpus": corpus,
               "vocabulary": {"size": len(vocabulary), "min_count": MIN_COUNT if not args.quick else 5,
                              "characters": "".join(vocabulary.characters)},
               "config": {key: value for key, value in vars(args).items() if key != "stdlib"} | {
                   "embedding_dim": 64, "dropout": 0.0, "optimizer": "Adam", "clipping": "global_clipnorm",
                   "budget": "same hidden size, same steps and batches", "bpc_context": CONTEXT, "bpc_warmup": WARMUP,
                   "prime": PRIME, "temperatures": list(TEMPERATURES)},
               "baselines": baselines(ids, len(vocabulary)), "models": {}}
    for name in CELLS:
        results["models"][name] = train_one(name, args, vocabulary, ids)
    results["load_after"] = machine_load()
    results["total_seconds"] = time.perf_counter() - start
    results_dir = QUICK_RESULTS_DIR if args.quick else RESULTS_DIR
    write_json(results_dir / "char_lm.json", results)
    plot(results, results_dir / "char_lm.png")
    for name, entry in results["models"].items():
        print(f"{LABELS[name]:9s} test {entry['test_bpc']:.3f} bpc  ({entry['parameters']:,} params, "
              f"{entry['training_seconds']['wall']:.0f} s wall / {entry['training_seconds']['cpu']:.0f} s CPU)")
    for key, entry in results["baselines"].items():
        print(f"{key:9s} test {entry['test_bpc']:.3f} bpc  (add-{entry['k']:g})")
    print(f"total {results['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
