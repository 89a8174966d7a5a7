"""OTB one-pass evaluation (OPE) of single-object trackers on the benchmark's sequences.

A tracker is started on frame 0 with the ground-truth box and then runs to the end with no
re-initialisation; frame 0 counts in its scores, as in OTB. Scores are aggregated the OTB way:
the success and precision curves of the sequences are averaged, and the success AUC and the
precision at 20 px are read off the averaged curves. Speed is frames over the seconds spent in
``init`` and ``update`` (rendering and scoring excluded), after a short untimed warm-up so that
one-time costs (a graph compiled on first call, say) do not count as per-frame time.

Run the OpenCV peers on the test sequences and print the table::

    python -m benchmarks.tracking.evaluate                      # CSRT, KCF, MIL on the test split
    python -m benchmarks.tracking.evaluate --out /tmp/tracking  # also the JSON, plots and strips
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from hybrid_keras.tracking.metrics import CENTRE_THRESHOLDS, OVERLAP_THRESHOLDS, PRECISION_AT, tracking_scores

WARMUP_FRAMES = 5


def run_tracker(tracker, sequence) -> tuple[np.ndarray, float]:
    """``(boxes [T, 4], seconds per frame)`` of one pass; ``boxes[0]`` is the ground truth it starts from."""
    frames, truth = sequence.frames, np.asarray(sequence.boxes, np.float64)
    boxes = np.empty((len(frames), 4))
    boxes[0] = truth[0]
    start = time.perf_counter()
    tracker.init(frames[0], truth[0].copy())
    for t in range(1, len(frames)):
        boxes[t] = np.asarray(tracker.update(frames[t])[0], np.float64).reshape(4)
    seconds = time.perf_counter() - start
    bad = np.flatnonzero(~np.all(np.isfinite(boxes), axis=1) | (boxes[:, 2] <= 0) | (boxes[:, 3] <= 0))
    if len(bad):
        raise ValueError(f"{type(tracker).__name__} returned box {boxes[bad[0]].tolist()} at frame {int(bad[0])} of "
                         f"{sequence.name!r}; update() must return a finite [x, y, w, h] with w, h > 0 (keep the "
                         "previous box when lost)")
    return boxes, seconds / len(frames)


def _kinds(name: str) -> tuple[str, str]:
    """(motion, condition) of a sequence, from its name (``"other"`` for names not made by sequence_set)."""
    from benchmarks.tracking.sequence_set import describe

    try:
        parts = describe(name)
    except ValueError:
        return "other", "other"
    return parts["motion"], "blur" if parts["blur"] else "occlusion" if parts["occlusion"] else "none"


def _summary(scores: list[dict]) -> dict:
    """OTB aggregation: curves averaged over sequences, the figures read off the averaged curves."""
    success = np.mean([s["success_curve"] for s in scores], axis=0)
    precision = np.mean([s["precision_curve"] for s in scores], axis=0)
    return {"sequences": len(scores), "success_auc": float(success.mean()),
            "precision_at_20": float(precision[PRECISION_AT]),
            "mean_iou": float(np.mean([s["mean_iou"] for s in scores])),
            "success_curve": success.tolist(), "precision_curve": precision.tolist()}


def evaluate(trackers: Mapping[str, Callable[[], object]], sequences, *, keep_boxes: bool = False,
             progress: bool = True) -> dict:
    """Scores of each tracker (``name -> factory`` of a fresh tracker; one per sequence) on ``sequences``.

    Per tracker: ``success_auc``, ``precision_at_20``, ``mean_iou``, ``fps``, ``seconds_per_frame``,
    the averaged ``success_curve`` and ``precision_curve``, ``by_motion`` and ``by_condition``
    (the same figures per group of sequences), and ``per_sequence`` rows; with ``keep_boxes``
    also ``boxes`` (sequence name -> ``[T, 4]``), e.g. for :func:`strip`.
    """
    sequences = list(sequences)
    if not sequences:
        raise ValueError("sequences: nothing to evaluate on. Received: an empty list")
    results = {"sequences": [s.name for s in sequences], "frames": int(sum(len(s.frames) for s in sequences)),
               "overlap_thresholds": OVERLAP_THRESHOLDS.tolist(), "centre_thresholds": CENTRE_THRESHOLDS.tolist(),
               "trackers": {}}
    for name, factory in trackers.items():
        run_tracker(factory(), _head(sequences[0]))  # warm-up, untimed
        rows, scores, boxes_of, seconds, started = [], [], {}, 0.0, time.perf_counter()
        for sequence in sequences:
            boxes, per_frame = run_tracker(factory(), sequence)
            score = tracking_scores(boxes, sequence.boxes)
            motion, condition = _kinds(sequence.name)
            rows.append({"name": sequence.name, "motion": motion, "condition": condition,
                         "success_auc": score["success_auc"], "precision_at_20": score["precision_at_20"],
                         "mean_iou": score["mean_iou"], "seconds_per_frame": per_frame})
            scores.append(score)
            seconds += per_frame * len(sequence.frames)
            if keep_boxes:
                boxes_of[sequence.name] = boxes
        summary = _summary(scores)
        summary["seconds_per_frame"] = seconds / results["frames"]
        summary["fps"] = results["frames"] / seconds
        for key in ("motion", "condition"):
            summary[f"by_{key}"] = {}
            for group in sorted({row[key] for row in rows}):
                figures = _summary([s for s, row in zip(scores, rows) if row[key] == group])
                summary[f"by_{key}"][group] = {k: v for k, v in figures.items() if not k.endswith("_curve")}
        summary["per_sequence"] = rows
        if keep_boxes:
            summary["boxes"] = boxes_of
        results["trackers"][name] = summary
        if progress:
            print(f"{name}: success AUC {summary['success_auc']:.3f}, P@20 {summary['precision_at_20']:.3f}, "
                  f"{summary['fps']:.0f} fps ({time.perf_counter() - started:.0f} s for {len(sequences)} sequences)",
                  flush=True)
    return results


def _head(sequence):
    from hybrid_keras.tracking.sequences import Sequence

    return Sequence(sequence.frames[:WARMUP_FRAMES], sequence.boxes[:WARMUP_FRAMES], sequence.name)


def _ranked(results: dict) -> list[str]:
    return sorted(results["trackers"], key=lambda n: -results["trackers"][n]["success_auc"])


def table(results: dict) -> str:
    """The results as a Markdown table, best success AUC first, with the AUC per motion kind."""
    motions = sorted({m for t in results["trackers"].values() for m in t["by_motion"]},
                     key=lambda m: ("pan", "zoom", "roll", "all", m).index(m))
    lines = ["| tracker | success AUC | precision @20 px | mean IoU | fps | "
             + " | ".join(f"AUC {m}" for m in motions) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(motions)]
    for name in _ranked(results):
        t = results["trackers"][name]
        per_motion = " | ".join(f"{t['by_motion'][m]['success_auc']:.3f}" if m in t["by_motion"] else ""
                                for m in motions)
        lines.append(f"| {name} | {t['success_auc']:.3f} | {t['precision_at_20']:.3f} | {t['mean_iou']:.3f} | "
                     f"{t['fps']:.0f} | {per_motion} |")
    return "\n".join(lines)


def plot(results: dict, path_png) -> Path:
    """OTB's two figures side by side: the success plot (legend: AUC) and the precision plot (legend: P@20)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.common import save_figure

    fig, (success_ax, precision_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name in _ranked(results):
        t = results["trackers"][name]
        success_ax.plot(results["overlap_thresholds"], t["success_curve"], label=f"{name} [{t['success_auc']:.3f}]")
        precision_ax.plot(results["centre_thresholds"], t["precision_curve"],
                          label=f"{name} [{t['precision_at_20']:.3f}]")
    n = len(results["sequences"])
    for ax, title, xlabel, ylabel in (
            (success_ax, f"Success plots of OPE ({n} sequences)", "overlap threshold", "success rate"),
            (precision_ax, f"Precision plots of OPE ({n} sequences)", "location error threshold (px)", "precision")):
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left" if ax is success_ax else "lower right")
    precision_ax.axvline(PRECISION_AT, color="grey", lw=0.8, ls=":")
    path = save_figure(fig, Path(path_png))
    plt.close(fig)
    return path


def strip(sequence, boxes_by_tracker: Mapping[str, np.ndarray], path_png, frames: int = 6) -> Path:
    """A few evenly spaced frames of one sequence with the ground truth (dashed) and each tracker's box."""
    from hybrid_keras.tracking.frames import draw_strip

    path = draw_strip(sequence.frames, boxes_by_tracker, path_png, count=frames, truth=sequence.boxes,
                      title=sequence.name)
    print(f"wrote {path}")
    return path


def main(argv=None):
    from benchmarks.common import DEFAULT_DATA_DIR, Timer, machine_load, write_json
    from benchmarks.tracking.peers import OPENCV_TRACKERS, opencv_tracker
    from benchmarks.tracking.sequence_set import sequence_set

    parser = argparse.ArgumentParser(description="OTB one-pass evaluation of OpenCV's trackers on the test sequences.")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--split", default="test")
    parser.add_argument("--trackers", default=",".join(OPENCV_TRACKERS), help="comma-separated: csrt,kcf,mil")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (1: comparable fps on a shared machine)")
    parser.add_argument("--out", type=Path, help="folder for tracking_peers.json, the plots and two strips")
    args = parser.parse_args(argv)

    import cv2

    cv2.setNumThreads(args.threads)
    with Timer() as building:
        sequences = sequence_set(args.split, data_dir=args.data_dir)
    print(f"{len(sequences)} {args.split} sequences in {building.wall:.1f} s", flush=True)
    names = [n.strip() for n in args.trackers.split(",") if n.strip()]
    with Timer() as running:
        results = evaluate({n: (lambda n=n: opencv_tracker(n)) for n in names}, sequences, keep_boxes=bool(args.out))
    print(f"evaluated in {running.wall:.1f} s wall, {running.cpu:.1f} s CPU\n")
    print(table(results))
    if args.out:
        boxes = {n: results["trackers"][n].pop("boxes") for n in names}
        results.update(split=args.split, opencv=cv2.__version__, opencv_threads=args.threads,
                       build_seconds=building.wall, evaluate_seconds=running.wall, machine_load=machine_load())
        write_json(args.out / "tracking_peers.json", results)
        plot(results, args.out / "tracking_peers.png")
        mean_auc = {s.name: np.mean([next(r["success_auc"] for r in results["trackers"][n]["per_sequence"]
                                          if r["name"] == s.name) for n in names]) for s in sequences}
        by_auc = sorted(sequences, key=lambda s: mean_auc[s.name])
        for label, sequence in (("hard", by_auc[0]), ("median", by_auc[len(by_auc) // 2])):
            strip(sequence, {n: boxes[n][sequence.name] for n in names}, args.out / f"tracking_strip_{label}.png")
    return results


if __name__ == "__main__":
    main()
