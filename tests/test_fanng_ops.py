"""The raw FANNG ops (``HybridKeras>FanngBuild`` / ``FanngSearch``) and their thin wrappers.

Checked against NumPy brute force on seeded synthetic data: recall, exactness when the
budget covers everything, the occlusion rule on the pruned graph, reachability from the
entry, reproducibility (seed, thread count), the inner-product metric, thread safety, and
that every malformed input is an error rather than a crash.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import deque
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from hybrid_keras.fanng import ops  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def module():
    try:
        return ops.load_library()
    except RuntimeError as error:  # not built in this checkout
        pytest.skip(str(error))


def clustered(n, dim, clusters, seed, spread=1.0, scale=4.0):
    """Gaussian clusters; queries drawn with the same seed-derived centres share them."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * scale
    labels = rng.integers(0, clusters, size=n)
    return (centres[labels] + rng.normal(size=(n, dim)) * spread).astype(np.float32), centres


def sample_near(centres, n, seed, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(centres), size=n)
    return (centres[labels] + rng.normal(size=(n, centres.shape[1])) * spread).astype(np.float32)


def brute_force(vectors, queries, k, metric="l2"):
    v = vectors.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "l2":
        d = (q**2).sum(1)[:, None] - 2 * q @ v.T + (v**2).sum(1)[None, :]
    else:
        d = -(q @ v.T)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)])


def reachable_from(neighbours, entry):
    seen = np.zeros(len(neighbours), dtype=bool)
    seen[entry] = True
    queue = deque([entry])
    while queue:
        v = queue.popleft()
        for u in neighbours[v]:
            if u < 0:
                break
            if not seen[u]:
                seen[u] = True
                queue.append(u)
    return seen


def sq_dist(a, b):
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(diff @ diff)


def check_rows(vectors, neighbours):
    """Every row: real ids first then -1 padding, no self loop, no duplicate, ascending length."""
    for v, row in enumerate(neighbours):
        real = row[row >= 0]
        assert np.all(row[len(real):] == -1), f"row {v} has ids after its padding: {row}"
        assert v not in real, f"row {v} has a self loop"
        assert len(set(real.tolist())) == len(real), f"row {v} repeats a neighbour"
        lengths = [sq_dist(vectors[v], vectors[u]) for u in real]
        assert all(a <= b * (1 + 1e-5) + 1e-6 for a, b in zip(lengths, lengths[1:])), f"row {v} not sorted"


# The build's occlusion slack for L2 (kOcclusionSlack in fanng_build.cc): q occludes r only
# when d(q, r) is below d(p, r) / OCCLUSION_SLACK (squared distances).
OCCLUSION_SLACK = 1.2


def occlusion_violations(vectors, neighbours, rel=1e-4):
    """Kept pairs (q before r in p's row) where q occludes r: d(p,q) < d(p,r) and
    OCCLUSION_SLACK * d(q,r) < d(p,r).

    Distances are recomputed in float64, so a strict inequality only counts as a violation
    when it holds by a relative margin (float32 rounding in the kernel can flip exact ties).
    """
    violations = []
    for p, row in enumerate(neighbours):
        real = row[row >= 0]
        d_p = [sq_dist(vectors[p], vectors[u]) for u in real]
        for j, r in enumerate(real):
            for i in range(j):
                q = real[i]
                margin = d_p[j] * (1 - rel) - 1e-6
                if d_p[i] < margin and OCCLUSION_SLACK * sq_dist(vectors[q], vectors[r]) < margin:
                    violations.append((p, int(q), int(r)))
    return violations


@pytest.fixture(scope="module")
def clustered_index(module):
    vectors, centres = clustered(2000, 32, clusters=20, seed=7)
    queries = sample_near(centres, 200, seed=8)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=24, seed=3)
    return vectors, queries, neighbours.numpy(), int(entry)


# ------------------------------------------------------------------ search quality


def test_build_outputs_and_entry_near_mean(clustered_index):
    vectors, _, neighbours, entry = clustered_index
    assert neighbours.shape == (2000, 24) and neighbours.dtype == np.int32
    mean = vectors.astype(np.float64).mean(0)
    to_mean = ((vectors - mean) ** 2).sum(1)
    assert to_mean[entry] <= to_mean.min() * (1 + 1e-5)
    check_rows(vectors, neighbours)


def test_recall_at_10(clustered_index):
    vectors, queries, neighbours, entry = clustered_index
    truth, _ = brute_force(vectors, queries, 10)
    ids, distances = ops.search(vectors, neighbours, entry, queries, k=10, budget=600)
    assert ids.shape == (200, 10) and distances.shape == (200, 10)
    assert recall(ids.numpy(), truth) >= 0.99
    # Fewer distance computations, lower but still useful recall: the budget is honoured.
    low, _ = ops.search(vectors, neighbours, entry, queries, k=10, budget=60)
    assert recall(low.numpy(), truth) < recall(ids.numpy(), truth)


