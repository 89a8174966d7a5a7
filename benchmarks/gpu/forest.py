"""The compiled forest on a GPU (JAX) against ydf's own multi-threaded CPU inference.

Trains a ydf random forest (100 trees, depth <= 16) on the synthetic 64-feature data
of ``benchmarks/forest``, compiles it to a ``ForestLayer`` (native mode, gather
strategy) and measures, in the same run and in alternation (each method once per
round, fastest round kept):

- the layer's rows/s at batch 100,000, jit-compiled (``stateless_call`` under
  ``jax.jit``, input already on the device, ``block_until_ready``);
- the latency of one 360x480 feature map through the layer, per pixel;
- ydf's ``predict`` rows/s on the same 100,000 rows with every CPU core.

Checks that the layer's predictions equal ydf's (to 1e-5) before timing. Goal: the
layer at least 100x ydf, and a 360x480 map in 3 ms or less. Needs ``KERAS_BACKEND=jax``
and no TensorFlow (keras, namex, optree, ydf, jax, numpy, h5py). ``benchmarks/gpu/run.py``
calls :func:`run`; alone, ``python benchmarks/gpu/forest.py [--quick]`` prints the dict.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

FULL = {"trees": 100, "depth": 16, "train_rows": 50_000, "batch": 100_000, "map": (360, 480), "rounds": 5, "calls": 20}
# --quick: a check that everything runs (on a CPU too), not a measurement.
QUICK = {"trees": 10, "depth": 8, "train_rows": 3_000, "batch": 5_000, "map": (36, 48), "rounds": 2, "calls": 3}
TOLERANCE = 1e-5


def run(quick: bool = False) -> dict:
    import jax
    import keras
    import ydf

    if keras.backend.backend() != "jax":
        raise RuntimeError(f"benchmarks/gpu/forest.py needs KERAS_BACKEND=jax, got {keras.backend.backend()!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.forest.run import FEATURES, synthetic
    from benchmarks.gpu.timing import fastest_seconds
    from hybrid_keras.forest import ForestLayer, train_forest

    setting = QUICK if quick else FULL
    x_train, y_train = synthetic(setting["train_rows"], seed=0)
    rows, _ = synthetic(setting["batch"], seed=1)
    height, width = setting["map"]
    feature_map = np.random.default_rng(7).normal(size=(1, height, width, FEATURES)).astype(np.float32)

    start = time.perf_counter()
    model = train_forest(x_train, y_train, num_trees=setting["trees"], max_depth=setting["depth"], min_examples=2)
    training_seconds = time.perf_counter() - start
    layer = ForestLayer.from_model(model)
    layer(rows[:2])  # builds it

    # The layer as a pure function of its weights, compiled once per input shape.
    weights = ([v.value for v in layer.trainable_variables], [v.value for v in layer.non_trainable_variables])
    forward = jax.jit(lambda trainable, fixed, x: layer.stateless_call(trainable, fixed, x)[0])
    device = jax.devices()[0]
    on_device = jax.device_put(rows, device)
    map_on_device = jax.device_put(feature_map, device)

    def layer_rows():
        return forward(*weights, on_device).block_until_ready()

    def layer_map():
        return forward(*weights, map_on_device).block_until_ready()

    threads = os.cpu_count()

    def ydf_rows():
        return model.predict({"features": rows}, num_threads=threads)

    # Equal predictions first (this also compiles both shapes).
    expected = np.asarray(ydf_rows()).reshape(len(rows), -1)
    expected = np.concatenate([1 - expected, expected], axis=1) if expected.shape[1] == 1 else expected
    difference = float(np.abs(np.asarray(layer_rows()) - expected).max())
    map_expected = np.asarray(model.predict({"features": feature_map.reshape(-1, FEATURES)}, num_threads=threads))
    map_difference = float(np.abs(np.asarray(layer_map()).reshape(map_expected.shape) - map_expected).max())
    if max(difference, map_difference) > TOLERANCE:
        raise AssertionError(f"the layer on {device.platform} differs from ydf by {difference:.2e} (rows) and "
                             f"{map_difference:.2e} (map), over {TOLERANCE}")

    best = {"layer_rows": float("inf"), "layer_map": float("inf"), "ydf_rows": float("inf")}
    calls = setting["calls"]
    for _ in range(setting["rounds"]):  # alternate, so a slow spell does not land on one method
        for name, call, repeats in (("layer_rows", layer_rows, calls), ("layer_map", layer_map, calls),
                                    ("ydf_rows", ydf_rows, max(1, calls // 5))):
            best[name] = min(best[name], fastest_seconds(call, repeats))

    batch, pixels = len(rows), height * width
    result = {
        "device": f"{device.platform}: {device.device_kind}", "cpu_count": threads,
        "versions": {"jax": jax.__version__, "keras": keras.__version__, "ydf": ydf.__version__},
        "quick": quick, "trees": setting["trees"], "depth_cap": setting["depth"], "max_depth": layer.max_depth,
        "nodes_per_tree": layer.nodes_per_tree, "features": FEATURES, "train_rows": setting["train_rows"],
        "ydf_training_s": training_seconds, "batch": batch, "map": [height, width],
        "max_abs_diff_rows": difference, "max_abs_diff_map": map_difference,
        "layer_rows_per_s": batch / best["layer_rows"], "ydf_rows_per_s": batch / best["ydf_rows"],
        "layer_map_ms": best["layer_map"] * 1e3, "layer_map_pixels_per_s": pixels / best["layer_map"],
    }
    result["ratio_to_ydf"] = result["layer_rows_per_s"] / result["ydf_rows_per_s"]
    print(f"[forest] {result['device']}: {result['layer_rows_per_s'] / 1e6:.1f}M rows/s at batch {batch:,} "
          f"({result['ratio_to_ydf']:.0f}x ydf on {threads} CPU threads, {result['ydf_rows_per_s'] / 1e3:.0f}k rows/s); "
          f"{height}x{width} map in {result['layer_map_ms']:.2f} ms; max |layer - ydf| {difference:.1e}", flush=True)
    return result


if __name__ == "__main__":
    import argparse
    import json

    os.environ.setdefault("KERAS_BACKEND", "jax")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", "--small", action="store_true", help="a small forest and batch: checks it runs")
    print(json.dumps(run(quick=parser.parse_args().quick), indent=2))
