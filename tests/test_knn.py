"""KNNClassifier: the kernel formula against NumPy, both backends, new classes, saving."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import hybrid_keras as hk
from hybrid_keras.fanng import KNNClassifier


def _examples(rng, per_class=60, classes=4, dim=16):
    centres = rng.normal(size=(classes, dim)) * 2.5
    labels = np.repeat(np.arange(classes), per_class)
    return (centres[labels] + rng.normal(size=(len(labels), dim))).astype(np.float32), labels, centres


def _kernel_reference(stored, labels, queries, k, sigma, classes):
    """The talk's formula, brute force: P(c|x) ~ sum over the k nearest of class c of exp(-d^2 / 2 sigma^2)."""
    out = np.zeros((len(queries), classes))
    for row, query in enumerate(queries.astype(np.float64)):
        squared = ((stored - query) ** 2).sum(1)
        nearest = np.argsort(squared, kind="stable")[:k]
        for i in nearest:
            out[row, labels[i]] += np.exp(-squared[i] / (2 * sigma**2))
    return out / out.sum(1, keepdims=True)


@pytest.mark.parametrize("backend", ["exact", "fanng"])
def test_kernel_matches_numpy(backend, rng):
    stored, labels, centres = _examples(rng)
    queries = (centres[rng.integers(0, 4, 30)] + 1.5 * rng.normal(size=(30, 16))).astype(np.float32)
    head = KNNClassifier.from_examples(stored, labels, num_classes=5, k=7, sigma=3.0, backend=backend,
                                       ef=0, budget=len(stored))  # exhaustive, so exact
    expected = _kernel_reference(stored, labels, queries, 7, 3.0, 5)
    np.testing.assert_allclose(head(queries).numpy(), expected, atol=1e-5)


def test_far_queries_do_not_underflow(rng):
    stored, labels, _ = _examples(rng)
    head = KNNClassifier.from_examples(stored, labels, num_classes=4, k=5, sigma=0.1)
    far = np.full((2, 16), 1e3, np.float32)  # exp(-d^2 / 2 sigma^2) is 0 in float32 for every neighbour
    probabilities = head(far).numpy()
    assert np.all(np.isfinite(probabilities))
    np.testing.assert_allclose(probabilities.sum(1), 1.0, atol=1e-6)


@pytest.mark.parametrize("backend", ["exact", "fanng"])
def test_a_new_class_is_added_by_examples(backend, rng):
    stored, labels, centres = _examples(rng, classes=5)
    known = labels < 4
    head = KNNClassifier.from_examples(stored[known], labels[known], num_classes=5, k=5, sigma=2.0, backend=backend,
                                       capacity=len(stored))
    new_class = (centres[4] + rng.normal(size=(20, 16))).astype(np.float32)
    assert np.all(head(new_class).numpy().argmax(1) != 4)
    head.add_examples(stored[~known], labels[~known])
    assert np.mean(head(new_class).numpy().argmax(1) == 4) >= 0.95
    with pytest.raises(ValueError, match="at most"):
        head.add_examples(stored[:1], labels[:1])


def test_fanng_head_inserts_a_few_examples_and_rebuilds_for_many(rng):
    stored, labels, centres = _examples(rng, per_class=100)
    head = KNNClassifier.from_examples(stored[:300], labels[:300], num_classes=4, k=5, sigma=2.0, backend="fanng",
                                       capacity=len(stored), ef=0, budget=len(stored))  # exhaustive: exact
    exact = KNNClassifier.from_examples(stored[:300], labels[:300], num_classes=4, k=5, sigma=2.0, capacity=len(stored))
    before = head.neighbours.numpy()[:300].copy()
    head.add_examples(stored[300:330], labels[300:330])  # 10%: linked into the existing graph
    exact.add_examples(stored[300:330], labels[300:330])
    assert np.mean(np.all(head.neighbours.numpy()[:300] == before, axis=1)) > 0.5
    queries = (centres[rng.integers(0, 4, 50)] + rng.normal(size=(50, 16))).astype(np.float32)
    # Every stored example stays reachable, so the exhaustive search equals brute force.
    np.testing.assert_allclose(head(queries).numpy(), exact(queries).numpy(), atol=1e-5)
    head.add_examples(stored[330:], labels[330:])  # 70 more, over a quarter: the graph is rebuilt
    exact.add_examples(stored[330:], labels[330:])
    np.testing.assert_allclose(head(queries).numpy(), exact(queries).numpy(), atol=1e-5)


@pytest.mark.parametrize("backend", ["exact", "fanng"])
def test_keras_file_round_trip(tmp_path, backend, rng):
    stored, labels, _ = _examples(rng)
    inputs = keras.Input((16,))
    head = KNNClassifier.from_examples(stored, labels, num_classes=4, k=5, sigma=2.0, backend=backend)
    model = keras.Model(inputs, head(inputs))
    model.save(tmp_path / "knn.keras")
    loaded = keras.models.load_model(tmp_path / "knn.keras")
    np.testing.assert_array_equal(loaded(stored[:20]).numpy(), model(stored[:20]).numpy())
    assert int(loaded.layers[-1].count.numpy()) == len(stored)


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
    np.testing.assert_allclose(np.load(tmp_path / "served.npy"), model(images[:5]).numpy(), atol=1e-5)


def test_bad_input(rng):
    stored, labels, _ = _examples(rng)
    with pytest.raises(ValueError, match="backend"):
        KNNClassifier(3, 16, 10, backend="annoy")
    head = KNNClassifier.from_examples(stored, labels, num_classes=4)
    with pytest.raises(ValueError, match="16-D embeddings but the input has 5"):
        head(np.zeros((2, 5), np.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or infinite"):
        head(np.full((1, 16), np.nan, np.float32))
    with pytest.raises(ValueError, match="labels must be integers"):
        head.add_examples(stored[:2], [0, 9])
    empty = KNNClassifier(4, 16, 10)
    with pytest.raises(tf.errors.InvalidArgumentError, match="no examples"):
        empty(stored[:2])


def test_zoo_embed_gives_unit_vectors(rng):
    import zoo

    embedder = zoo.embed("mobilenet_v2", alpha=0.35, input_shape=(32, 32, 3))
    vectors = embedder(rng.normal(size=(3, 32, 32, 3)).astype(np.float32)).numpy()
    assert vectors.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.preprocessing == "tf"
