"""FANNG against hnswlib, faiss and ScaNN: queries/s against recall@10, build time, index size.

Datasets (``data.py``; ground truth by exact search): BSDS500 SIFT split by photo, with
in-distribution queries (from the base's photos) and held-out queries (from photos not in
the base); CamVid MobileNetV2 embeddings split by frame the same way; optionally one
million uniform random points (``--datasets ...,random``: its builds are long).

Methods (``methods.py``): FANNG in each vector storage type and with each entry-point
option its index offers (pool rule, an ``ef`` sweep; plus the paper's budget rule over the
default graph), hnswlib M=16/32/48, faiss IndexHNSWFlat(32), ScaNN (tree + anisotropic
quantisation + exact re-ranking) and faiss IndexFlatL2 (exact).

Timing is fair on a shared machine: every index is built single-threaded, then every
(method, setting, query set) is timed once per round, several rounds, fastest kept
(``benchmarks.common.fastest_interleaved``), first single-threaded with the whole
process pinned to one core, then with 2 threads unpinned. Single-threaded q/s are taken
from the process's CPU time (``qps``; wall-clock ``qps_wall`` beside it), so that other
work on the shared core does not land on whichever method it overlaps; 2-thread q/s are
throughput, from wall time. A warm-up pass measures recall
and drops each method's settings beyond the first that reaches recall@10 0.995 on every
query set. The insertion test times FANNG's ``add`` into a built index against hnswlib's
``add_items``, batch by batch in alternation.

Writes ``ann.json`` and ``ann.png`` (``report.py`` renders the README table from the JSON).

    ./dev.sh bench benchmarks/ann/run.py [--data ../shared/data] [--quick] [--rounds 3]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from benchmarks.ann import data, methods, report  # noqa: E402
from benchmarks.common import (DEFAULT_DATA_DIR, RESULTS_DIR, fastest_interleaved, machine, machine_load,  # noqa: E402
                               pinned_to_cpus, write_json)

K = methods.K
QUERIES = 1000
STOP_RECALL = 0.995  # settings past the first reaching this (every query set) add nothing to the summary
MIN_TASK_S = 0.2  # a timed task repeats its search until it lasts about this long


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------- which methods
def fanng_variants(max_degree: int, entry_point_counts=(1, 64, 256)) -> list[methods.Fanng]:
    """FANNG's default configuration first (float32 vectors, the default number of entry
    points), then each other storage type, each other entry-point count, and the paper's
    budget rule over the default graph (a search option: it shares the default's build)."""
    import inspect

    from hybrid_keras.fanng import FanngIndex
    from hybrid_keras.fanng.index import STORAGES

    default_entries = inspect.signature(FanngIndex.__init__).parameters["entry_points"].default
    default = methods.Fanng("FANNG", max_degree)
    default.default = True
    variants = [default]
    variants += [methods.Fanng(f"FANNG {storage}", max_degree, index_options={"storage": storage})
                 for storage in STORAGES if storage != "float32"]
    variants += [methods.Fanng(f"FANNG {count} entry point{'s' if count > 1 else ''}", max_degree,
                               index_options={"entry_points": count})
                 for count in entry_point_counts if count != default_entries]
    budget_rule = methods.Fanng("FANNG, paper's budget rule", max_degree, rule="budget")
    budget_rule.shares_graph_of = default
    return variants + [budget_rule]


def peers(hnsw_ms, faiss_hnsw: bool, scann: bool) -> list[methods.Method]:
    chosen: list[methods.Method] = [methods.Hnswlib(m) for m in hnsw_ms]
    if faiss_hnsw:
        chosen.append(methods.FaissHnsw(32))
    if scann:
        chosen.append(methods.Scann())
    chosen.append(methods.FaissFlat())
    return chosen


# ---------------------------------------------------------------------- one dataset
def benchmark(dataset: data.Dataset, chosen: list[methods.Method], rounds: int, threads: list[int], cpu: int | None):
    log(f"\n[{dataset.name}] {len(dataset.base):,} x {dataset.base.shape[1]} base; query sets: "
        + ", ".join(f"{k} ({len(v):,})" for k, v in dataset.queries.items()))
    truth = {name: data.exact_neighbours(dataset.base, q, K) for name, q in dataset.queries.items()}

    entries = {}
    with pinned_to_cpus({cpu} if cpu is not None else None):
        for method in chosen:
            owner = getattr(method, "shares_graph_of", None)
            if owner is not None:
                method.share_graph(owner)
                entries[method.name] = {**method.describe(), "shares_graph_of": owner.name,
                                        **{key: entries[owner.name][key] for key in
                                           ("build_s", "build_cpu_s", "index_bytes")}}
                continue
            started, started_cpu = time.perf_counter(), time.process_time()
            method.build(dataset.base)
            build, build_cpu = time.perf_counter() - started, time.process_time() - started_cpu
            entries[method.name] = {**method.describe(), "build_s": build, "build_cpu_s": build_cpu,
                                    "index_bytes": method.index_bytes()}
            if getattr(method, "default", False):
                entries[method.name]["default"] = True
            log(f"  built {method.name:28s} {build:7.1f} s ({build_cpu:7.1f} s CPU) "
                f"{entries[method.name]['index_bytes'] / 2**20:7.1f} MiB")

    # Warm-up pass: recall of every setting, how often to repeat each search, and which
    # costly settings to drop.
    tasks, recalls = {}, {}
    for method in chosen:
        settings = list(method.settings)
        for position, setting in enumerate(settings):
            reached = True
            for count in threads:
                for query_set, queries in dataset.queries.items():
                    started = time.perf_counter()
                    found = method.search(queries, setting, count)
                    seconds = time.perf_counter() - started
                    repeats = max(1, min(20, math.ceil(MIN_TASK_S / max(seconds, 1e-6))))
                    recalls[(method.name, position, query_set, count)] = (
                        data.recall_at(found, truth[query_set], K), data.recall_at(found, truth[query_set], 1))
                    tasks[(method.name, position, query_set, count)] = (method, setting, queries, repeats)
                    reached &= recalls[(method.name, position, query_set, count)][0] >= STOP_RECALL
            if reached:
                break
        log(f"  warm-up {method.name:28s} {position + 1} of {len(settings)} settings kept")

    timings = {}
    for count in threads:
        selected = {key: task for key, task in tasks.items() if key[3] == count}
        runs = {key: _repeat(method, setting, queries, count, repeats)
                for key, (method, setting, queries, repeats) in selected.items()}
        # One thread: wall time and process CPU time (the q/s reported; other work on the
        # shared core does not inflate it). Two threads: throughput, so wall time only.
        clocks = [time.perf_counter, time.process_time] if count == 1 else [time.perf_counter]
        with pinned_to_cpus({cpu} if count == 1 and cpu is not None else None):
            log(f"  timing {len(runs)} searches with {count} thread(s), {rounds} rounds")
            timings.update(fastest_interleaved(runs, rounds, clocks))

    for method in chosen:
        curves = entries[method.name].setdefault("curves", {})
        for query_set, queries in dataset.queries.items():
            for count in threads:
                points = []
                for position, setting in enumerate(method.settings):
                    key = (method.name, position, query_set, count)
                    if key not in timings:
                        continue
                    searched = tasks[key][3] * len(queries)
                    recall10, recall1 = recalls[key]
                    wall, *cpu = timings[key]
                    point = {**setting, "recall10": recall10, "recall1": recall1,
                             "qps": searched / (cpu[0] if cpu else wall), "qps_wall": searched / wall}
                    if cpu:
                        point["qps_cpu"] = searched / cpu[0]
                    points.append(point)
                curves.setdefault(query_set, {})[str(count)] = points
    result = {"size": len(dataset.base), "dim": int(dataset.base.shape[1]), "description": dataset.description,
              "details": dataset.details, "query_sets": list(dataset.queries), "threads": threads,
              "methods": list(entries.values())}
    result["summary"] = report.summarise(result)
    for query_set, by_threads in result["summary"].items():
        for key, rows in by_threads.items():
            log(f"  {query_set} {key}: " + "  ".join(
                f"@{r} FANNG {report._qps(v['fanng_qps'])} / {v['best_peer']} {report._qps(v['best_peer_qps'])}"
                f" = {report._x(v['fanng_over_best_peer'])}" for r, v in rows.items()))
    return result


def _repeat(method, setting, queries, threads, repeats):
    def run():
        for _ in range(repeats):
            method.search(queries, setting, threads)
    return run


# ---------------------------------------------------------------------- insertion
def insertion(base: np.ndarray, queries: np.ndarray, initial: int, added: int, batch: int, cpu: int | None,
              max_degree: int) -> dict:
    """Vectors/s of inserting ``added`` vectors, ``batch`` per call, into a FANNG index and an
    hnswlib M=16 index already built over ``initial`` vectors (single thread, in alternation),
    and the recall@10 (ef 64) of each afterwards, with a FANNG graph rebuilt over all of them."""
    import hnswlib

    from hybrid_keras.fanng import FanngIndex

    if initial + added > len(base):
        raise ValueError(f"insertion needs {initial + added} base vectors, the dataset has {len(base)}")
    log(f"\n[insertion] {added:,} vectors into indexes of {initial:,}, {batch:,} per call")
    everything = base[: initial + added]
    truth = data.exact_neighbours(everything, queries, K)
    with pinned_to_cpus({cpu} if cpu is not None else None):
        fanng = FanngIndex(base.shape[1], max_degree=max_degree, seed=0, verbose=False)
        fanng.add(base[:initial])
        fanng.build()
        hnsw = hnswlib.Index(space="l2", dim=base.shape[1])
        hnsw.init_index(max_elements=initial + added, M=16, ef_construction=methods.EF_CONSTRUCTION, random_seed=0)
        hnsw.add_items(base[:initial], num_threads=1)
        seconds = {"FANNG": 0.0, "hnswlib M=16": 0.0}  # process CPU time (single-threaded, shared core)
        wall = dict(seconds)
        for start in range(initial, initial + added, batch):
            chunk = base[start: min(start + batch, initial + added)]
            for name, add in (("FANNG", lambda c: fanng.add(c)),
                              ("hnswlib M=16", lambda c: hnsw.add_items(c, num_threads=1))):
                began, began_cpu = time.perf_counter(), time.process_time()
                add(chunk)
                seconds[name] += time.process_time() - began_cpu
                wall[name] += time.perf_counter() - began
        hnsw.set_ef(64)
        after = {"FANNG": data.recall_at(fanng.search(queries, k=K, ef=64)[0], truth, K),
                 "hnswlib M=16": data.recall_at(hnsw.knn_query(queries, k=K, num_threads=1)[0].astype(np.int64),
                                                truth, K)}
        rebuilt = FanngIndex(base.shape[1], max_degree=max_degree, seed=0, verbose=False)
        rebuilt.add(everything)
        rebuilt.build()
        rebuilt_recall = data.recall_at(rebuilt.search(queries, k=K, ef=64)[0], truth, K)
    rows = [{"name": name, "cpu_seconds": s, "wall_seconds": wall[name], "vectors_per_s": added / s,
             "vectors_per_s_wall": added / wall[name], "recall10_after": after[name]} for name, s in seconds.items()]
    for row in rows:
        log(f"  {row['name']:14s} {row['vectors_per_s']:9,.0f} vectors/s, recall@10 after {row['recall10_after']:.3f}")
    log(f"  FANNG rebuilt over the same vectors: recall@10 {rebuilt_recall:.3f}")
    return {"initial_size": initial, "added": added, "batch": batch, "threads": 1, "methods": rows,
            "fanng_rebuilt_recall10": rebuilt_recall,
            "fanng_over_hnswlib": rows[0]["vectors_per_s"] / rows[1]["vectors_per_s"]}


# ---------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="shared datasets (default ../shared/data)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--name", default="ann", help="results file stem: NAME.json, NAME.png")
    parser.add_argument("--datasets", default="sift,embeddings", help="any of sift, embeddings, random")
    parser.add_argument("--random-size", type=int, default=1_000_000)
    parser.add_argument("--hnsw-m", default="16,32,48")
    parser.add_argument("--max-degree", type=int, default=32)
    parser.add_argument("--entry-points", default="1,64,256", help="FANNG entry-point counts to try beside the default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="thread counts to time (1 is pinned to one core)")
    parser.add_argument("--cpu", type=int, default=None, help="core for the single-threaded parts (default: the last)")
    parser.add_argument("--held-out", type=int, default=20, help="photos (SIFT) or frames (embeddings) held out")
    parser.add_argument("--no-scann", action="store_true")
    parser.add_argument("--no-faiss-hnsw", action="store_true")
    parser.add_argument("--no-insertion", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small subsets and one round, to check the script runs")
    args = parser.parse_args(argv)

    # One intra-op thread: FANNG's ops then run in the calling thread, like the peers'
    # single-threaded calls (2-thread throughput uses two calling threads).
    import faiss
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    faiss.omp_set_num_threads(1)

    cpu = args.cpu if args.cpu is not None else max(os.sched_getaffinity(0))
    rounds = 1 if args.quick else args.rounds
    threads = [int(t) for t in args.threads.split(",")]
    limit = 20_000 if args.quick else None
    scann = methods.scann_status() if not args.no_scann else {"available": False, "reason": "--no-scann"}
    if not scann["available"]:
        log(f"ScaNN left out: {scann['reason']}")
    hnsw_ms = [int(m) for m in args.hnsw_m.split(",")]
    results = {"machine": machine(), "load_before": machine_load(), "k": K, "queries": QUERIES, "rounds": rounds,
               "pinned_cpu": cpu, "quick": args.quick, "scann": scann, "datasets": {}}
    wanted = args.datasets.split(",")
    started = time.perf_counter()
    for name in wanted:
        if name == "sift":
            dataset = data.sift(args.data, args.held_out, QUERIES, limit)
        elif name == "embeddings":
            dataset = data.embeddings(args.data, args.held_out, QUERIES, limit=40 if args.quick else None)
            dataset.base = dataset.base[:limit] if limit else dataset.base
        elif name == "random":
            dataset = data.uniform(limit or args.random_size, QUERIES)
        else:
            raise SystemExit(f"--datasets: unknown dataset {name!r}; choose from sift, embeddings, random")
        # On uniform random data the HNSW builds take over 5x FANNG's (faiss HNSW32 at 1M about 35
        # minutes single-threaded) and no graph is useful anyway: one hnswlib M and exact search.
        is_random = name == "random"
        chosen = fanng_variants(args.max_degree, [int(c) for c in args.entry_points.split(",") if c]) + peers(hnsw_ms[:1] if is_random else hnsw_ms,
                                                          faiss_hnsw=not (args.no_faiss_hnsw or is_random),
                                                          scann=scann["available"] and not is_random)
        results["datasets"][name] = benchmark(dataset, chosen, rounds, threads, cpu)
        if name == "sift" and not args.no_insertion:
            initial, added = (10_000, 1_000) if args.quick else (100_000, 10_000)
            results["insertion"] = {"dataset": "sift", **insertion(
                dataset.base, dataset.queries["held_out"], initial, added, batch=added // 10, cpu=cpu,
                max_degree=args.max_degree)}
        del chosen
        finish(results, started, args.out / args.name)  # after every dataset: a long run keeps what it measured
    for goal, value in results["goals"].items():
        log(f"goal {goal}: {value}")
    return 0


def finish(results: dict, started: float, stem: Path) -> None:
    results["goals"] = report.goals(results)
    results["load_after"] = machine_load()
    results["seconds"] = time.perf_counter() - started
    write_json(stem.with_suffix(".json"), results)
    report.plot(results, stem.with_suffix(".png"))


if __name__ == "__main__":
    raise SystemExit(main())
