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


def occlusion_violations(vectors, neighbours, rel=1e-4):
    """Kept pairs (q before r in p's row) where q occludes r: d(p,q) < d(p,r) and d(q,r) < d(p,r).

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
                if d_p[i] < margin and sq_dist(vectors[q], vectors[r]) < margin:
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
    neighbours, entry, _ = ops.build_graph(vectors.astype(np.float32), max_degree=12, seed=9)
    np.save(sys.argv[2], np.concatenate([neighbours.numpy().ravel(), [int(entry)]]))
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
    """NN-descent (n > 5000) and refinement give the same graph on 1 and on 3 threads."""
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
            raw_search(**args)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError):
            pass


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