def test_exhaustive_budget_is_exact(clustered_index):
    vectors, queries, neighbours, entry = clustered_index
    truth_ids, truth_d = brute_force(vectors, queries, 10)
    ids, distances = ops.search(vectors, neighbours, entry, queries, k=10, budget=len(vectors))
    ids, distances = ids.numpy(), distances.numpy()
    np.testing.assert_allclose(distances, truth_d, rtol=1e-4, atol=1e-3)
    assert np.all(np.diff(distances, axis=1) >= 0)
    # Ids agree except where float32 and float64 disagree on near ties.
    assert np.mean(ids == truth_ids) > 0.995
    # The returned distances are the true distances of the returned ids.
    recomputed = ((queries[:, None, :].astype(np.float64) - vectors[ids].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_allclose(distances, recomputed, rtol=1e-4, atol=1e-3)


def test_pool_rule_recall_and_early_stop(clustered_index):
    vectors, queries, neighbours, entry = clustered_index
    truth, _ = brute_force(vectors, queries, 10)
    recalls = [recall(ops.search(vectors, neighbours, entry, queries, k=10, budget=len(vectors), ef=ef)[0].numpy(),
                      truth) for ef in (10, 100, 800)]
    # Well-separated clusters are the hard case for a flat graph: finding the query's
    # cluster takes a large pool here (real descriptors need far less, see benchmarks/ann).
    assert recalls[0] <= recalls[1] <= recalls[2] and recalls[2] >= 0.99
    # The rule stops well before the budget: the same ef under a budget it never reaches
    # gives the same answers as under a budget of N.
    capped, _ = ops.search(vectors, neighbours, entry, queries, k=10, budget=len(vectors), ef=40)
    uncapped, _ = ops.search(vectors, neighbours, entry, queries, k=10, budget=2**31 - 1, ef=40)
    np.testing.assert_array_equal(capped.numpy(), uncapped.numpy())
    # A pool that can hold every vector never fills, so only the budget stops the search:
    # exhaustive, like ef = 0.
    whole, _ = ops.search(vectors, neighbours, entry, queries, k=10, budget=len(vectors), ef=len(vectors))
    paper, _ = ops.search(vectors, neighbours, entry, queries, k=10, budget=len(vectors), ef=0)
    np.testing.assert_array_equal(whole.numpy(), paper.numpy())


def test_pool_smaller_than_k_is_raised_to_k(clustered_index):
    vectors, queries, neighbours, entry = clustered_index
    ids, distances = ops.search(vectors, neighbours, entry, queries, k=10, budget=len(vectors), ef=1)
    assert np.all(ids.numpy() >= 0) and np.all(np.isfinite(distances.numpy()))
    assert np.all(np.diff(distances.numpy(), axis=1) >= 0)


def test_k_equal_n_returns_everything():
    vectors, _ = clustered(50, 8, clusters=3, seed=1)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=6)
    ids, distances = ops.search(vectors, neighbours, entry, vectors[:3], k=50, budget=50)
    for row in ids.numpy():
        assert sorted(row.tolist()) == list(range(50))
    assert np.all(distances.numpy()[:, 0] == 0)


def test_small_budget_pads_with_minus_one_and_inf():
    vectors, _ = clustered(100, 8, clusters=3, seed=2)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=8)
    ids, distances = ops.search(vectors, neighbours, entry, vectors[:4], k=10, budget=3)
    ids, distances = ids.numpy(), distances.numpy()
    assert np.all(ids[:, 3:] == -1) and np.all(np.isinf(distances[:, 3:]))
    assert np.all(ids[:, :3] >= 0) and np.all(np.isfinite(distances[:, :3]))


def test_tiny_and_degenerate_inputs():
    one = np.ones((1, 4), np.float32)
    neighbours, entry, _ = ops.build_graph(one, max_degree=3)
    assert neighbours.numpy().tolist() == [[-1, -1, -1]] and int(entry) == 0
    ids, distances = ops.search(one, neighbours, entry, one * 2, k=1, budget=5)
    assert ids.numpy().tolist() == [[0]] and distances.numpy()[0, 0] == pytest.approx(4.0)
    # All points identical: every distance ties at zero; the graph must still reach all.
    same = np.zeros((30, 5), np.float32)
    neighbours, entry, _ = ops.build_graph(same, max_degree=4)
    assert reachable_from(neighbours.numpy(), int(entry)).all()
    ids, _ = ops.search(same, neighbours, entry, same[:2], k=30, budget=30)
    assert all(sorted(row) == list(range(30)) for row in ids.numpy().tolist())
    # No queries.
    ids, distances = ops.search(same, neighbours, entry, np.zeros((0, 5), np.float32), k=3, budget=10)
    assert ids.shape == (0, 3) and distances.shape == (0, 3)


# ------------------------------------------------------------------ graph structure


def test_pruned_graph_satisfies_occlusion_rule():
    """Without refinement or reachability edges, the graph is exactly the pruned candidates."""
    vectors, _ = clustered(600, 12, clusters=6, seed=11)
    neighbours, _, _ = ops.build_graph(vectors, max_degree=12, refine_iterations=0, connect=False, seed=1)
    neighbours = neighbours.numpy()
    check_rows(vectors, neighbours)
    assert occlusion_violations(vectors, neighbours) == []
    # And the rule really pruned something: rows are not just the 12 nearest neighbours.
    assert (neighbours >= 0).sum(1).mean() < 11


