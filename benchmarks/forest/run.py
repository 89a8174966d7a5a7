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
to 1e-5 before timing. Every method is timed once per round, over ``--rounds``
rounds, and keeps its fastest round, so a slow spell on the shared machine costs
every method a round instead of landing on one. Writes ``forest_throughput.json``
and ``.png``.

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

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    fastest_interleaved,
    machine,
    machine_load,
    save_figure,
    write_json,
)

FEATURES = 64
CLASSES = 5
PIXEL_MAP = (360, 480)


def synthetic(rows: int, seed: int):
    """Features whose class depends non-linearly on several columns, so trees grow deep."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    score = x[:, 0] + np.sin(2 * x[:, 1]) * x[:, 2] + 0.5 * x[:, 3] * x[:, 4] + 0.3 * rng.normal(size=rows)
    return x, np.digitize(score, np.quantile(score, np.linspace(0, 1, CLASSES + 1)[1:-1])).astype(np.int64)


def fastest_rows_per_second(methods: dict, inputs, calls: int, rounds: int) -> dict:
    """Rows/s of each method on ``inputs``: ``calls`` calls per round, methods in alternation, fastest round kept."""
    rows = int(np.prod(inputs.shape[:-1]))
    for fn in methods.values():  # trace and warm up
        fn(inputs).numpy()
        fn(inputs).numpy()
    tasks = {name: (lambda fn=fn: [fn(inputs).numpy() for _ in range(calls)]) for name, fn in methods.items()}
    best = fastest_interleaved(tasks, rounds)
    return {name: rows * calls / seconds[0] for name, seconds in best.items()}


def measure_case(trees: int, depth: int, x_train, y_train, x_test, rounds: int) -> dict:
    import tensorflow as tf

    from hybrid_keras.forest import ForestLayer, train_forest

    start = time.perf_counter()
    native_model = train_forest(x_train, y_train, backend="tfdf", num_trees=trees, max_depth=depth, min_examples=2,
                                verbose=0)
    training_seconds = time.perf_counter() - start
    strategies = ["gather"] + (["gemm"] if depth <= 4 else [])
    layers = {name: ForestLayer.from_model(native_model, strategy=name) for name in strategies}
    methods = {"tfdf": tf.function(lambda rows: native_model(rows, training=False))}
    for name, layer in layers.items():
        methods[name] = tf.function(lambda r, layer=layer: layer(r))
    # XLA fuses the traversal steps; TF Serving's CPU build leaves XLA JIT off by
    # default, so this is what model.predict(jit_compile=True) gets, not Serving.
    methods["gather_xla"] = tf.function(lambda r, layer=layers["gather"]: layer(r), jit_compile=True)
    reference = methods["tfdf"](x_test[:2000]).numpy()
    result = {"trees": trees, "depth_cap": depth, "max_depth": layers["gather"].max_depth,
              "nodes_per_tree": layers["gather"].nodes_per_tree, "tfdf_training_s": training_seconds, "batches": {}}
    for name, layer in layers.items():
        result[f"max_abs_diff_{name}"] = float(np.abs(layer(x_test[:2000]).numpy() - reference).max())
    for batch in (1, 10_000):
        speeds = fastest_rows_per_second(methods, tf.constant(x_test[:batch]), calls=20 if batch == 1 else 1,
                                         rounds=rounds)
        entry = {"tfdf_rows_per_s": speeds["tfdf"]}
        for name in methods:
            if name != "tfdf":
                entry[f"{name}_rows_per_s"] = speeds[name]
                entry[f"{name}_ratio"] = speeds[name] / speeds["tfdf"]
        result["batches"][str(batch)] = entry
        print(f"trees={trees:3d} depth<={depth:2d} (max {result['max_depth']:2d}) batch={batch:5d}: "
              + ", ".join(f"{k}={v:,.0f}" if "rows" in k else f"{k}={v:.2f}" for k, v in entry.items()), flush=True)
    return result


def per_pixel(trees: int, depth: int, x_train, y_train, rounds: int) -> dict:
    """One 360x480 feature map through the layer ([1, H, W, F] -> [1, H, W, classes]) and through TF-DF."""
    import tensorflow as tf

    from hybrid_keras.forest import ForestLayer, train_forest

    native_model = train_forest(x_train, y_train, backend="tfdf", num_trees=trees, max_depth=depth, verbose=0)
    layer = ForestLayer.from_model(native_model, mode="log_sum")
    feature_map = tf.constant(np.random.default_rng(7).normal(size=(1, *PIXEL_MAP, FEATURES)).astype(np.float32))
    methods = {"layer": tf.function(lambda m: layer(m)),
               "tfdf": tf.function(lambda m: native_model(tf.reshape(m, [-1, FEATURES]), training=False))}
    speeds = fastest_rows_per_second(methods, feature_map, calls=1, rounds=rounds)
    pixels = PIXEL_MAP[0] * PIXEL_MAP[1]
    return {"trees": trees, "depth_cap": depth, "map": list(PIXEL_MAP), "layer_pixels_per_s": speeds["layer"],
            "tfdf_pixels_per_s": speeds["tfdf"], "ratio": speeds["layer"] / speeds["tfdf"],
            "layer_ms_per_map": pixels / speeds["layer"] * 1e3}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, batch in zip(axes, ("1", "10000")):
        cases = results["cases"]
        labels = [f"{c['trees']}t/d{c['depth_cap']}" for c in cases]
        positions = np.arange(len(cases))
        ax.bar(positions - 0.27, [c["batches"][batch]["tfdf_rows_per_s"] for c in cases], 0.27, label="TF-DF native op")
        ax.bar(positions, [c["batches"][batch]["gather_rows_per_s"] for c in cases], 0.27, label="ForestLayer (gather)")
        ax.bar(positions + 0.27, [c["batches"][batch]["gather_xla_rows_per_s"] for c in cases], 0.27,
               label="ForestLayer (gather, XLA)")
        for i, case in enumerate(cases):
            ax.text(i, case["batches"][batch]["gather_rows_per_s"], f"{case['batches'][batch]['gather_ratio']:.2f}x",
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
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds (every method once per round)")
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="10 and 100 trees, depths 4 and 8 only")
    parser.add_argument("--trees", default=None, help="comma-separated tree counts (default 10,100,300)")
    parser.add_argument("--depths", default=None, help="comma-separated depth caps (default 4,8,16,24)")
    parser.add_argument("--name", default="forest_throughput", help="results file name (JSON and PNG)")
    parser.add_argument("--no-pixels", action="store_true", help="skip the per-pixel map (for reruns of some cases)")
    args = parser.parse_args(argv)

    x_train, y_train = synthetic(args.train_rows, seed=0)
    x_test, _ = synthetic(10_000, seed=1)
    trees_grid = (10, 100) if args.quick else (10, 100, 300)
    depth_grid = (4, 8) if args.quick else (4, 8, 16, 24)
    trees_grid = tuple(int(t) for t in args.trees.split(",")) if args.trees else trees_grid
    depth_grid = tuple(int(d) for d in args.depths.split(",")) if args.depths else depth_grid
    load_before = machine_load()
    cases = [measure_case(t, d, x_train, y_train, x_test, args.rounds) for t in trees_grid for d in depth_grid
             if not (d == 4 and t == 300)]
    pixels = None if args.no_pixels else per_pixel(100, 16, x_train, y_train, args.rounds)
    if pixels:
        print(f"per pixel (100 trees, depth<=16, {PIXEL_MAP[0]}x{PIXEL_MAP[1]} map): "
              f"{pixels['layer_pixels_per_s']:,.0f} px/s, ratio to TF-DF {pixels['ratio']:.2f}")
    results = {"machine": machine(), "load": {"before": load_before, "after": machine_load()}, "rounds": args.rounds,
               "features": FEATURES, "classes": CLASSES, "train_rows": args.train_rows, "cases": cases,
               "per_pixel": pixels}
    write_json(args.out / f"{args.name}.json", results)
    plot(results, args.out / f"{args.name}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
