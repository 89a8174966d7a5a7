"""SINT against OpenCV's CSRT, KCF and MIL on held-out sequences, with the OTB protocol.

The SINT matching network (zoo ``sint``, MobileNetV2 backbone) is trained from scratch (no
ImageNet weights can be had here) with the contrastive loss on box pairs from the train
sequences (``benchmarks.tracking.sequence_set``) for ``--train-seconds``, then every tracker
runs one pass over each test sequence (test photos never appear in training). Rows:

- ``sint``: the trained tracker (the step's defaults: best candidate, sizes damped);
- ``sint + box regression``: the same network with SINT's first-frame box regression;
- ``sint (untrained)``: the network at initialisation, what training buys;
- ``csrt``, ``kcf``, ``mil``: OpenCV's trackers (opencv-contrib), one OpenCV thread.

Writes ``benchmarks/results/tracking_sint.json``, ``tracking_sint.png`` (success and precision
plots) and ``tracking_sint_strip.png`` (the median sequence), and saves the trained tracker
where ``hybrid-keras track`` finds it (``hybrid_keras.tracking.sint.DEFAULT_TRACKER``).

    ./dev.sh bench benchmarks/tracking/sint_otb.py            # train (20 min) and evaluate
    ./dev.sh bench benchmarks/tracking/sint_otb.py --reuse    # evaluate the saved tracker
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import DEFAULT_DATA_DIR, RESULTS_DIR, Timer, machine, machine_load, write_json  # noqa: E402
from benchmarks.tracking.evaluate import evaluate, plot, strip, table  # noqa: E402
from benchmarks.tracking.peers import OPENCV_TRACKERS, opencv_tracker  # noqa: E402
from benchmarks.tracking.sequence_set import sequence_set  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--train-seconds", type=float, default=1200.0)
    parser.add_argument("--alpha", type=float, default=0.35, help="MobileNetV2 width")
    parser.add_argument("--embedding-dim", type=int, default=128)
    parser.add_argument("--roi-size", type=int, default=7, help="RoIAlign bins per side (the paper's 7)")
    parser.add_argument("--search-size", type=int, default=128, help="search window side in pixels")
    parser.add_argument("--positive-iou", type=float, default=0.7, help="training positives (the paper's 0.7)")
    parser.add_argument("--negative-iou", type=float, default=0.5, help="training negatives (the paper's 0.5)")
    parser.add_argument("--reuse", action="store_true", help="evaluate the saved tracker instead of training one")
    parser.add_argument("--peers", default=",".join(OPENCV_TRACKERS), help="comma-separated OpenCV trackers")
    parser.add_argument("--test-sequences", type=int, default=None, help="evaluate on the first N test sequences")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)

    import cv2
    import keras

    import zoo
    from hybrid_keras.tracking.sint import DEFAULT_TRACKER, SiameseTracker, load_tracker, save_tracker
    from hybrid_keras.tracking.training import train_matching_network

    cv2.setNumThreads(1)
    keras.utils.set_random_seed(0)
    network_arguments = {"backbone": "mobilenet_v2", "alpha": args.alpha, "embedding_dim": args.embedding_dim,
                         "roi_size": args.roi_size}
    step_arguments = {"search_size": args.search_size}
    untrained = SiameseTracker(zoo.load("sint", **network_arguments), **step_arguments)
    record = {"network": network_arguments, "step": untrained.step.settings()}
    if args.reuse:
        tracker = load_tracker(DEFAULT_TRACKER)
        record["training"] = "reused " + str(DEFAULT_TRACKER)
    else:
        with Timer() as loading:
            train = sequence_set("train", data_dir=args.data_dir)
        print(f"{len(train)} train sequences in {loading.wall:.0f} s", flush=True)
        network = zoo.load("sint", **network_arguments)
        network.set_weights(untrained.step.network.get_weights())  # the untrained row is this network's start
        tracker = SiameseTracker(network, **step_arguments)
        with Timer() as training:
            history = train_matching_network(tracker.step, train, seconds=args.train_seconds,
                                             pairs_per_epoch=320, positive_iou=args.positive_iou,
                                             negative_iou=args.negative_iou)
        losses = history.history["loss"]
        print(f"trained {training.wall:.0f} s, {len(losses)} epochs of 320 pairs, loss {losses[0]:.3f} -> "
              f"{losses[-1]:.3f}", flush=True)
        save_tracker(tracker, DEFAULT_TRACKER, network_arguments)
        record["training"] = {"seconds": training.wall, "cpu_seconds": training.cpu, "train_sequences": len(train),
                              "pairs": 320 * len(losses), "candidates_per_pair": 32, "loss": losses,
                              "positive_iou": args.positive_iou, "negative_iou": args.negative_iou}
        del train

    test = sequence_set("test", data_dir=args.data_dir)[:args.test_sequences]
    regression = SiameseTracker(tracker.step.network, **{**step_arguments, "box_regression": True})
    trackers = {"sint": lambda: tracker, "sint + box regression": lambda: regression,
                "sint (untrained)": lambda: untrained}
    trackers.update({name: (lambda name=name: opencv_tracker(name)) for name in args.peers.split(",") if name})
    with Timer() as running:
        results = evaluate(trackers, test, keep_boxes=True)
    print(f"\nevaluated {len(test)} test sequences in {running.wall:.0f} s\n")
    print(table(results))

    boxes = {name: results["trackers"][name].pop("boxes") for name in trackers}
    results.update(sint=record, opencv=cv2.__version__, machine=machine(), machine_load=machine_load(),
                   evaluate_seconds=running.wall)
    write_json(args.out / "tracking_sint.json", results)
    plot(results, args.out / "tracking_sint.png")
    median = sorted(test, key=lambda s: next(r["success_auc"] for r in results["trackers"]["sint"]["per_sequence"]
                                             if r["name"] == s.name))[len(test) // 2]
    shown = ("sint", "csrt", "kcf", "mil")
    strip(median, {name: boxes[name][median.name] for name in shown if name in boxes},
          args.out / "tracking_sint_strip.png")
    return results


if __name__ == "__main__":
    main()