def test_traverse_add_keeps_occlusion_rule():
    """Refinement only adds edges no kept edge occludes (and drops those they occlude)."""
    vectors, _ = clustered(600, 12, clusters=6, seed=12)
    neighbours, _, _ = ops.build_graph(vectors, max_degree=12, refine_iterations=3, connect=False, seed=1)
    neighbours = neighbours.numpy()
    check_rows(vectors, neighbours)
    assert occlusion_violations(vectors, neighbours) == []


def test_nn_descent_graph_satisfies_occlusion_rule():
    """Above the brute-force size the candidates come from NN-descent; pruning is the same."""
    vectors, _ = clustered(6000, 8, clusters=10, seed=13)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=10, refine_iterations=1, connect=False, seed=2)
    neighbours = neighbours.numpy()
    assert occlusion_violations(vectors, neighbours[:300]) == []  # rows 0..299 of the graph
    queries = vectors[:100] + 0.01
    truth, _ = brute_force(vectors, queries, 10)
    ids, _ = ops.search(vectors, neighbours, entry, queries, k=10, budget=800)
    assert recall(ids.numpy(), truth) >= 0.98


def test_every_vertex_reachable_from_entry(clustered_index):
    _, _, neighbours, entry = clustered_index
    assert reachable_from(neighbours, entry).all()


def test_reachability_repairs_disconnected_clusters():
    # Far-apart tight clusters: a 4-NN candidate list never leaves its cluster, so without
    # the reachability step most of the graph would be cut off from the entry.
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(12, 6)) * 1000
    vectors = (np.repeat(centres, 25, axis=0) + rng.normal(size=(300, 6))).astype(np.float32)
    disconnected, entry, _ = ops.build_graph(vectors, max_degree=4, candidates=4, refine_iterations=0, connect=False)
    assert not reachable_from(disconnected.numpy(), int(entry)).all()
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=4, candidates=4, refine_iterations=0)
    neighbours = neighbours.numpy()
    assert reachable_from(neighbours, int(entry)).all()
    check_rows(vectors, neighbours)
    # Exhaustive search now finds true neighbours in every cluster.
    queries = (centres + rng.normal(size=centres.shape)).astype(np.float32)
    truth, _ = brute_force(vectors, queries, 5)
    ids, _ = ops.search(vectors, neighbours, entry, queries, k=5, budget=300)
    assert recall(ids.numpy(), truth) == 1.0


def test_max_degree_one_still_connected():
    vectors, _ = clustered(200, 4, clusters=4, seed=6)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=1)
    assert neighbours.shape == (200, 1)
    assert reachable_from(neighbours.numpy(), int(entry)).all()


# ------------------------------------------------------------------ determinism

_THREADED_BUILD = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
    from hybrid_keras.fanng import ops
    rng = np.random.default_rng(21)
    vectors = (rng.normal(size=(40, 16)) * 4)[rng.integers(0, 40, 6000)] + rng.normal(size=(6000, 16))
    vectors = vectors.astype(np.float32)
    neighbours, entry, entry_points = ops.build_graph(vectors, max_degree=12, seed=9, entry_points=8)
    old, _, old_entry_points = ops.build_graph(vectors[:5000], max_degree=12, seed=9, entry_points=8)
    table = np.concatenate([old.numpy(), np.full((1000, 12), -1, np.int32)])
    inserted = ops.insert(vectors, table, old_entry_points, 5000).numpy()
    np.save(sys.argv[2], np.concatenate([neighbours.numpy().ravel(), [int(entry)], entry_points.numpy(),
                                         inserted.ravel()]))
    """
)


def test_same_seed_same_graph(clustered_index):
    vectors, _, neighbours, entry = clustered_index
    again, entry_again, _ = ops.build_graph(vectors, max_degree=24, seed=3)
    np.testing.assert_array_equal(again.numpy(), neighbours)
    assert int(entry_again) == entry
    other, _, _ = ops.build_graph(vectors, max_degree=24, seed=4)
    assert not np.array_equal(other.numpy(), neighbours)  # the seed does drive the build


@pytest.mark.slow
def test_graph_independent_of_thread_count(module, tmp_path):
    """NN-descent (n > 5000), refinement, entry points and insertion give the same graph on
    1 and on 3 threads."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    results = []
    for threads in (1, 3):
        out = tmp_path / f"graph_{threads}.npy"
        subprocess.run(
            [sys.executable, "-c", _THREADED_BUILD, str(threads), str(out)],
            check=True, cwd=REPO, env=env, capture_output=True, timeout=300,
        )
        results.append(np.load(out))
    np.testing.assert_array_equal(results[0], results[1])


# ------------------------------------------------------------------ entry points, storage, insertion


