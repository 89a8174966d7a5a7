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


# ------------------------------------------------------------------ storage types and entry points
def test_compact_storage_round_trips_within_quantisation_error(data):
    vectors, queries = data
    half = FanngIndex(vectors.shape[1], storage="float16", max_degree=16)
    half.add(vectors[:1000])
    assert half.vectors.dtype == np.float16 and half.vectors.nbytes == vectors[:1000].nbytes // 2
    # float16 keeps 11 significant bits: relative error at most 2^-11 (plus subnormals near 0).
    np.testing.assert_allclose(half.decoded_vectors(), vectors[:1000], rtol=2**-11, atol=2**-24)

    codes = FanngIndex(vectors.shape[1], storage="uint8", max_degree=16)
    codes.add(vectors[:1000])
    assert codes.vectors.dtype == np.uint8 and codes.vectors.nbytes == vectors[:1000].nbytes // 4
    low, high = vectors[:1000].min(), vectors[:1000].max()
    assert codes.offset == pytest.approx(low) and codes.scale == pytest.approx((high - low) / 255)
    assert np.abs(codes.decoded_vectors() - vectors[:1000]).max() <= codes.scale / 2 * (1 + 1e-4)


def test_uint8_of_byte_data_is_lossless_and_ranges_clip():
    rng = np.random.default_rng(3)
    sift_like = rng.integers(0, 200, size=(400, 16)).astype(np.float32)
    index = FanngIndex(16, storage="uint8", max_degree=8)
    index.add(sift_like)
    assert (index.scale, index.offset) == (1.0, 0.0)
    np.testing.assert_array_equal(index.decoded_vectors(), sift_like)
    index.add(np.full((1, 16), 300.0, np.float32))  # beyond the range fixed by the first addition
    np.testing.assert_array_equal(index.vectors[-1], 255)
    fixed = FanngIndex(16, storage="uint8", value_range=(-1.0, 1.0))
    fixed.add(np.array([[-1.0] * 8 + [1.0] * 8], np.float32))
    np.testing.assert_array_equal(fixed.vectors[0], [0] * 8 + [255] * 8)


@pytest.mark.parametrize("storage", ["float16", "uint8"])
def test_compact_storage_distances_equal_numpy_on_dequantised_vectors(storage, data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], storage=storage, max_degree=24, seed=1)
    index.add(vectors)
    stored = index.decoded_vectors()
    ids, distances = index.search(queries, k=10, budget=len(vectors))  # exhaustive: exact over the stored values
    truth, true_distances = _brute_force(stored.astype(np.float64), queries.astype(np.float64), 10)
    np.testing.assert_allclose(distances, true_distances, rtol=1e-5, atol=1e-3)
    assert _recall(ids, truth) >= 0.99  # exact up to ties
    # And the quantised index still finds the float32 neighbours.
    float_truth, _ = _brute_force(vectors, queries, 10)
    assert _recall(index.search(queries, k=10, ef=300)[0], float_truth) >= (0.97 if storage == "uint8" else 0.99)


@pytest.mark.parametrize("entry_points", [1, 8, 64])
def test_entry_point_search_is_exact_when_ef_covers_everything(entry_points, data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], max_degree=16, seed=2, entry_points=entry_points)
    index.add(vectors[:1500])
    index.build()
    assert len(index.entry_points) == entry_points and index.entry_points[0] == index.entry
    assert len(set(index.entry_points.tolist())) >= entry_points * 3 // 4  # distinct centroids
    ids, distances = index.search(queries, k=10, ef=1500)
    truth, true_distances = _brute_force(vectors[:1500], queries, 10)
    np.testing.assert_array_equal(ids, truth)
    np.testing.assert_allclose(distances, true_distances, rtol=1e-4, atol=1e-3)


