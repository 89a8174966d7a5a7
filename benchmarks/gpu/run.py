"""The GPU benchmark: one script for a machine with a GPU, JAX and no TensorFlow.

    KERAS_BACKEND=jax python benchmarks/gpu/run.py [--out DIR] [--quick]

Runs, in one process and on one machine: the zoo against keras.applications
(``benchmarks/gpu/zoo.py``: equal logits, inference and train-step images/s), and the
compiled forest against ydf's multi-threaded CPU inference (``benchmarks/gpu/forest.py``:
rows/s at batch 100k, latency of a 360x480 per-pixel map). Writes ``gpu.json`` and
``gpu.png`` to ``--out`` (default ``benchmarks/results``). Needs keras, namex, optree and
ydf beside the machine's JAX; see the README's Benchmarks section for carrying them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def machine() -> dict:
    import jax
    import keras

    device = jax.devices()[0]
    return {"device": getattr(device, "device_kind", str(device)), "platform": device.platform,
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "jax": jax.__version__,
            "keras": keras.__version__, "keras_backend": keras.backend.backend()}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels, values = [], []
    for name, entry in results.get("zoo", {}).items():
        for kind, ratio in entry["ratio"].items():
            labels.append(f"{name}\n{kind.split('_')[0]}")
            values.append(ratio)
    left.bar(labels, values, color="tab:blue")
    left.axhline(1.0, color="black", linewidth=0.8)
    left.set_ylabel("zoo / keras.applications (images/s)")
    left.set_title("Zoo vs keras.applications, same GPU")
    forest = results.get("forest")
    if forest is None:
        right.set_axis_off()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return
    speedup = forest["ratio_to_ydf"]
    right.bar(["forest on GPU\n/ ydf on all CPU cores"], [speedup], color="tab:green")
    right.axhline(100, color="gray", linestyle="--", label="goal 100x")
    right.set_yscale("log")
    right.set_ylabel("rows/s ratio")
    height, width = forest["map"]
    right.set_title(f"{forest['trees']} trees, depth {forest['depth_cap']}, batch {forest['batch']:,}; "
                    f"{height}x{width} map {forest['layer_map_ms']:.2f} ms")
    right.legend()
    fig.suptitle(f"{results['machine']['device']}, Keras {results['machine']['keras_backend']} backend")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="zoo and forest on a GPU (JAX), against their peers in the same run")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a check that it runs, not a measurement")
    parser.add_argument("--parts", default="forest,zoo", help="which parts to run (default: forest,zoo)")
    args = parser.parse_args(argv)
    os.environ.setdefault("KERAS_BACKEND", "jax")

    from benchmarks.gpu import forest, zoo

    results = {"machine": machine(), "quick": args.quick}
    print(json.dumps(results["machine"]), flush=True)
    parts = set(args.parts.split(","))
    if "forest" in parts:
        results["forest"] = forest.run(quick=args.quick)
    if "zoo" in parts:
        results["zoo"] = zoo.run(quick=args.quick)
    results["tensorflow_imported"] = "tensorflow" in sys.modules
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(f"wrote {args.out / 'gpu.json'}")
    plot(results, args.out / "gpu.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
