"""Zoo models against keras.applications' same architecture, in the same run.

Measures inference images/s (a compiled forward pass) and train-step images/s
(``train_on_batch``) for VGG16 and MobileNetV2, both with random weights, same batch,
same input; reports zoo/keras.applications ratios (goal >= 0.95). Writes
``zoo_throughput.json`` and ``.png`` under ``--out``.

    ./dev.sh bench benchmarks/zoo_throughput.py [--repeats 5] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import RESULTS_DIR, machine, median_seconds, save_figure, write_json  # noqa: E402

CASES = {
    # name: (zoo kwargs, keras.applications constructor name, kwargs, batch)
    "vgg16": ({}, "VGG16", {}, 4),
    "mobilenet_v2": ({"alpha": 1.0}, "MobileNetV2", {"alpha": 1.0}, 16),
}


def measure(model, batch: int, repeats: int) -> dict:
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, 224, 224, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 1000, size=batch))
    forward = tf.function(lambda images: model(images, training=False), jit_compile=False)
    inference = median_seconds(lambda: forward(x).numpy(), repeats=repeats, warmup=2)
    model.compile(optimizer=keras.optimizers.SGD(1e-3), loss="sparse_categorical_crossentropy")
    train = median_seconds(lambda: model.train_on_batch(x, y), repeats=repeats, warmup=2)
    return {"inference_images_per_s": batch / inference, "train_images_per_s": batch / train}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import keras

    import zoo

    results = {"machine": machine(), "repeats": args.repeats, "input": "224x224x3, random weights, float32", "models": {}}
    for name, (zoo_kwargs, keras_name, keras_kwargs, batch) in CASES.items():
        keras.utils.set_random_seed(0)
        ours = measure(zoo.load(name, **zoo_kwargs), batch, args.repeats)
        keras.backend.clear_session()
        theirs = measure(getattr(keras.applications, keras_name)(weights=None, **keras_kwargs), batch, args.repeats)
        keras.backend.clear_session()
        ratios = {key: ours[key] / theirs[key] for key in ours}
        results["models"][name] = {"batch": batch, "zoo": ours, "keras_applications": theirs, "ratio": ratios}
        print(f"{name}: " + ", ".join(f"{k} {ours[k]:.1f} vs {theirs[k]:.1f} (ratio {ratios[k]:.3f})" for k in ours), flush=True)
    write_json(args.out / "zoo_throughput.json", results)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels, values = [], []
    for name, entry in results["models"].items():
        for key, value in entry["ratio"].items():
            labels.append(f"{name}\n{key.split('_')[0]}")
            values.append(value)
    ax.bar(labels, values, color=["tab:blue" if v >= 0.95 else "tab:red" for v in values])
    ax.axhline(0.95, color="gray", linestyle="--", label="goal 0.95")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_ylabel("zoo / keras.applications (images/s)")
    ax.set_title("Zoo throughput relative to keras.applications (same run)")
    ax.legend()
    save_figure(fig, args.out / "zoo_throughput.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