def test_bad_storage_options():
    with pytest.raises(ValueError, match="storage must be one of"):
        FanngIndex(4, storage="int4")
    with pytest.raises(ValueError, match="uint8.*l2.* only"):
        FanngIndex(4, metric="cosine", storage="uint8")
    with pytest.raises(ValueError, match="value_range"):
        FanngIndex(4, storage="uint8", value_range=(1.0, 1.0))
    with pytest.raises(ValueError, match="float16 range"):
        FanngIndex(4, storage="float16").add(np.full((2, 4), 1e5, np.float32))
    with pytest.raises(ValueError, match=r"max_degree must be in \[1, 256\]"):
        FanngIndex(4, max_degree=1024)
    with pytest.raises(ValueError, match="seed"):
        FanngIndex(4, seed=2**64)
    with pytest.raises(TypeError, match="seed"):
        FanngIndex(4, seed=1.5)
    with pytest.raises(ValueError, match="entry_points"):
        FanngIndex(4, entry_points=0)


# ------------------------------------------------------------------ insertion
def test_insertion_matches_a_rebuild_and_links_a_new_cluster():
    rng = np.random.default_rng(11)
    vectors = _clustered(rng, 4000, clusters=30)
    new_cluster = (rng.normal(size=(1, 24)) * 3 + 25 + rng.normal(size=(300, 24))).astype(np.float32)
    queries = np.concatenate([_clustered(rng, 100, clusters=30), new_cluster[:50] + 0.1])
    inserted = FanngIndex(24, max_degree=16, seed=1)
    inserted.add(vectors[:3500])
    inserted.build()
    inserted.add(vectors[3500:])  # 14%: inserted
    inserted.add(new_cluster)  # a tight new cluster, all in one call (as a new class of examples)
    assert inserted._built_rows == 4300
    rebuilt = FanngIndex(24, max_degree=16, seed=1)
    rebuilt.add(np.concatenate([vectors, new_cluster]))
    truth, _ = _brute_force(np.concatenate([vectors, new_cluster]), queries, 10)
    for ef in (16, 64):
        got, want = (_recall(index.search(queries, k=10, ef=ef)[0], truth) for index in (inserted, rebuilt))
        assert got >= want - 0.03, (ef, got, want)  # the stated margin: 3 points of recall@10
    assert _recall(inserted.search(queries[100:], k=10, ef=64)[0], truth[100:]) >= 0.95


def test_add_of_nothing_is_a_no_op(data):
    vectors, _ = data
    index = FanngIndex(vectors.shape[1])
    index.add(vectors[:100])
    index.build()
    graph = index.neighbours.copy()
    index.add(np.zeros((0, vectors.shape[1]), np.float32))
    assert len(index) == 100
    np.testing.assert_array_equal(index.neighbours, graph)
    with pytest.raises(TypeError, match="ids must be integers"):
        index.add(vectors[:2], ids=[1.5, 2.5])


