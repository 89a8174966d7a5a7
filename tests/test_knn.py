"""KNNClassifier: the kernel formula against brute force in NumPy (every backend for the exact
search, TensorFlow for the FANNG op), overflow, zero vectors, bad input, new classes, saving."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import ops

import hybrid_keras as hk
from hybrid_keras.fanng import KNNClassifier

agnostic = pytest.mark.backend_agnostic


def _numpy(x):
    return ops.convert_to_numpy(x)


def _examples(rng, per_class=60, classes=4, dim=16):
    centres = rng.normal(size=(classes, dim)) * 2.5
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels, centres


def _kernel_reference(stored, labels, queries, k, sigma, classes, metric="l2"):
    """The talk's formula, brute force in float64: P(c|x) ~ sum over the k nearest of class c of
    exp(-d^2 / 2 sigma^2) (measured from the nearest, which cancels, so far queries stay finite)."""
    stored, queries = stored.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        stored = stored / np.linalg.norm(stored, axis=1, keepdims=True)
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = np.zeros((len(queries), classes))
    for row, query in enumerate(queries):
        squared = ((stored - query) ** 2).sum(1)
        nearest = np.argsort(squared, kind="stable")[:k]
        for i in nearest:
            out[row, labels[i]] += np.exp(-(squared[i] - squared[nearest[0]]) / (2 * sigma**2))
    return out / out.sum(1, keepdims=True)


def _traced(head, queries):
    """The head inside a model run by ``predict``: traced (tf.function, jax.jit) except under torch."""
    inputs = keras.Input((head.dim,))
    return keras.Model(inputs, head(inputs)).predict(queries, verbose=0)


@agnostic
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("k, capacity", [(7, None), (5, 1000), (300, None)], ids=["k7", "spare-capacity", "k-over-count"])
def test_exact_matches_brute_force(rng, metric, k, capacity):
    stored, labels, centres = _examples(rng)
    queries = (centres[rng.integers(0, 4, 30)] + 1.5 * rng.normal(size=(30, 16))).astype(np.float32)
    sigma = 0.3 if metric == "cosine" else 3.0
    head = KNNClassifier.from_examples(stored, labels, num_classes=5, k=k, sigma=sigma, metric=metric,
                                       capacity=capacity)
    expected = _kernel_reference(stored, labels, queries, k, sigma, 5, metric)
    np.testing.assert_allclose(_numpy(head(queries)), expected, atol=1e-5)
    np.testing.assert_allclose(_traced(head, queries), expected, atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_fanng_matches_brute_force(rng, metric):
    stored, labels, centres = _examples(rng)
    queries = (centres[rng.integers(0, 4, 30)] + 1.5 * rng.normal(size=(30, 16))).astype(np.float32)
    sigma = 0.3 if metric == "cosine" else 3.0
    head = KNNClassifier.from_examples(stored, labels, num_classes=5, k=7, sigma=sigma, backend="fanng",
                                       metric=metric, ef=0, budget=len(stored))  # exhaustive, so exact
    expected = _kernel_reference(stored, labels, queries, 7, sigma, 5, metric)
    np.testing.assert_allclose(_numpy(head(queries)), expected, atol=1e-5)


@agnostic
def test_far_queries_do_not_underflow(rng):
    stored, labels, _ = _examples(rng)
    head = KNNClassifier.from_examples(stored, labels, num_classes=4, k=5, sigma=0.1)
    far = np.full((2, 16), 1e3, np.float32)  # exp(-d^2 / 2 sigma^2) is 0 in float32 for every neighbour
    probabilities = _numpy(head(far))
    np.testing.assert_allclose(probabilities, _kernel_reference(stored, labels, far, 5, 0.1, 4), atol=1e-6)


@agnostic
@pytest.mark.parametrize("scale", [1e20, 1e-20, 1e36], ids=["1e20", "1e-20", "1e36"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_huge_and_tiny_embeddings_match_the_rescaled_problem(rng, scale, metric):
    """Scaling every embedding and sigma by the same factor leaves the probabilities unchanged;
    computed naively, 1e20 overflows |x|^2 (inf - inf = NaN) and 1e-20 underflows it to 0."""
    stored, labels, centres = _examples(rng)
    queries = (centres[rng.integers(0, 4, 30)] + 1.5 * rng.normal(size=(30, 16))).astype(np.float32)
    sigma = 0.3 if metric == "cosine" else 3.0
    head = KNNClassifier.from_examples(stored * np.float32(scale), labels, num_classes=4, k=7, metric=metric,
                                       sigma=sigma if metric == "cosine" else sigma * scale)
    expected = _kernel_reference(stored, labels, queries, 7, sigma, 4, metric)
    np.testing.assert_allclose(_numpy(head(queries * np.float32(scale))), expected, atol=1e-5)
    np.testing.assert_allclose(_traced(head, queries * np.float32(scale)), expected, atol=1e-5)


@agnostic
def test_a_huge_query_gives_finite_probabilities_and_leaves_its_batch_alone(rng):
    stored, labels, centres = _examples(rng)
    head = KNNClassifier.from_examples(stored, labels, num_classes=4, k=7, sigma=3.0)
    queries = (centres[rng.integers(0, 4, 6)] + rng.normal(size=(6, 16))).astype(np.float32)
    limit = np.finfo(np.float32).max
    huge = np.stack([np.full(16, 1e20), np.full(16, -limit), np.where(np.arange(16) % 2, 1e30, -1e30)]).astype(np.float32)
    probabilities = _numpy(head(np.concatenate([queries, huge])))
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities[:6], _numpy(head(queries)), atol=1e-6)
    # So far out, the nearest example is nearer than the next by far more than sigma and
    # takes every vote. Its rank by |x - e|^2 = |x|^2 - (2 x.e - |e|^2), in float64:
    closeness = 2 * huge.astype(np.float64) @ stored.T.astype(np.float64) - (stored.astype(np.float64) ** 2).sum(1)
    np.testing.assert_array_equal(probabilities[6:], np.eye(4)[labels[closeness.argmax(1)]])


def test_fanng_head_with_a_huge_query_gives_finite_probabilities(rng):
    stored, labels, _ = _examples(rng)
    head = KNNClassifier.from_examples(stored, labels, num_classes=4, k=7, sigma=3.0, backend="fanng")
    probabilities = _numpy(head(np.full((2, 16), 1e20, np.float32)))  # every squared distance is inf in float32
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)


@agnostic
def test_cosine_refuses_zero_vectors_like_the_index(rng):
    stored, labels, _ = _examples(rng)
    with_zero = stored.copy()
    with_zero[3] = 0
    with pytest.raises(ValueError, match=r"embeddings: cosine metric: zero vectors have no direction \(rows \[3\]\)"):
        KNNClassifier.from_examples(with_zero, labels, num_classes=4, metric="cosine")
    head = KNNClassifier.from_examples(stored, labels, num_classes=4, metric="cosine", capacity=300)
    with pytest.raises(ValueError, match="zero vectors have no direction"):
        head.add_examples(with_zero[:5], labels[:5])
    assert int(_numpy(head.count)) == len(stored)  # nothing was stored
    with pytest.raises(ValueError, match="input: cosine metric: zero vectors have no direction"):
        head(np.zeros((1, 16), np.float32))
    # Traced, a call cannot raise on values: a query without direction gets no class preference.
    queries = np.concatenate([stored[:2], np.zeros((1, 16), np.float32)])
    if keras.backend.backend() == "torch":  # predict runs eagerly under torch, so it refuses
        with pytest.raises(ValueError, match="zero vectors"):
            _traced(head, queries)
    else:
        probabilities = _traced(head, queries)
        np.testing.assert_allclose(probabilities[2], np.full(4, 0.25), atol=1e-7)
        np.testing.assert_allclose(probabilities[:2], _numpy(head(stored[:2])), atol=1e-6)


def test_fanng_index_refuses_zero_vectors_too(rng):
    from hybrid_keras.fanng import FanngIndex

    index = FanngIndex(16, "cosine", verbose=False)
    with pytest.raises(ValueError, match="zero vectors have no direction"):
        index.add(np.zeros((2, 16), np.float32))
    index.add(rng.normal(size=(50, 16)).astype(np.float32))
    with pytest.raises(ValueError, match="zero vectors have no direction"):
        index.search(np.zeros((1, 16), np.float32), k=3)


@agnostic
def test_empty_examples_are_refused_with_the_argument_named(rng):
    stored, labels, _ = _examples(rng)
    head = KNNClassifier.from_examples(stored, labels, num_classes=4)
    with pytest.raises(ValueError, match=r"embeddings must hold at least one example \[examples, 16\], got shape \(0, 16\)"):
        head.add_examples(np.zeros((0, 16), np.float32), np.zeros(0, np.int64))
    with pytest.raises(ValueError, match="embeddings must hold at least one example"):
        head.add_examples([], [])
    with pytest.raises(ValueError, match="embeddings must hold at least one example"):
        KNNClassifier.from_examples(np.zeros((0, 16), np.float32), np.zeros(0, np.int64), num_classes=4)
    with pytest.raises(ValueError, match="labels must have one entry per embedding: 2 embeddings but 0 labels"):
        head.add_examples(stored[:2], np.zeros(0, np.int64))
    assert int(_numpy(head.count)) == len(stored)


@agnostic
def test_an_empty_head(rng):
    stored, _, _ = _examples(rng)
    empty = KNNClassifier(4, 16, 10)
    with pytest.raises(ValueError, match="holds no examples: call add_examples first"):
        empty(stored[:2])
    if keras.backend.backend() != "torch":  # traced: no evidence, uniform probabilities
        np.testing.assert_allclose(_traced(empty, stored[:2]), np.full((2, 4), 0.25))


@agnostic
def test_nan_queries(rng):
    stored, labels, _ = _examples(rng)
    head = KNNClassifier.from_examples(stored, labels, num_classes=4)
    bad = stored[:3].copy()
    bad[1, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        head(bad)
    if keras.backend.backend() != "torch":  # traced: the bad row is NaN, the others are unaffected
        probabilities = _traced(head, bad)
        assert np.all(np.isnan(probabilities[1]))
        np.testing.assert_allclose(probabilities[[0, 2]], _numpy(head(stored[[0, 2]])), atol=1e-6)


@agnostic
def test_a_new_class_is_added_by_examples(rng):
    _new_class_by_examples("exact", rng)


def test_a_new_class_is_added_by_examples_fanng(rng):
    _new_class_by_examples("fanng", rng)


def _new_class_by_examples(backend, rng):
    stored, labels, centres = _examples(rng, classes=5)
    known = labels < 4
    head = KNNClassifier.from_examples(stored[known], labels[known], num_classes=5, k=5, sigma=2.0, backend=backend,
                                       capacity=len(stored))
    new_class = (centres[4] + rng.normal(size=(20, 16))).astype(np.float32)
    inputs = keras.Input((16,))
    model = keras.Model(inputs, head(inputs))
    assert np.all(model.predict(new_class, verbose=0).argmax(1) != 4)
    head.add_examples(stored[~known], labels[~known])
    # The same (already traced) predict function sees the new examples.
    assert np.mean(model.predict(new_class, verbose=0).argmax(1) == 4) >= 0.95
    assert np.mean(_numpy(head(new_class)).argmax(1) == 4) >= 0.95
    with pytest.raises(ValueError, match="at most"):
        head.add_examples(stored[:1], labels[:1])


def test_fanng_head_inserts_a_few_examples_and_rebuilds_for_many(rng):
    stored, labels, centres = _examples(rng, per_class=100)
    head = KNNClassifier.from_examples(stored[:300], labels[:300], num_classes=4, k=5, sigma=2.0, backend="fanng",
                                       capacity=len(stored), ef=0, budget=len(stored))  # exhaustive: exact
    exact = KNNClassifier.from_examples(stored[:300], labels[:300], num_classes=4, k=5, sigma=2.0, capacity=len(stored))
    before = _numpy(head.neighbours)[:300].copy()
    head.add_examples(stored[300:330], labels[300:330])  # 10%: linked into the existing graph
    exact.add_examples(stored[300:330], labels[300:330])
    assert np.mean(np.all(_numpy(head.neighbours)[:300] == before, axis=1)) > 0.5
    queries = (centres[rng.integers(0, 4, 50)] + rng.normal(size=(50, 16))).astype(np.float32)
    # Every stored example stays reachable, so the exhaustive search equals brute force.
    np.testing.assert_allclose(_numpy(head(queries)), _numpy(exact(queries)), atol=1e-5)
    head.add_examples(stored[330:], labels[330:])  # 70 more, over a quarter: the graph is rebuilt
    exact.add_examples(stored[330:], labels[330:])
    np.testing.assert_allclose(_numpy(head(queries)), _numpy(exact(queries)), atol=1e-5)


def _keras_file_round_trip(tmp_path, backend, rng):
    stored, labels, _ = _examples(rng)
    inputs = keras.Input((16,))
    head = KNNClassifier.from_examples(stored, labels, num_classes=4, k=5, sigma=2.0, backend=backend)
    model = keras.Model(inputs, head(inputs))
    model.save(tmp_path / "knn.keras")
    loaded = keras.models.load_model(tmp_path / "knn.keras")
    np.testing.assert_array_equal(_numpy(loaded(stored[:20])), _numpy(model(stored[:20])))
    assert int(_numpy(loaded.layers[-1].count)) == len(stored)
    assert loaded.layers[-1].get_config() == head.get_config()


@agnostic
def test_keras_file_round_trip(tmp_path, rng):
    _keras_file_round_trip(tmp_path, "exact", rng)


def test_keras_file_round_trip_fanng(tmp_path, rng):
    _keras_file_round_trip(tmp_path, "fanng", rng)


def _embedding_model(rng):
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="embedder")


@pytest.mark.parametrize("backend", ["exact", "fanng"])
def test_saved_model_round_trip_in_a_fresh_process(tmp_path, backend, rng):
    embedder = _embedding_model(rng)
    images = rng.normal(size=(60, 8, 8, 3)).astype(np.float32)
    labels = np.arange(60) % 3
    head = KNNClassifier.from_examples(embedder.predict(images, verbose=0), labels, num_classes=3, k=4, sigma=0.5,
                                       backend=backend)
    model = keras.Model(embedder.input, head(embedder.output))
    path = hk.export_saved_model(model, tmp_path / "knn" / "1", preprocessing="none")  # verifies in a fresh process
    assert hk.export.uses_custom_ops(path) == (backend == "fanng")
    np.save(tmp_path / "images.npy", images[:5])
    load = ("import tensorflow as tf; from hybrid_keras.fanng.ops import library_path; "
            "tf.load_op_library(str(library_path()))" if backend == "fanng" else "import tensorflow as tf")
    script = (f"{load}; import numpy as np; m = tf.saved_model.load({str(path)!r}); "
              f"x = np.load({str(tmp_path / 'images.npy')!r}); "
              f"out = m.signatures['serving_default'](images=tf.constant(x)); "
              f"np.save({str(tmp_path / 'served.npy')!r}, list(out.values())[0].numpy())")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), _numpy(model(images[:5])), atol=1e-5)


@agnostic
def test_bad_arguments(rng):
    stored, labels, _ = _examples(rng)
    with pytest.raises(ValueError, match="backend must be one of"):
        KNNClassifier(3, 16, 10, backend="annoy")
    with pytest.raises(ValueError, match="sigma must be positive and finite, got inf"):
        KNNClassifier(3, 16, 10, sigma=float("inf"))
    with pytest.raises(ValueError, match="capacity must be >= 1, got 0"):
        KNNClassifier(3, 16, 0)
    head = KNNClassifier.from_examples(stored, labels, num_classes=4)
    with pytest.raises(ValueError, match="16-D embeddings but the input has 5"):
        head(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 4\)"):
        head.add_examples(stored[:2], [0, 9])
    with pytest.raises(ValueError, match=r"labels must be integers in \[0, 4\), got dtype float"):
        head.add_examples(stored[:2], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"embeddings must be \[examples, 16\], got shape \(2, 5\)"):
        head.add_examples(np.zeros((2, 5), np.float32), [0, 1])
    with pytest.raises(ValueError, match="embeddings must be numeric"):
        head.add_examples([["a"] * 16], [0])
    with pytest.raises(ValueError, match="embeddings contain NaN or infinite values"):
        head.add_examples(np.full((1, 16), np.inf, np.float32), [0])


@agnostic
def test_fanng_backend_needs_tensorflow():
    if keras.backend.backend() == "tensorflow":
        assert KNNClassifier(3, 16, 10, backend="fanng").backend == "fanng"
    else:
        with pytest.raises(ValueError, match="backend='fanng' runs the FANNG TensorFlow op and needs "
                                             "KERAS_BACKEND=tensorflow"):
            KNNClassifier(3, 16, 10, backend="fanng")


@agnostic
def test_zoo_embed_gives_unit_vectors(rng):
    import zoo

    embedder = zoo.embed("mobilenet_v2", alpha=0.35, input_shape=(32, 32, 3))
    vectors = embedder.predict(rng.uniform(0, 255, size=(3, 32, 32, 3)).astype(np.float32), verbose=0)
    assert vectors.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
