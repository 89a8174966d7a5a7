"""Tests of the ANN benchmark's harness: timing rounds, the photo split, recall, curve
interpolation, summaries and the README block. Small, seeded, no datasets or indexes.

    .venv/bin/python -m pytest tests/test_ann_harness.py -q
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import common  # noqa: E402
from benchmarks.ann import data, report  # noqa: E402


# ---------------------------------------------------------------------- timing
def test_fastest_interleaved_times_every_task_once_per_round_and_keeps_the_fastest(monkeypatch):
    # A scripted clock: each task call advances it by the next duration on that task's list.
    durations = {"a": [3.0, 1.0, 2.0], "b": [5.0, 6.0, 4.0]}
    clock, calls = [0.0], []

    def make(name):
        def task():
            calls.append(name)
            clock[0] += durations[name][sum(1 for c in calls if c == name) - 1]
        return task

    monkeypatch.setattr(common.time, "perf_counter", lambda: clock[0])
    best = common.fastest_interleaved({"a": make("a"), "b": make("b")}, rounds=3)
    assert best == {"a": [1.0], "b": [4.0]}
    assert calls == ["a", "b", "b", "a", "a", "b"]  # rounds alternate direction


def test_fastest_interleaved_keeps_the_fastest_on_each_clock():
    ticks = {"wall": [0.0], "cpu": [0.0]}
    steps = iter([(5.0, 1.0), (2.0, 1.5)])  # (wall, cpu) per call: the fastest differ by clock

    def task():
        wall, cpu = next(steps)
        ticks["wall"][0] += wall
        ticks["cpu"][0] += cpu

    best = common.fastest_interleaved({"a": task}, rounds=2, clocks=[lambda: ticks["wall"][0], lambda: ticks["cpu"][0]])
    assert best == {"a": [2.0, 1.0]}


def test_fastest_interleaved_rejects_zero_rounds():
    with pytest.raises(ValueError, match="rounds"):
        common.fastest_interleaved({"a": lambda: None}, rounds=0)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux-only")
def test_pinned_to_cpus_pins_then_restores():
    before = os.sched_getaffinity(0)
    cpu = max(before)
    with common.pinned_to_cpus({cpu}) as cpus:
        assert cpus == {cpu} and os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before


# ---------------------------------------------------------------------- data
def test_split_by_group_keeps_held_out_groups_out_of_the_base():
    groups = np.repeat(np.arange(30), 50)  # 30 photos x 50 descriptors
    vectors = np.column_stack([groups, np.arange(len(groups))]).astype(np.float32)  # (photo, row) as the vector
    base, in_q, out_q, held_out = data._split_by_group(vectors, groups, held_out_groups=5, queries=100, seed=1)
    assert len(held_out) == 5 and len(in_q) == len(out_q) == 100
    base_photos, base_rows = set(base[:, 0]), set(base[:, 1])
    assert base_photos.isdisjoint(held_out)  # held-out photos give queries only
    assert set(out_q[:, 0]) <= set(held_out)
    assert set(in_q[:, 0]) <= base_photos  # in-distribution queries come from base photos ...
    assert base_rows.isdisjoint(in_q[:, 1])  # ... but are not themselves in the base
    assert len(base) == (30 - 5) * 50 - 100


def test_split_by_group_needs_enough_vectors():
    groups = np.repeat(np.arange(4), 10)
    with pytest.raises(ValueError, match="queries"):
        data._split_by_group(np.zeros((40, 2), np.float32), groups, held_out_groups=1, queries=50, seed=0)
    with pytest.raises(ValueError, match="held_out_groups"):
        data._split_by_group(np.zeros((40, 2), np.float32), groups, held_out_groups=4, queries=5, seed=0)


def test_recall_at_matches_set_intersection():
    rng = np.random.default_rng(3)
    truth = np.stack([rng.permutation(50)[:10] for _ in range(20)])
    found = np.stack([rng.permutation(50)[:10] for _ in range(20)])
    found[:5] = truth[:5]  # some rows exact
    expected = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)])
    assert data.recall_at(found, truth, 10) == pytest.approx(expected)
    assert data.recall_at(found, truth, 1) == pytest.approx(np.mean(found[:, 0] == truth[:, 0]))


def test_exact_neighbours_equal_brute_force():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    base, queries = rng.random((300, 8), dtype=np.float32), rng.random((7, 8), dtype=np.float32)
    distances = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    np.testing.assert_array_equal(data.exact_neighbours(base, queries, 5), np.argsort(distances, axis=1)[:, :5])


# ---------------------------------------------------------------------- curves
def test_frontier_drops_dominated_points():
    points = [{"recall10": 0.8, "qps": 100}, {"recall10": 0.85, "qps": 120},  # the first is dominated
              {"recall10": 0.9, "qps": 50}, {"recall10": 0.95, "qps": 60}, {"recall10": 0.99, "qps": 10}]
    assert [(p["recall10"], p["qps"]) for p in report.frontier(points)] == [(0.85, 120), (0.95, 60), (0.99, 10)]


def test_qps_at_interpolates_in_log_qps():
    points = [{"recall10": 0.8, "qps": 1000.0}, {"recall10": 1.0, "qps": 10.0}]
    assert report.qps_at(points, 0.9) == pytest.approx(100.0)  # halfway in recall, geometric mean in q/s
    assert report.qps_at(points, 0.8) == pytest.approx(1000.0)
    assert report.qps_at(points, 0.5) == pytest.approx(1000.0)  # below the curve: its fastest point
    assert report.qps_at(points[:1], 0.9) is None  # never reached


# ---------------------------------------------------------------------- summaries and README
def _results():
    def method(name, family, scale, **extra):
        curve = [{"recall10": r, "recall1": r, "qps": scale * q} for r, q in ((0.85, 2000), (0.95, 1000), (1.0, 100))]
        return {"name": name, "family": family, "options": extra.pop("options", {}), "build_s": extra.pop("build_s"),
                "index_bytes": extra.pop("index_bytes"), "curves": {"held_out": {"1": curve, "2": curve}}, **extra}

    dataset = {"size": 5000, "dim": 16, "query_sets": ["held_out"], "threads": [1, 2], "methods": [
        method("FANNG", "FANNG", 2.0, build_s=10.0, index_bytes=400, default=True),
        method("FANNG uint8", "FANNG", 1.5, build_s=9.0, index_bytes=100, options={"storage": "uint8"}),
        method("hnswlib M=16", "hnswlib", 1.0, build_s=40.0, index_bytes=500),
        method("ScaNN", "ScaNN", 1.25, build_s=5.0, index_bytes=300),
        method("faiss IndexFlatL2 (exact)", "exact", 10.0, build_s=0.0, index_bytes=320),
    ]}
    dataset["summary"] = report.summarise(dataset)
    return {"k": 10, "queries": 100, "rounds": 3, "datasets": {"sift": dataset}}


def test_summary_compares_the_best_fanng_with_the_best_peer_and_ignores_exact_search():
    results = _results()
    row = results["datasets"]["sift"]["summary"]["held_out"]["threads_1"]["0.90"]
    assert row["fanng"] == "FANNG" and row["best_peer"] == "ScaNN"  # exact search is not a peer here
    assert row["fanng_over_best_peer"] == pytest.approx(2.0 / 1.25)
    assert row["fanng_over_best_hnswlib"] == pytest.approx(2.0)
    assert row["fanng_qps"] == pytest.approx(2.0 * math.sqrt(2000 * 1000))


def test_goals_report_ratios_and_whether_they_were_met():
    goals = report.goals(_results())
    assert goals["held_out_sift_fanng_over_best_peer_1_thread"]["met"]  # 1.6 >= 1.3
    assert goals["sift_build_fanng_over_hnswlib_m16"]["measured"] == pytest.approx(0.25)
    assert goals["sift_uint8_index_bytes_over_hnswlib_m16"]["measured"] == pytest.approx(0.2)


def test_readme_block_is_rendered_from_results_and_replaced_between_markers():
    block = report.render_markdown(_results())
    assert "| sift 5k x 16 | held-out | 0.90 |" in block and "(ScaNN)" in block and "| 1.60 | 1.60 |" in block
    hnsw_row = next(line for line in block.splitlines() if line.startswith("| hnswlib M=16 |"))
    assert hnsw_row.startswith("| hnswlib M=16 | 40.0 s | 0.0 MiB | 1.41k / ") and hnsw_row.endswith(" / 158 |")
    readme = f"intro\n{report.README_START}\nold table\n{report.README_END}\noutro\n"
    refreshed = report.replace_block(readme, block)
    assert refreshed == f"intro\n{report.README_START}\n{block}\n{report.README_END}\noutro\n"
    assert report.replace_block(refreshed, block) == refreshed  # idempotent
    with pytest.raises(ValueError, match="ann:start"):
        report.replace_block("no markers here", block)


def test_readme_ann_block_is_generated_from_the_committed_results():
    import json

    repo = Path(__file__).resolve().parents[1]
    results = json.loads((repo / "benchmarks" / "results" / "ann.json").read_text())
    text = (repo / "README.md").read_text()
    block = text.split(report.README_START, 1)[1].split(report.README_END, 1)[0].strip()
    assert block == report.render_markdown(results).strip(), "run: python benchmarks/ann/report.py --write-readme README.md"
