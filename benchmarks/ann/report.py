"""Summaries, goals, the README table and the figure of the ANN benchmark, from its results.

Everything here reads the results dictionary ``run.py`` writes (``benchmarks/results/ann.json``),
so the README table can be regenerated without rerunning anything:

    python benchmarks/ann/report.py                       # print the Markdown block
    python benchmarks/ann/report.py --write-readme README.md   # replace the block between the markers
    python benchmarks/ann/report.py --plot benchmarks/results/ann.png   # redraw the figure
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

RECALLS = (0.90, 0.95, 0.99)
PEER_FAMILIES = ("hnswlib", "faiss HNSW", "ScaNN")  # the graph/quantisation peers FANNG has to beat
README_START, README_END = "<!-- ann:start -->", "<!-- ann:end -->"
# Ratios (FANNG / best hnswlib) of the in-distribution runs before this benchmark split
# queries by photo; the goal is not to fall below them.
PREVIOUS_IN_DISTRIBUTION = {"sift": {0.90: 1.23, 0.99: 1.17}, "embeddings": {0.90: 1.25, 0.99: 1.96}}


# ---------------------------------------------------------------------- curves
def frontier(points: list[dict]) -> list[dict]:
    """The Pareto front of (recall10, qps): the points no other point beats on both, by recall.

    A method with two knobs (ScaNN) or a sweep with noise gives points that are not
    monotone; only the best speed available at each recall counts."""
    best: list[dict] = []
    for point in sorted(points, key=lambda p: (-p["recall10"], -p["qps"])):
        if not best or point["qps"] > best[-1]["qps"]:
            best.append(point)
    return best[::-1]


def qps_at(points: list[dict], recall: float) -> float | None:
    """Queries/s at ``recall`` on the method's front, interpolated linearly in recall and
    log queries/s between the two points around it; None when the method never reaches it."""
    front = frontier(points)
    for low, high in zip(front, front[1:]):
        if low["recall10"] <= recall <= high["recall10"]:
            if high["recall10"] == low["recall10"]:
                return float(max(low["qps"], high["qps"]))
            t = (recall - low["recall10"]) / (high["recall10"] - low["recall10"])
            return float(math.exp((1 - t) * math.log(low["qps"]) + t * math.log(high["qps"])))
    reached = [p["qps"] for p in front if p["recall10"] >= recall]
    return float(max(reached)) if reached else None


def _ratio(a, b):
    return a / b if a and b else None


def summarise(dataset: dict) -> dict:
    """Per query set and thread count: every method's q/s at each recall, the best FANNG
    variant, the best peer (hnswlib, faiss HNSW, ScaNN) and the ratio between them."""
    methods = dataset["methods"]
    summary = {}
    for query_set in dataset["query_sets"]:
        for threads in dataset["threads"]:
            rows = {}
            for recall in RECALLS:
                at = {m["name"]: qps_at(m["curves"][query_set][str(threads)], recall) for m in methods}

                def best_of(names):
                    scored = [(at[n], n) for n in names if at[n]]
                    return max(scored) if scored else (None, None)

                fanng_qps, fanng = best_of([m["name"] for m in methods if m["family"] == "FANNG"])
                peer_qps, peer = best_of([m["name"] for m in methods if m["family"] in PEER_FAMILIES])
                hnsw_qps, hnsw = best_of([m["name"] for m in methods if m["family"] == "hnswlib"])
                rows[f"{recall:.2f}"] = {
                    "qps": at, "fanng": fanng, "fanng_qps": fanng_qps, "best_peer": peer, "best_peer_qps": peer_qps,
                    "fanng_over_best_peer": _ratio(fanng_qps, peer_qps),
                    "best_hnswlib": hnsw, "fanng_over_best_hnswlib": _ratio(fanng_qps, hnsw_qps),
                }
            summary.setdefault(query_set, {})[f"threads_{threads}"] = rows
    return summary


def _method(dataset: dict, predicate):
    return next((m for m in dataset["methods"] if predicate(m)), None)


def goals(results: dict) -> dict:
    """The issue's goals, each with the measured value and whether it was met."""
    out = {}
    sift = results["datasets"].get("sift")
    if sift and "held_out" in sift["summary"]:
        rows = sift["summary"]["held_out"]["threads_1"]
        ratios = {r: rows[r]["fanng_over_best_peer"] for r in rows}
        out["held_out_sift_fanng_over_best_peer_1_thread"] = {
            "target": ">= 1.3 at every recall", "measured": ratios,
            "peers": [m["name"] for m in sift["methods"] if m["family"] in PEER_FAMILIES],
            "met": all(v is not None and v >= 1.3 for v in ratios.values())}
    for name, dataset in results["datasets"].items():
        fanng = _method(dataset, lambda m: m["family"] == "FANNG" and m.get("default"))
        hnsw16 = _method(dataset, lambda m: m["name"] == "hnswlib M=16")
        if not (fanng and hnsw16):
            continue
        seconds = "build_cpu_s" if "build_cpu_s" in fanng and "build_cpu_s" in hnsw16 else "build_s"
        build = _ratio(fanng[seconds], hnsw16[seconds])
        out[f"{name}_build_fanng_over_hnswlib_m16"] = {"target": "<= 0.5", "measured": build, "from": seconds,
                                                       "met": build is not None and build <= 0.5}
        compact = _method(dataset, lambda m: m["family"] == "FANNG" and m.get("options", {}).get("storage") == "uint8")
        if compact:
            memory = _ratio(compact["index_bytes"], hnsw16["index_bytes"])
            out[f"{name}_uint8_index_bytes_over_hnswlib_m16"] = {"target": "<= 0.5", "measured": memory,
                                                                  "met": memory is not None and memory <= 0.5}
        previous = PREVIOUS_IN_DISTRIBUTION.get(name)
        if previous and "in_distribution" in dataset["summary"]:
            rows = dataset["summary"]["in_distribution"]["threads_1"]
            measured = {f"{r:.2f}": rows[f"{r:.2f}"]["fanng_over_best_hnswlib"] for r in previous}
            out[f"{name}_in_distribution_fanng_over_best_hnswlib_1_thread"] = {
                "target": {f"{r:.2f}": v for r, v in previous.items()}, "measured": measured,
                "met": all(measured[f"{r:.2f}"] is not None and measured[f"{r:.2f}"] >= v for r, v in previous.items())}
    return out