def test_entry_points_search_is_exact_when_ef_covers_everything():
    vectors, centres = clustered(1500, 16, clusters=12, seed=51)
    queries = sample_near(centres, 60, seed=52, spread=3.0)
    neighbours, entry, entry_points = ops.build_graph(vectors, max_degree=12, seed=1, entry_points=24)
    entry_points = entry_points.numpy()
    assert entry_points.shape == (24,) and entry_points[0] == int(entry)
    # The k-means entry points spread over the clusters (each centroid's nearest vertex).
    labels = np.argmin(((vectors[entry_points][:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert len(set(labels.tolist())) >= 10
    truth, true_d = brute_force(vectors, queries, 10)
    for ef in (len(vectors), 2 * len(vectors)):
        ids, distances = ops.search(vectors, neighbours, entry_points, queries, k=10, budget=len(vectors), ef=ef)
        np.testing.assert_array_equal(ids.numpy(), truth)
        np.testing.assert_allclose(distances.numpy(), true_d, rtol=1e-4, atol=1e-3)
    # Repeated entry points are visited once: the budget rule still counts exactly.
    repeated = np.concatenate([entry_points, entry_points])
    a = ops.search(vectors, neighbours, repeated, queries, k=10, budget=200)[0].numpy()
    b = ops.search(vectors, neighbours, entry_points, queries, k=10, budget=200)[0].numpy()
    np.testing.assert_array_equal(a, b)


def _stored(vectors, storage):
    """(stored array, scale, offset, dequantised float64 values) for a storage type."""
    if storage == "float32":
        return vectors, 1.0, 0.0, vectors.astype(np.float64)
    if storage == "float16":
        halves = vectors.astype(np.float16)
        return halves, 1.0, 0.0, halves.astype(np.float64)
    low, high = float(vectors.min()), float(vectors.max())
    scale = (high - low) / 255
    codes = np.clip(np.rint((vectors - low) / scale), 0, 255).astype(np.uint8)
    return codes, scale, low, low + scale * codes.astype(np.float64)


_STORAGE_DISTANCES = textwrap.dedent(
    """
    import sys, numpy as np
    from hybrid_keras.fanng import ops
    sys.path.insert(0, sys.argv[1])
    from test_fanng_ops import _stored, brute_force
    rng = np.random.default_rng(61)
    worst = 0.0

    def check(vectors, queries, storage, metric):
        global worst
        stored, scale, offset, values = _stored(vectors, storage)
        neighbours, entry, _ = ops.build_graph(stored, max_degree=6, metric=metric, scale=scale, offset=offset)
        ids, d = ops.search(stored, neighbours, entry, queries, k=50, budget=50, metric=metric, scale=scale,
                            offset=offset)
        ids = ids.numpy()
        q = queries.astype(np.float64)
        if metric == "l2":
            want = ((q[:, None, :] - values[ids]) ** 2).sum(-1)
        else:
            want = -(q[:, None, :] * values[ids]).sum(-1)
        scale_of = np.abs(want).max() + 1.0
        worst = max(worst, float(np.abs(d.numpy() - want).max() / scale_of))
        _, truth_d = brute_force(values, queries, 50, metric=metric)
        worst = max(worst, float(np.abs(np.sort(d.numpy(), 1) - truth_d).max() / scale_of))

    for dim in (1, 7, 8, 31, 33, 64, 100):  # every tail length of the SIMD loops
        vectors = (rng.normal(size=(50, dim)) * 3).astype(np.float32)
        queries = (rng.normal(size=(5, dim)) * 3).astype(np.float32)
        for storage in ("float32", "float16", "uint8"):
            for metric in ("l2",) if storage == "uint8" else ("l2", "ip"):
                check(vectors, queries, storage, metric)
        # Bytes (SIFT-like): lossless codes; integral queries take the integer kernel, one
        # fractional value sends a query back to the float kernel.
        codes = rng.integers(0, 256, size=(50, dim)).astype(np.float32)
        byte_queries = rng.integers(0, 256, size=(6, dim)).astype(np.float32)
        byte_queries[-1, 0] += 0.5
        check(codes, byte_queries, "uint8", "l2")
    print(worst)
    """
)


@pytest.mark.parametrize("kernels", ["dispatched", "portable"])
def test_storage_distances_equal_numpy_on_dequantised_vectors(module, kernels):
    """Every storage type and metric, in the SIMD kernels chosen at load time and in the
    portable fallback (forced by HYBRID_KERAS_FANNG_PORTABLE), against float64 NumPy on the
    dequantised values, at dims that exercise every loop tail."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    if kernels == "portable":
        env["HYBRID_KERAS_FANNG_PORTABLE"] = "1"
    else:
        env.pop("HYBRID_KERAS_FANNG_PORTABLE", None)
    result = subprocess.run([sys.executable, "-c", _STORAGE_DISTANCES, str(Path(__file__).parent)], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-5


@pytest.mark.parametrize("storage", ["float16", "uint8"])
def test_compact_storage_graph_and_recall(storage):
    vectors, centres = clustered(2000, 32, clusters=20, seed=7)
    queries = sample_near(centres, 100, seed=8)
    stored, scale, offset, values = _stored(vectors, storage)
    neighbours, entry, entry_points = ops.build_graph(stored, max_degree=16, seed=3, entry_points=8, scale=scale,
                                                      offset=offset)
    neighbours = neighbours.numpy()
    assert reachable_from(neighbours, int(entry)).all()
    assert occlusion_violations(values, neighbours[:200]) == []  # the rule holds on the stored values
    truth, _ = brute_force(vectors, queries, 10)
    ids, _ = ops.search(stored, neighbours, entry_points, queries, k=10, budget=2000, ef=100, scale=scale,
                        offset=offset)
    # Against the float32 truth: uint8 steps of range/255 (about 0.1 here) swap close neighbours.
    assert recall(ids.numpy(), truth) >= (0.99 if storage == "float16" else 0.95)


def _insert_case(storage="float32", seed=71):
    vectors, centres = clustered(2400, 16, clusters=15, seed=seed)
    stored, scale, offset, values = _stored(vectors, storage)
    old, _, entry_points = ops.build_graph(stored[:2000], max_degree=12, seed=1, entry_points=4, scale=scale,
                                           offset=offset)
    table = np.concatenate([old.numpy(), np.full((400, 12), -1, np.int32)])
    inserted = ops.insert(stored, table, entry_points, 2000, scale=scale, offset=offset).numpy()
    return vectors, centres, stored, scale, offset, values, old.numpy(), entry_points.numpy(), inserted


@pytest.mark.parametrize("storage", ["float32", "uint8"])
def test_insertion_keeps_the_occlusion_rule_and_reachability(storage):
    vectors, centres, stored, scale, offset, values, old, entry_points, inserted = _insert_case(storage)
    check_rows(values, inserted)
    assert occlusion_violations(values, inserted) == []
    assert reachable_from(inserted, int(entry_points[0])).all()
    assert (inserted[2000:] >= 0).any(axis=1).all()  # every new vertex has out-edges
    # Old rows change only by reverse and traverse-add edges (and what those evict): most
    # of their edges stay.
    kept = [len(set(a[a >= 0]) & set(b[b >= 0])) / max(1, (b >= 0).sum()) for a, b in zip(inserted[:2000], old)]
    assert np.mean(kept) > 0.8


def test_insertion_recall_is_within_a_stated_margin_of_a_rebuild():
    vectors, centres, stored, _, _, _, _, entry_points, inserted = _insert_case()
    rebuilt, _, rebuilt_entry_points = ops.build_graph(vectors, max_degree=12, seed=1, entry_points=4)
    queries = sample_near(centres, 200, seed=72)
    truth, _ = brute_force(vectors, queries, 10)
    for ef in (10, 20, 40):
        got = recall(ops.search(vectors, inserted, entry_points, queries, k=10, budget=2400, ef=ef)[0].numpy(), truth)
        want = recall(ops.search(vectors, rebuilt, rebuilt_entry_points, queries, k=10, budget=2400,
                                 ef=ef)[0].numpy(), truth)
        assert got >= want - 0.02, (ef, got, want)  # margin: 2 points of recall@10
    # The new vertices find themselves.
    ids, _ = ops.search(vectors, inserted, entry_points, vectors[2000:], k=1, budget=2400, ef=16)
    assert np.mean(ids.numpy()[:, 0] == np.arange(2000, 2400)) >= 0.99


def test_insertion_is_deterministic_and_ignores_rows_after_start():
    *_, inserted = _insert_case()
    vectors, _, _, _, _, _, old, entry_points, _ = _insert_case()
    table = np.concatenate([old, np.random.default_rng(0).integers(-1, 2400, size=(400, 12), dtype=np.int32)])
    again = ops.insert(vectors, table, entry_points, 2000).numpy()
    np.testing.assert_array_equal(again, inserted)
    # start = N inserts nothing.
    np.testing.assert_array_equal(ops.insert(vectors, inserted, entry_points, 2400).numpy(), inserted)


# ------------------------------------------------------------------ metric, threads


def test_inner_product_metric():
    vectors, centres = clustered(1500, 16, clusters=10, seed=31)
    queries = sample_near(centres, 100, seed=32)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=16, metric="ip")
    truth_ids, truth_d = brute_force(vectors, queries, 10, metric="ip")
    ids, distances = ops.search(vectors, neighbours, entry, queries, k=10, budget=len(vectors), metric="ip")
    np.testing.assert_allclose(distances.numpy(), truth_d, rtol=1e-4, atol=1e-3)
    assert np.mean(ids.numpy() == truth_ids) > 0.99
    ids, _ = ops.search(vectors, neighbours, entry, queries, k=10, budget=500, metric="ip")
    assert recall(ids.numpy(), truth_ids) >= 0.9


def test_concurrent_searches_match_serial(clustered_index):
    vectors, queries, neighbours, entry = clustered_index
    serial_ids, serial_d = ops.search(vectors, neighbours, entry, queries, k=10, budget=300)
    vectors_t, neighbours_t = tf.constant(vectors), tf.constant(neighbours)
    results, errors = {}, []

    def worker(index):
        try:
            for _ in range(5):
                for start in range(0, len(queries), 7 + index):
                    chunk = queries[start:start + 7 + index]
                    ids, d = ops.search(vectors_t, neighbours_t, entry, chunk, k=10, budget=300)
                    results.setdefault(index, {})[start] = (ids.numpy(), d.numpy())
        except Exception as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for index, chunks in results.items():
        ids = np.concatenate([chunks[s][0] for s in sorted(chunks)])
        d = np.concatenate([chunks[s][1] for s in sorted(chunks)])
        np.testing.assert_array_equal(ids, serial_ids.numpy())
        np.testing.assert_array_equal(d, serial_d.numpy())


def test_ops_in_tf_function_have_static_shapes(clustered_index):
    vectors, queries, neighbours, entry = clustered_index

    @tf.function(input_signature=[tf.TensorSpec([None, 32], tf.float32)])
    def knn(q):
        return ops.load_library().hybrid_keras_fanng_search(
            vectors=vectors, neighbours=neighbours, entry=entry, queries=q, k=5, budget=200, ef=0)

    ids, distances = knn.get_concrete_function().structured_outputs
    assert ids.shape.as_list() == [None, 5] and distances.shape.as_list() == [None, 5]
    eager_ids, _ = ops.search(vectors, neighbours, entry, queries[:9], k=5, budget=200)
    np.testing.assert_array_equal(knn(tf.constant(queries[:9]))[0].numpy(), eager_ids.numpy())

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def build(v):
        return ops.load_library().hybrid_keras_fanng_build(vectors=v, max_degree=7)

    graph, entry_t, entry_points = build.get_concrete_function().structured_outputs
    assert graph.shape.as_list() == [None, 7] and entry_t.shape.rank == 0 and entry_points.shape.as_list() == [1]


# ------------------------------------------------------------------ validation


def _expect_error(fn):
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)):
        fn()


def test_fuzz_bad_inputs_raise_not_crash(module):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(40, 6)).astype(np.float32)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=5)
    neighbours = neighbours.numpy()
    entry = int(entry)
    queries = rng.normal(size=(3, 6)).astype(np.float32)
    raw_search = module.hybrid_keras_fanng_search
    raw_build = module.hybrid_keras_fanng_build
    good = dict(vectors=vectors, neighbours=neighbours, entry=np.int32(entry), queries=queries,
                k=np.int32(4), budget=np.int32(20), ef=np.int32(0))
    raw_search(**good)  # the baseline is valid

    def bad_search(**changes):
        args = dict(good, **changes)
        _expect_error(lambda: raw_search(**args))

    nan_vectors = vectors.copy()
    nan_vectors[3, 2] = np.nan
    inf_queries = queries.copy()
    inf_queries[1, 0] = -np.inf
    too_big = neighbours.copy()
    too_big[7, 0] = 40
    too_small = neighbours.copy()
    too_small[9, 1] = -2
    int_max = neighbours.copy()
    int_max[0, 0] = np.iinfo(np.int32).max
    cases = [
        dict(vectors=vectors[0]),  # rank 1
        dict(vectors=vectors[None]),  # rank 3
        dict(vectors=np.zeros((0, 6), np.float32), neighbours=np.zeros((0, 5), np.int32)),  # N = 0
        dict(vectors=np.zeros((40, 0), np.float32), queries=np.zeros((3, 0), np.float32)),  # D = 0
        # Wrong dtypes as tensors (NumPy arrays would be converted to the declared dtype).
        dict(vectors=tf.constant(vectors, tf.float64)),
        dict(vectors=tf.constant(vectors.astype(np.int32))),
        dict(queries=tf.constant(queries, tf.float64)),
        dict(queries=queries[:, :5]),  # D mismatch
        dict(queries=queries[0]),  # rank 1
        dict(neighbours=neighbours[:39]),  # rows != N
        dict(neighbours=neighbours[0]),  # rank 1
        dict(neighbours=tf.constant(neighbours, tf.int64)),
        dict(neighbours=tf.constant(neighbours, tf.float32)),
        dict(neighbours=too_big),
        dict(neighbours=too_small),
        dict(neighbours=int_max),
        dict(neighbours=np.full((40, 65536), -1, np.int32)),  # more columns than a cursor holds
        dict(vectors=nan_vectors),
        dict(vectors=np.where(vectors > 1, np.inf, vectors).astype(np.float32)),
        dict(queries=inf_queries),
        dict(k=np.int32(0)),
        dict(k=np.int32(-3)),
        dict(k=np.int32(41)),
        dict(k=np.array([4], np.int32)),
        dict(k=tf.constant(4, tf.int64)),
        dict(budget=np.int32(0)),
        dict(budget=np.int32(-1)),
        dict(budget=np.array([[5]], np.int32)),
        dict(ef=np.int32(-1)),
        dict(ef=np.array([8], np.int32)),
        dict(ef=tf.constant(8, tf.int64)),
        dict(entry=np.int32(-1)),
        dict(entry=np.int32(40)),
        dict(entry=np.array([[0]], np.int32)),  # rank 2
        dict(entry=np.zeros(0, np.int32)),  # no entry point
        dict(entry=np.array([0, 40], np.int32)),  # one of several out of range
        dict(entry=tf.constant(0.0)),
    ]
    for case in cases:
        bad_search(**case)
    _expect_error(lambda: raw_search(**good, metric="cosine"))

    for case in [
        dict(vectors=vectors[0]),
        dict(vectors=vectors[None]),
        dict(vectors=np.zeros((0, 6), np.float32)),
        dict(vectors=np.zeros((5, 0), np.float32)),
        dict(vectors=tf.constant(vectors, tf.float64)),
        dict(vectors=tf.constant(vectors.astype(np.int32))),
        dict(vectors=nan_vectors),
        dict(vectors=vectors, max_degree=0),
        dict(vectors=vectors, max_degree=-4),
        dict(vectors=vectors, max_degree=5000),
        dict(vectors=vectors, metric="cosine"),
        dict(vectors=vectors, candidates=-1),
        dict(vectors=vectors, refine_iterations=-1),
    ]:
        _expect_error(lambda case=case: raw_build(**case))

    # Storage types: attrs checked, non-finite halves refused, uint8 only with l2.
    half_nan = vectors.astype(np.float16)
    half_nan[2, 2] = np.inf
    codes = np.clip(vectors * 20 + 128, 0, 255).astype(np.uint8)
    for case in [
        dict(vectors=half_nan),
        dict(vectors=codes, scale=0.0),
        dict(vectors=codes, scale=-1.0),
        dict(vectors=codes, scale=float("nan")),
        dict(vectors=codes, scale=float("inf")),
        dict(vectors=codes, offset=float("nan")),
        dict(vectors=codes, metric="ip"),
        dict(vectors=codes, num_entry_points=0),
        dict(vectors=codes, num_entry_points=5000),
        dict(vectors=tf.constant(codes.astype(np.int8))),
    ]:
        _expect_error(lambda case=case: raw_build(**case))
    for case in [dict(vectors=half_nan), dict(vectors=codes, scale=0.0), dict(vectors=codes, metric="ip"),
                 dict(vectors=tf.constant(codes.astype(np.uint16)))]:
        bad_search(**case)
    raw_search(**dict(good, vectors=codes, scale=0.5, offset=-3.0))  # valid
    raw_search(**dict(good, vectors=vectors.astype(np.float16)))  # valid

    # Insertion: every input checked.
    raw_insert = module.hybrid_keras_fanng_insert
    old_graph = np.concatenate([neighbours[:30], np.full((10, 5), -1, np.int32)])
    old_graph[:30] = np.where(old_graph[:30] >= 30, -1, old_graph[:30])
    good_insert = dict(vectors=vectors, neighbours=old_graph, entry_points=np.array([0, 3], np.int32),
                       start=np.int32(30))
    raw_insert(**good_insert)  # the baseline is valid
    points_forward = old_graph.copy()
    points_forward[4, 0] = 35  # an old row pointing at a new one
    for change in [
        dict(vectors=vectors[0]),
        dict(vectors=nan_vectors),
        dict(vectors=half_nan),
        dict(vectors=codes, metric="ip"),
        dict(vectors=codes, scale=0.0),
        dict(neighbours=old_graph[:39]),
        dict(neighbours=old_graph[0]),
        dict(neighbours=np.full((40, 300), -1, np.int32)),  # wider than builds allow
        dict(neighbours=np.zeros((40, 0), np.int32)),
        dict(neighbours=points_forward),
        dict(neighbours=np.where(old_graph == 1, -7, old_graph).astype(np.int32)),
        dict(entry_points=np.array([30], np.int32)),  # a new row cannot be an entry point
        dict(entry_points=np.array([-1], np.int32)),
        dict(entry_points=np.zeros(0, np.int32)),
        dict(entry_points=np.zeros((1, 1), np.int32)),
        dict(start=np.int32(0)),
        dict(start=np.int32(41)),
        dict(start=np.array([30], np.int32)),
        dict(candidates=5000),
        dict(ef=-1),
    ]:
        args = dict(good_insert, **change)
        _expect_error(lambda args=args: raw_insert(**args))
    for trial in range(100):
        args = dict(good_insert)
        key = list(good_insert)[trial % len(good_insert)]
        shape = tuple(rng.integers(0, 4, size=rng.integers(0, 3)))
        if key == "vectors":
            args[key] = rng.choice([np.nan, np.inf, 1e38, -1e38, 0.0], size=shape).astype(np.float32)
        else:
            args[key] = rng.integers(-2**31, 2**31 - 1, size=shape, dtype=np.int64).astype(np.int32)
        try:
            raw_insert(**args)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError):
            pass

    # The wrappers reject the same things, with TypeError/ValueError for dtypes and ranks.
    for call in [
        lambda: ops.build_graph(vectors.astype(np.int64)),
        lambda: ops.build_graph(tf.constant(vectors, tf.float64)),
        lambda: ops.build_graph(vectors, metric="cosine"),
        lambda: ops.build_graph(vectors[0]),
        lambda: ops.search(vectors, neighbours.astype(np.float32), entry, queries),
        lambda: ops.search(vectors, neighbours, entry, queries, k=0),
        lambda: ops.search(vectors, neighbours, entry, queries, k=41),
        lambda: ops.search(vectors, neighbours, entry, queries, budget=0),
        lambda: ops.search(vectors, neighbours, entry, queries, ef=-5),
        lambda: ops.search(vectors, neighbours, 99, queries),
        lambda: ops.search(vectors, neighbours, entry, queries, k=2**40),
        lambda: ops.search(vectors, too_big, entry, queries),
        lambda: ops.search(nan_vectors, neighbours, entry, queries),
        lambda: ops.build_graph(vectors, seed=2**64),  # once a SystemError from the op wrapper
        lambda: ops.build_graph(vectors, seed=1.5),
        lambda: ops.build_graph(vectors, max_degree=1024),
        lambda: ops.build_graph(vectors, entry_points=0),
        lambda: ops.insert(vectors, old_graph, [0], 2**40),
        lambda: ops.insert(vectors, old_graph, [[0]], 30),
        lambda: ops.build_graph(vectors.astype(np.int16)),
    ]:
        _expect_error(call)

    # Random garbage in every slot: only errors, never a crash.
    for trial in range(200):
        args = dict(good)
        key = list(good)[trial % len(good)]
        shape = tuple(rng.integers(0, 4, size=rng.integers(0, 3)))
        if key in ("vectors", "queries"):
            args[key] = rng.choice([np.nan, np.inf, 1e38, -1e38, 0.0], size=shape).astype(np.float32)
        else:
            args[key] = rng.integers(-2**31, 2**31 - 1, size=shape, dtype=np.int64).astype(np.int32)
        try:
            raw_search(**args, check_neighbours=bool(trial % 2))
        except (tf.errors.InvalidArgumentError, TypeError, ValueError):
            pass
    # Unscanned tables with ids anywhere: the search's own bounds checks must hold.
    for trial in range(20):
        table = rng.integers(-3, 80, size=neighbours.shape).astype(np.int32)
        try:
            raw_search(**dict(good, neighbours=table, budget=np.int32(40)), check_neighbours=False)
        except tf.errors.InvalidArgumentError as error:
            assert "neighbours ids" in str(error)


def test_skipping_the_vector_scan_is_still_safe():
    vectors, _ = clustered(300, 8, clusters=3, seed=41)
    neighbours, entry, _ = ops.build_graph(vectors, max_degree=8)
    queries = vectors[:5] + 0.1
    checked = ops.search(vectors, neighbours, entry, queries, k=5, budget=300)
    unchecked = ops.search(vectors, neighbours, entry, queries, k=5, budget=300, check_vectors=False)
    np.testing.assert_array_equal(checked[0].numpy(), unchecked[0].numpy())
    # NaN rows are then only "infinitely far", never a crash or an out-of-bounds read.
    broken = vectors.copy()
    broken[::2] = np.nan
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        ops.search(broken, neighbours, entry, queries, k=5, budget=300)
    ids, distances = ops.search(broken, neighbours, entry, queries, k=5, budget=300, check_vectors=False)
    assert ids.shape == (5, 5) and not np.isnan(distances.numpy()).any()
    # Out-of-range ids are rejected whatever check_vectors says.
    bad = neighbours.numpy().copy()
    bad[3, 0] = 300
    with pytest.raises(tf.errors.InvalidArgumentError, match="neighbours ids"):
        ops.search(vectors, bad, entry, queries, k=5, budget=300, check_vectors=False)
    # Without the table scan the search meets the bad id (an exhaustive budget reaches row 3)
    # and fails the same way instead of reading out of bounds.
    for bad_id in (300, 2**31 - 1):
        bad[3, 0] = bad_id
        with pytest.raises(tf.errors.InvalidArgumentError, match="neighbours ids"):
            ops.search(vectors, bad, entry, queries, k=5, budget=300, check_neighbours=False)
    unscanned = ops.search(vectors, neighbours, entry, queries, k=5, budget=300, check_neighbours=False)
    np.testing.assert_array_equal(checked[0].numpy(), unscanned[0].numpy())


def test_huge_finite_values_do_not_break_ordering():
    # Finite inputs whose products overflow: distances become inf (or would be NaN for the
    # inner product); the ops must still return well-formed results.
    vectors = np.array([[3e38, -3e38], [-3e38, 3e38], [1.0, 2.0], [3e38, 3e38]], np.float32)
    for metric in ("l2", "ip"):
        neighbours, entry, _ = ops.build_graph(vectors, max_degree=3, metric=metric)
        ids, distances = ops.search(vectors, neighbours, entry, vectors, k=4, budget=4, metric=metric)
        assert sorted(ids.numpy()[0].tolist()) == [0, 1, 2, 3]
        assert not np.isnan(distances.numpy()).any()


# ------------------------------------------------------------------ loader


def test_library_path_and_missing_library_message(monkeypatch, tmp_path):
    from hybrid_keras.fanng import build

    assert ops.library_path() == Path(build.LIBRARY_PATH)
    monkeypatch.setattr(ops, "library_path", lambda: tmp_path / "missing.so")
    with pytest.raises(RuntimeError, match="hybrid_keras.fanng.build"):
        ops._load.__wrapped__()
    broken = tmp_path / "broken.so"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setattr(ops, "library_path", lambda: broken)
    with pytest.raises(RuntimeError, match="dev.sh setup"):
        ops._load.__wrapped__()
