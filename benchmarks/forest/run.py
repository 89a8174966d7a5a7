"""Compiled forest layer against TF-DF's own inference op, in the same run.

For random forests of 10, 100 and 300 trees capped at depths 8, 16 and 24 (plus a
depth-4 case where the GEMM strategy applies), trained with TF-DF on synthetic
64-feature data, measures rows/s of

- TF-DF's native inference (its C++ op, CPU only), called through a ``tf.function``;
- ``ForestLayer`` (native mode, same predictions) in a ``tf.function``, gather strategy,
  and GEMM where the forest is shallow enough for it; the gather strategy also under
  XLA (``jit_compile=True``);

at batch 1 and 10,000, and the per-pixel throughput on one 360x480 feature map.
Ratios are layer / TF-DF (goal: >= 0.5 on CPU at batch 10,000). Checks the two agree
to 1e-5 before timing. Writes ``forest_throughput.json`` and ``.png``.

    ./dev.sh bench benchmarks/forest/run.py [--quick] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.common import RESULTS_DIR, machine, median_seconds, save_figure, write_json  # noqa: E402

FEATURES = 64
CLASSES = 5
PIXEL_MAP = (360, 480)


def synthetic(rows: int, seed: int):
    """Features whose class depends non-linearly on several columns, so trees grow deep."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    score = x[:, 0] + np.sin(2 * x[:, 1]) * x[:, 2] + 0.5 * x[:, 3] * x[:, 4] + 0.3 * rng.normal(size=rows)
    return x, np.digitize(score, np.quantile(score, np.linspace(0, 1, CLASSES + 1)[1:-1])).astype(np.int64)


def rows_per_second(fn, x, repeats: int) -> float:
    return len(x) / median_seconds(lambda: fn(x).numpy(), repeats=repeats, warmup=2)


def measure_case(trees: int, depth: int, x_train, y_train, x_test, repeats: int) -> dict:
    import tensorflow as tf

    from hybrid_keras.forest import ForestLayer, train_forest

    start = time.perf_counter()
    native_model = train_forest(x_train, y_train, backend="tfdf", num_trees=trees, max_depth=depth, min_examples=2,
                                verbose=0)
    training_seconds = time.perf_counter() - start
    native = tf.function(lambda rows: native_model(rows, training=False))
    strategies = ["gather"] + (["gemm"] if depth <= 4 else [])
    layers = {name: ForestLayer.from_model(native_model, strategy=name) for name in strategies}
    reference = native(x_test[:2000]).numpy()
    result = {"trees": trees, "depth_cap": depth, "max_depth": layers["gather"].max_depth,
              "nodes_per_tree": layers["gather"].nodes_per_tree, "tfdf_training_s": training_seconds, "batches": {}}
    for name, layer in layers.items():
        result[f"max_abs_diff_{name}"] = float(np.abs(layer(x_test[:2000]).numpy() - reference).max())
    for batch in (1, 10_000):
        rows = tf.constant(x_test[:batch])
        reps = repeats * (20 if batch == 1 else 1)
        entry = {"tfdf_rows_per_s": rows_per_second(native, rows, reps)}
        for name, layer in layers.items():
            compiled = tf.function(lambda r, layer=layer: layer(r))
            entry[f"{name}_rows_per_s"] = rows_per_second(compiled, rows, reps)
            entry[f"{name}_ratio"] = entry[f"{name}_rows_per_s"] / entry["tfdf_rows_per_s"]
        # XLA fuses the traversal steps; TF Serving's CPU build leaves XLA JIT off by
        # default, so this is what model.predict(jit_compile=True) gets, not Serving.
        xla = tf.function(lambda r, layer=layers["gather"]: layer(r), jit_compile=True)
        entry["gather_xla_rows_per_s"] = rows_per_second(xla, rows, reps)
        entry["gather_xla_ratio"] = entry["gather_xla_rows_per_s"] / entry["tfdf_rows_per_s"]
        result["batches"][str(batch)] = entry
        print(f"trees={trees:3d} depth<={depth:2d} (max {result['max_depth']:2d}) batch={batch:5d}: "
              + ", ".join(f"{k}={v:,.0f}" if "rows" in k else f"{k}={v:.2f}" for k, v in entry.items()), flush=True)
    return result