# ---------------------------------------------------------------------- Markdown
def _qps(value) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1000:.1f}k" if value >= 10_000 else (f"{value / 1000:.2f}k" if value >= 1000 else f"{value:.0f}")


def _x(value) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def render_markdown(results: dict) -> str:
    """The README's ANN block: q/s at each recall (best FANNG variant, best peer, ratio; 1 and
    2 threads), then per dataset every method's build time, index size and q/s."""
    lines = [
        f"k = {results['k']}, {results['queries']:,} queries per set; queries/s at a recall@10 are interpolated "
        f"on each method's curve; every (method, setting) timed once per round, fastest of "
        f"{results['rounds']} rounds; 1 thread: pinned to one core, q/s from process CPU time "
        f"(wall-clock figures are in the JSON); 2 threads: unpinned, wall-clock throughput.",
        "",
        "| data | queries | recall@10 | FANNG q/s (1 thread) | best peer q/s | ratio | ratio, 2 threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, dataset in results["datasets"].items():
        label = f"{name} {dataset['size'] // 1000}k x {dataset['dim']}"
        for query_set, by_threads in dataset["summary"].items():
            one, two = by_threads.get("threads_1", {}), by_threads.get("threads_2", {})
            for recall, row in one.items():
                peer = f"{_qps(row['best_peer_qps'])} ({row['best_peer']})" if row["best_peer"] else "n/a"
                fanng = f"{_qps(row['fanng_qps'])} ({row['fanng']})" if row["fanng"] else "n/a"
                ratio_two = two.get(recall, {}).get("fanng_over_best_peer")
                lines.append(f"| {label} | {query_set.replace('_', '-')} | {recall} | {fanng} | {peer} | "
                             f"{_x(row['fanng_over_best_peer'])} | {_x(ratio_two)} |")
    for name, dataset in results["datasets"].items():
        query_sets = dataset["query_sets"]
        lines += ["", f"{name}: every method, 1 thread (q/s at recall@10 "
                      + " / ".join(f"{r:.2f}" for r in RECALLS) + ")", "",
                  "| method | build, 1 thread (CPU time) | index size | " + " | ".join(q.replace("_", "-") for q in query_sets) + " |",
                  "|---|---|---|" + "---|" * len(query_sets)]
        for method in dataset["methods"]:
            speeds = [" / ".join(_qps(qps_at(method["curves"][q].get("1", []), r)) for r in RECALLS)
                      for q in query_sets]
            build = f"(same graph as {method['shares_graph_of']})" if method.get("shares_graph_of") \
                else f"{method.get('build_cpu_s', method['build_s']):.1f} s"
            lines.append(f"| {method['name']} | {build} | {method['index_bytes'] / 2**20:.1f} MiB | "
                         + " | ".join(speeds) + " |")
    if results.get("scann", {}).get("available") is False:
        lines += ["", f"ScaNN left out: {results['scann']['reason']}"]
    insertion = results.get("insertion")
    if insertion:
        lines += ["", f"Insertion into an index of {insertion['initial_size']:,} vectors ({insertion['dataset']}), "
                      f"{insertion['added']:,} added in batches of {insertion['batch']:,}, 1 thread:", "",
                  "| method | vectors/s | recall@10 after (ef 64) |", "|---|---|---|"]
        for method in insertion["methods"]:
            lines.append(f"| {method['name']} | {method['vectors_per_s']:,.0f} | {_x(method.get('recall10_after'))} |")
        if insertion.get("fanng_rebuilt_recall10") is not None:
            lines.append(f"| FANNG rebuilt over the same vectors | | {_x(insertion['fanng_rebuilt_recall10'])} |")
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the ANN markers replaced by ``block``."""
    if README_START not in text or README_END not in text:
        raise ValueError(f"the text has no {README_START} ... {README_END} block to replace")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{block}\n{README_END}{tail}"


# ---------------------------------------------------------------------- figure
def plot(results: dict, path: Path) -> Path:
    """Recall@10 against queries/s: one row per (dataset, query set), one column per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from benchmarks.common import save_figure

    panels = [(name, query_set) for name, d in results["datasets"].items() for query_set in d["query_sets"]]
    threads = sorted({t for d in results["datasets"].values() for t in d["threads"]})
    fig, axes = plt.subplots(len(panels), len(threads), figsize=(6.5 * len(threads), 4.5 * len(panels)), squeeze=False)
    for row, (name, query_set) in enumerate(panels):
        dataset = results["datasets"][name]
        for column, count in enumerate(threads):
            axis = axes[row, column]
            colours = plt.get_cmap("tab20").colors  # 20 distinct colours: no two methods share one
            for number, method in enumerate(dataset["methods"]):
                points = sorted(method["curves"][query_set].get(str(count), []), key=lambda p: p["recall10"])
                colour = colours[(2 * number) % 20 + (2 * number) // 20]
                if not points:
                    continue
                if method["family"] == "exact":  # one point at recall 1, off the logit axis: a level line
                    axis.axhline(points[0]["qps"], color=colour, linestyle=":", label=f"{method['name']}")
                    continue
                style = "--" if method["family"] == "FANNG" and method["options"].get("rule") == "budget" else "-"
                axis.plot([p["recall10"] for p in points], [p["qps"] for p in points], style, marker=".", color=colour,
                          linewidth=2.2 if method["family"] == "FANNG" else 1.2, label=method["name"])
            axis.set_yscale("log")
            axis.set_xscale("logit")  # spreads 0.9, 0.99 and 0.999 evenly
            axis.set_xlim(0.5, 0.999)
            ticks = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 0.999)
            axis.xaxis.set_major_locator(FixedLocator(ticks))
            axis.xaxis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
            axis.xaxis.set_minor_locator(NullLocator())
            for recall in RECALLS:
                axis.axvline(recall, color="grey", linewidth=0.5, alpha=0.5)
            axis.set_xlabel("recall@10")
            axis.set_ylabel(f"queries / s ({count} thread{'s' if count > 1 else ''})")
            axis.set_title(f"{name} {dataset['size']:,} x {dataset['dim']}: {query_set.replace('_', '-')} queries")
            axis.grid(alpha=0.3, which="both")
            axis.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Render the ANN results as the README's Markdown block.")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parents[1] / "results" / "ann.json")
    parser.add_argument("--write-readme", metavar="README", type=Path, help="replace the block in this file")
    parser.add_argument("--plot", metavar="PNG", type=Path, help="also redraw the figure into this file")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.plot:
        plot(results, args.plot)
    block = render_markdown(results)
    if args.write_readme:
        args.write_readme.write_text(replace_block(args.write_readme.read_text(), block))
        print(f"wrote the ANN block of {args.write_readme}")
    else:
        print(f"{README_START}\n{block}\n{README_END}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