def test_searches_during_rebuilding_additions_stay_consistent(data):
    """A search sees one state of the index: its ids are real and its distances are those
    of the vectors behind the ids (a graph paired with another state's entry points or ids
    would break this)."""
    import threading

    vectors, queries = data
    index = FanngIndex(vectors.shape[1], max_degree=8, seed=1, entry_points=4)
    index.add(vectors[:200], ids=np.arange(200) + 5000)
    index.build()
    errors = []

    def writer():
        for start in range(200, 3000, 400):  # each addition is a rebuild-sized one
            index.add(vectors[start: start + 400], ids=np.arange(start, start + 400) + 5000)

    def reader():
        for _ in range(15):
            ids, distances = index.search(queries[:20], k=5, ef=16)
            rows = ids - 5000
            if np.any(rows < 0) or np.any(rows >= 3000):
                errors.append("an id that was never added")
                return
            expected = ((queries[:20, None, :] - vectors[rows]) ** 2).sum(-1)
            if not np.allclose(distances, expected, rtol=1e-4, atol=1e-3):
                errors.append("distances that do not belong to the returned ids")
                return

    threads = [threading.Thread(target=writer), threading.Thread(target=reader), threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


# ------------------------------------------------------------------ the file format
def _resign(path, change):
    """Rewrite a format-2 file's header with ``change(header)`` applied and a matching
    checksum: what a careless tool (or an attacker) could produce."""
    import hashlib
    import json

    raw = path.read_bytes()
    magic, header_line, _digest, payload = raw.split(b"\n", 3)
    header = json.loads(header_line)
    change(header)
    line = json.dumps(header).encode() + b"\n"
    path.write_bytes(magic + b"\n" + line + hashlib.sha256(line + payload).hexdigest().encode() + b"\n" + payload)


def _write_version_1(index, path):
    """The format-1 file of an index (as the previous release wrote it)."""
    import hashlib
    import json

    payload = b"".join(np.ascontiguousarray(a).tobytes() for a in (index.vectors, index.neighbours, index.ids))
    header = {"format_version": 1, "dim": index.dim, "metric": index.metric, "max_degree": index.max_degree,
              "seed": index.seed, "candidates": index.candidates, "refine_iterations": index.refine_iterations,
              "size": len(index), "entry": index.entry, "payload_bytes": len(payload),
              "sha256": hashlib.sha256(payload).hexdigest()}
    path.write_bytes(b"HKFANNG\n" + json.dumps(header).encode() + b"\n" + payload)
    return header


@pytest.fixture(scope="module")
def small_index(data):
    vectors, _ = data
    index = FanngIndex(vectors.shape[1], max_degree=8, seed=2, entry_points=4)
    index.add(vectors[:300], ids=np.arange(300) * 3)
    return index.build()


@pytest.mark.parametrize("storage", ["float32", "float16", "uint8"])
def test_every_storage_saves_and_loads(storage, tmp_path, data):
    vectors, queries = data
    index = FanngIndex(vectors.shape[1], max_degree=8, storage=storage, entry_points=4)
    index.add(vectors[:300])
    loaded = FanngIndex.load(index.save(tmp_path / "index.fanng"))
    assert (loaded.storage, loaded.scale, loaded.offset) == (storage, index.scale, index.offset)
    np.testing.assert_array_equal(loaded.entry_points, index.entry_points)
    for a, b in zip(index.search(queries, k=5), loaded.search(queries, k=5)):
        np.testing.assert_array_equal(a, b)


HEADER_FIELDS = ["format_version", "dim", "metric", "storage", "scale", "offset", "max_degree", "seed", "candidates",
                 "refine_iterations", "size", "entry", "entry_points", "payload_bytes"]


@pytest.mark.parametrize("field", HEADER_FIELDS)
def test_every_header_field_is_checked(field, small_index, tmp_path):
    path = small_index.save(tmp_path / "index.fanng")
    raw = path.read_bytes()
    header_line = raw.split(b"\n")[1]
    import json

    header = json.loads(header_line)
    assert set(header) == set(HEADER_FIELDS)
    # Any edit without a new checksum is caught by the checksum.
    edited = dict(header, **{field: "x"})
    path.write_bytes(raw.replace(header_line, json.dumps(edited).encode(), 1))
    with pytest.raises(IndexFormatError):
        FanngIndex.load(path)
    # With a matching checksum, a missing field, a wrong type or a value that disagrees
    # with the arrays is still an IndexFormatError, never KeyError / TypeError / wrong results.
    wrong_values = {"format_version": 3, "dim": 23, "metric": "ip", "storage": "float16", "scale": 0.0, "offset": None,
                    "max_degree": 7, "seed": 1.5, "candidates": "many", "refine_iterations": -1, "size": 299,
                    "entry": 300, "entry_points": 3, "payload_bytes": -1}
    for change in (lambda h: h.pop(field), lambda h: h.__setitem__(field, [1]),
                   lambda h: h.__setitem__(field, wrong_values[field])):
        path.write_bytes(raw)
        _resign(path, change)
        try:
            loaded = FanngIndex.load(path)
        except IndexFormatError:
            continue
        # Only a field that the arrays cannot contradict may change and still load (the
        # metric between l2 and ip, the seed and build options for later builds):
        # the loaded index must then still be a sound one over the same arrays.
        assert field in ("metric", "seed", "candidates", "refine_iterations"), field
        np.testing.assert_array_equal(loaded.neighbours, small_index.neighbours)


def test_header_edits_that_once_returned_wrong_ids_are_refused(small_index, tmp_path):
    path = small_index.save(tmp_path / "index.fanng")
    raw = path.read_bytes()
    for change, message in [(lambda h: h.__setitem__("max_degree", 7), "payload bytes"),
                            (lambda h: h.__setitem__("size", 299), "payload bytes"),
                            (lambda h: h.__setitem__("metric", "cosine"), "unit length"),
                            (lambda h: h.__setitem__("format_version", 7), "format version 7"),
                            (lambda h: h.__setitem__("entry", 5), "entry")]:
        path.write_bytes(raw)
        _resign(path, change)
        with pytest.raises(IndexFormatError, match=message):
            FanngIndex.load(path)
    path.write_bytes(raw)
    header_line = raw.split(b"\n")[1]
    path.write_bytes(raw.replace(header_line, header_line.replace(b'"max_degree": 8', b'"max_degree": 7'), 1))
    with pytest.raises(IndexFormatError, match="checksum"):
        FanngIndex.load(path)


def test_format_1_files_still_load_with_cross_checks(small_index, tmp_path, data):
    vectors, queries = data
    single = FanngIndex.from_graph(small_index.vectors, small_index.neighbours, small_index.entry,
                                   ids=small_index.ids, seed=2)
    header = _write_version_1(single, tmp_path / "v1.fanng")
    loaded = FanngIndex.load(tmp_path / "v1.fanng")
    np.testing.assert_array_equal(loaded.entry_points, [small_index.entry])
    for a, b in zip(single.search(queries, k=5), loaded.search(queries, k=5)):
        np.testing.assert_array_equal(a, b)
    loaded.save(tmp_path / "v2.fanng")  # re-saving upgrades to the current format
    assert FanngIndex.load(tmp_path / "v2.fanng").entry == small_index.entry
    # Format 1 kept the header outside the checksum; the cross-checks catch what it let through.
    import json

    raw = (tmp_path / "v1.fanng").read_bytes()
    line = raw.split(b"\n")[1]
    for field, value, message in [("max_degree", 7, "payload bytes"), ("size", 1000, "payload bytes"),
                                  ("entry", 300, "out of range"), ("metric", "cosine", "unit length"),
                                  ("dim", "24", "must be int")]:
        (tmp_path / "bad.fanng").write_bytes(raw.replace(line, json.dumps(dict(header, **{field: value})).encode(), 1))
        with pytest.raises(IndexFormatError, match=message):
            FanngIndex.load(tmp_path / "bad.fanng")
    for missing in header:
        (tmp_path / "bad.fanng").write_bytes(
            raw.replace(line, json.dumps({k: v for k, v in header.items() if k != missing}).encode(), 1))
        with pytest.raises(IndexFormatError):
            FanngIndex.load(tmp_path / "bad.fanng")


def test_corrupted_files_only_raise_index_format_error(small_index, tmp_path):
    path = small_index.save(tmp_path / "index.fanng")
    raw = path.read_bytes()
    rng = np.random.default_rng(5)
    for trial in range(120):
        mutated = bytearray(raw)
        kind = trial % 3
        if kind == 0:  # flip bits anywhere
            for position in rng.integers(0, len(raw), size=rng.integers(1, 4)):
                mutated[position] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:  # truncate
            mutated = mutated[: int(rng.integers(0, len(raw)))]
        else:  # garbage in the header line
            end = raw.index(b"\n", 8)
            position = int(rng.integers(8, end))
            mutated[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(mutated))
        try:
            FanngIndex.load(path)
        except IndexFormatError:
            pass


def test_progress_goes_to_a_log_as_lines(monkeypatch, capsys, data):
    from hybrid_keras.fanng import index as index_module

    vectors, _ = data
    monkeypatch.setattr(index_module, "PROGRESS_THRESHOLD", 100)
    monkeypatch.setattr(index_module, "PROGRESS_INTERVAL_S", 0.02)
    index = FanngIndex(vectors.shape[1], max_degree=16)
    index.add(vectors)
    index.build()
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("[fanng] built a graph over 3,000 vectors")
    assert all(line.startswith("[fanng] ") for line in lines)
