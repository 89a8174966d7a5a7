"""The README tour end to end: a zoo backbone takes raw pixels, a forest head goes on its
pooled features, ``attach`` joins them, and the export serves raw uint8 images in a
process that imports only TensorFlow, before and after a ``.keras`` round trip."""

import subprocess
import sys
import textwrap

import keras
import numpy as np

import hybrid_keras as hk
import zoo
from hybrid_keras.layers import Preprocessing, find_preprocessing

SERVE = textwrap.dedent(
    """
    import sys, numpy as np, tensorflow as tf
    images = np.load(sys.argv[1])
    for index, path in enumerate(sys.argv[3:]):
        served = tf.saved_model.load(path).signatures["serve_uint8"]
        outputs = served(images=tf.constant(images))
        np.save(sys.argv[2] + str(index) + ".npy", list(outputs.values())[0].numpy())
    print(sorted({name.split(".")[0] for name in sys.modules} & {"hybrid_keras", "zoo"}))
    """
)


def _serve_in_fresh_process(paths, images, tmp_path):
    """Each SavedModel's serve_uint8 outputs, from one process that imports only TensorFlow."""
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run([sys.executable, "-c", SERVE, str(tmp_path / "images.npy"), str(tmp_path / "served"),
                             *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]"  # nothing of this project was needed to serve them
    return [np.load(tmp_path / f"served{index}.npy") for index in range(len(paths))]


def test_tour_backbone_forest_attach_export_serves_raw_pixels(tmp_path):
    from hybrid_keras.forest import ForestLayer, attach, extract_features, train_forest

    rng = np.random.default_rng(0)
    # Three classes a forest can tell apart from pooled features: dark, mid and bright images.
    labels = np.repeat(np.arange(3), 16)
    images = np.clip(rng.normal(60 + 70 * labels[:, None, None, None], 20, (48, 32, 32, 3)), 0, 255).astype(np.uint8)

    model = zoo.load("mobilenet_v2", alpha=0.35, input_shape=(32, 32, 3), classes=3)
    assert isinstance(model.layers[1], Preprocessing) and model.layers[1].mode == "tf"
    features = keras.Model(model.input, model.get_layer("global_average_pooling2d").output)
    assert find_preprocessing(features) is not None  # slicing a feature model keeps it
    x, y = extract_features(features, (images, labels), verbose=0)
    head = ForestLayer.from_model(train_forest(x, y, num_trees=10, max_depth=6, verbose=0), mode="log_sum")
    classifier = attach(features, head)
    expected = keras.ops.convert_to_numpy(classifier(images))
    np.testing.assert_allclose(expected, keras.ops.convert_to_numpy(head(x)), atol=1e-5)

    # The test serves both exports itself in one fresh process, so the export's own check is skipped.
    first = hk.export_saved_model(classifier, tmp_path / "tour" / "1", verify=False)

    classifier.save(tmp_path / "tour.keras")
    again = keras.models.load_model(tmp_path / "tour.keras")
    assert find_preprocessing(again).get_config() == find_preprocessing(classifier).get_config()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(again(images)), expected, atol=1e-5)
    second = hk.export_saved_model(again, tmp_path / "tour" / "2", verify=False)
    for served in _serve_in_fresh_process([first, second], images, tmp_path):
        np.testing.assert_allclose(served, expected, atol=1e-5)


def test_embedder_keeps_the_backbone_preprocessing():
    embedder = zoo.embed("vgg11", input_shape=(32, 32, 3))
    layer = find_preprocessing(embedder)
    assert layer is not None and layer.mode == "torch"
    pixels = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    vectors = keras.ops.convert_to_numpy(embedder(pixels))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_demo_quick_runs_end_to_end(tmp_path):
    """``hybrid-keras demo --quick``: data through TFDS, three heads, export verified in a fresh process."""
    from hybrid_keras.demo import run_demo

    results = run_demo(out_dir=str(tmp_path / "demo"), quick=True)
    assert (tmp_path / "demo" / "1" / "saved_model.pb").exists()
    # Well above chance (1/9) for every head on the held-out digits, even after a short run (about 0.8).
    for head in ("softmax", "forest", "knn"):
        assert results[f"{head}_test_accuracy"] > 0.5, (head, results)
