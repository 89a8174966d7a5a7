"""FanngIndex against brute-force search: recall, later additions, persistence, bad input."""

import numpy as np
import pytest

from hybrid_keras.fanng import FanngIndex, IndexFormatError


def _clustered(rng, rows, dim=24, clusters=40):
    centres = rng.normal(size=(clusters, dim)) * 3
    return (centres[rng.integers(0, clusters, rows)] + rng.normal(size=(rows, dim))).astype(np.float32)


def _brute_force(data, queries, k, metric="l2"):
    if metric == "l2":
        distances = ((queries[:, None, :] - data[None, :, :]) ** 2).sum(-1)
    else:
        distances = 1.0 - queries @ data.T
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(distances, order, axis=1)


def _recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return _clustered(rng, 3000), _clustered(rng, 150)


def test_search_matches_brute_force(data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], max_degree=24, seed=1)
    index.add(vectors)
    ids, distances = index.search(queries, k=10, budget=1500)  # half the data: "generous"
    truth, true_distances = _brute_force(vectors, queries, 10)
    assert _recall(ids, truth) >= 0.99
    # The queries come from other clusters than the data (far from every point), the hard
    # case for a graph; the default pool (ef 64) still finds most neighbours, a larger one all.
    default_ids, _ = index.search(queries, k=10)
    assert _recall(default_ids, truth) >= 0.9
    assert _recall(index.search(queries, k=10, ef=300)[0], truth) >= 0.99
    exact_ids, exact_distances = index.search(queries, k=10, budget=len(vectors))
    np.testing.assert_array_equal(exact_ids, truth)
    np.testing.assert_allclose(exact_distances, true_distances, rtol=1e-4, atol=1e-3)


def test_custom_ids_and_later_additions_without_rebuild(data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], max_degree=24, seed=1)
    index.add(vectors[:2500], ids=np.arange(2500) * 10 + 7)
    index.build()
    graph_before = index.neighbours[:2500].copy()
    index.add(vectors[2500:2700], ids=np.arange(2500, 2700) * 10 + 7)  # 8%: inserted, not rebuilt
    assert len(index) == 2700 and index.is_built
    # Insertion only rewires around the new vertices: most old rows keep their edges.
    assert np.mean(np.all(index.neighbours[:2500] == graph_before, axis=1)) > 0.5
    ids, _ = index.search(queries, k=10, budget=1500)
    truth, _ = _brute_force(vectors[:2700], queries, 10)
    assert _recall(ids, truth * 10 + 7) >= 0.97
    new_ids, _ = index.search(vectors[2500:2700], k=1, budget=800)
    assert np.mean(new_ids[:, 0] == np.arange(2500, 2700) * 10 + 7) >= 0.99  # the new points find themselves


@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_inner_product_and_cosine(metric, data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], metric=metric, max_degree=24)
    index.add(vectors)
    ids, distances = index.search(queries, k=5, budget=len(vectors))
    stored = vectors / np.linalg.norm(vectors, axis=1, keepdims=True) if metric == "cosine" else vectors
    asked = queries / np.linalg.norm(queries, axis=1, keepdims=True) if metric == "cosine" else queries
    truth, true_distances = _brute_force(stored, asked, 5, metric="ip")
    assert _recall(ids, truth) >= 0.99
    np.testing.assert_allclose(distances, true_distances, rtol=1e-4, atol=1e-3)


def test_same_seed_same_graph(data):
    vectors, _ = data
    graphs = []
    for _ in range(2):
        index = FanngIndex(vectors.shape[1], max_degree=16, seed=3)
        index.add(vectors[:1500])
        graphs.append(index.build().neighbours)
    np.testing.assert_array_equal(*graphs)


def test_save_load_round_trip_and_corruption(tmp_path, data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], max_degree=16, seed=2)
    index.add(vectors[:1000], ids=np.arange(1000) + 10**12)  # int64 ids survive
    path = index.save(tmp_path / "index.fanng")
    loaded = FanngIndex.load(path)
    assert len(loaded) == 1000 and loaded.metric == "l2" and loaded.max_degree == 16
    for a, b in zip(index.search(queries, k=10, budget=300), loaded.search(queries, k=10, budget=300)):
        np.testing.assert_array_equal(a, b)
    raw = path.read_bytes()
    (tmp_path / "truncated").write_bytes(raw[:-100])
    with pytest.raises(IndexFormatError, match="truncated"):
        FanngIndex.load(tmp_path / "truncated")
    flipped = bytearray(raw)
    flipped[-5000] ^= 0xFF
    (tmp_path / "corrupt").write_bytes(bytes(flipped))
    with pytest.raises(IndexFormatError, match="checksum"):
        FanngIndex.load(tmp_path / "corrupt")
    (tmp_path / "other").write_bytes(b"not an index at all")
    with pytest.raises(IndexFormatError, match="magic"):
        FanngIndex.load(tmp_path / "other")


def test_from_graph_continues_an_existing_graph(data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], max_degree=24, seed=1)
    index.add(vectors[:2500])
    index.build()
    copy = FanngIndex.from_graph(index.vectors, index.neighbours, index.entry, entry_points=index.entry_points, seed=1)
    for a, b in zip(index.search(queries, k=10), copy.search(queries, k=10)):
        np.testing.assert_array_equal(a, b)
    copy.add(vectors[2500:2600])  # inserted, like any later addition
    assert copy.is_built and len(copy) == 2600
    truth, _ = _brute_force(vectors[:2600], queries, 10)
    assert _recall(copy.search(queries, k=10, budget=1500)[0], truth) >= 0.97
    broken = index.neighbours.copy()
    broken[5, 0] = 2500
    with pytest.raises(ValueError, match="neighbour ids"):
        FanngIndex.from_graph(index.vectors, broken, index.entry)


def test_bad_input(data):
    vectors, _ = data
    index = FanngIndex(vectors.shape[1])
    with pytest.raises(ValueError, match="empty"):
        index.build()
    with pytest.raises(ValueError, match=r"\[rows, 24\]"):
        index.add(vectors[:, :10])
    bad = vectors[:10].copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        index.add(bad)
    index.add(vectors[:50])
    with pytest.raises(ValueError, match="k must be an integer in"):
        index.search(vectors[:2], k=51)
    with pytest.raises(ValueError, match="ef must be"):
        index.search(vectors[:2], k=5, ef=0)
    with pytest.raises(ValueError, match="metric"):
        FanngIndex(4, metric="hamming")