def per_pixel(trees: int, depth: int, x_train, y_train, repeats: int) -> dict:
    """One 360x480 feature map through the layer ([1, H, W, F] -> [1, H, W, classes]) and through TF-DF."""
    import tensorflow as tf

    from hybrid_keras.forest import ForestLayer, train_forest

    native_model = train_forest(x_train, y_train, backend="tfdf", num_trees=trees, max_depth=depth, verbose=0)
    layer = ForestLayer.from_model(native_model, mode="log_sum")
    feature_map = tf.constant(np.random.default_rng(7).normal(size=(1, *PIXEL_MAP, FEATURES)).astype(np.float32))
    compiled = tf.function(lambda m: layer(m))
    native = tf.function(lambda m: native_model(tf.reshape(m, [-1, FEATURES]), training=False))
    pixels = PIXEL_MAP[0] * PIXEL_MAP[1]
    layer_s = median_seconds(lambda: compiled(feature_map).numpy(), repeats=repeats, warmup=1)
    native_s = median_seconds(lambda: native(feature_map).numpy(), repeats=repeats, warmup=1)
    return {"trees": trees, "depth_cap": depth, "map": list(PIXEL_MAP), "layer_pixels_per_s": pixels / layer_s,
            "tfdf_pixels_per_s": pixels / native_s, "ratio": native_s / layer_s, "layer_ms_per_map": layer_s * 1e3}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, batch in zip(axes, ("1", "10000")):
        cases = results["cases"]
        labels = [f"{c['trees']}t/d{c['depth_cap']}" for c in cases]
        positions = np.arange(len(cases))
        ax.bar(positions - 0.2, [c["batches"][batch]["tfdf_rows_per_s"] for c in cases], 0.4, label="TF-DF native op")
        ax.bar(positions + 0.2, [c["batches"][batch]["gather_rows_per_s"] for c in cases], 0.4, label="ForestLayer (gather)")
        for i, case in enumerate(cases):
            ax.text(i + 0.2, case["batches"][batch]["gather_rows_per_s"], f"{case['batches'][batch]['gather_ratio']:.2f}x",
                    ha="center", va="bottom", fontsize=7)
        ax.set_xticks(positions, labels, rotation=60, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("rows / s (CPU)")
        ax.set_title(f"batch {batch}")
        ax.legend(fontsize=8)
    fig.suptitle("Compiled forest vs TF-DF inference (same forests, same run)")
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="10 and 100 trees, depths 4 and 8 only")
    parser.add_argument("--trees", default=None, help="comma-separated tree counts (default 10,100,300)")
    parser.add_argument("--depths", default=None, help="comma-separated depth caps (default 4,8,16,24)")
    parser.add_argument("--name", default="forest_throughput", help="results file name (JSON and PNG)")
    args = parser.parse_args(argv)

    x_train, y_train = synthetic(args.train_rows, seed=0)
    x_test, _ = synthetic(10_000, seed=1)
    trees_grid = (10, 100) if args.quick else (10, 100, 300)
    depth_grid = (4, 8) if args.quick else (4, 8, 16, 24)
    trees_grid = tuple(int(t) for t in args.trees.split(",")) if args.trees else trees_grid
    depth_grid = tuple(int(d) for d in args.depths.split(",")) if args.depths else depth_grid
    cases = [measure_case(t, d, x_train, y_train, x_test, args.repeats) for t in trees_grid for d in depth_grid
             if not (d == 4 and t == 300)]
    pixels = per_pixel(100, 16, x_train, y_train, max(2, args.repeats // 2))
    print(f"per pixel (100 trees, depth<=16, {PIXEL_MAP[0]}x{PIXEL_MAP[1]} map): "
          f"{pixels['layer_pixels_per_s']:,.0f} px/s, ratio to TF-DF {pixels['ratio']:.2f}")
    results = {"machine": machine(), "features": FEATURES, "classes": CLASSES, "train_rows": args.train_rows,
               "cases": cases, "per_pixel": pixels}
    write_json(args.out / f"{args.name}.json", results)
    plot(results, args.out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
