"""Segmentation models in a SavedModel: a uint8 class map and class probabilities per pixel, for
images of any size the model takes, checked in a fresh TensorFlow-only process (the export
raises when the served outputs differ from the Keras model) and here against NumPy."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import hybrid_keras as hk
import zoo
from hybrid_keras.export import segmentation_classes
from hybrid_keras.forest import ForestLayer
from hybrid_keras.forest.residual import grow_random_forest
from zoo.architectures.fcn import forest_head, hypercolumn

SMALL_MOBILENET = dict(backbone="mobilenet_v2", alpha=0.35)


def _serve(path, images):
    """The serve_uint8 signature's outputs, from a process that imports only TensorFlow."""
    script = textwrap.dedent("""
        import sys, numpy as np, tensorflow as tf
        served = tf.saved_model.load(sys.argv[1]).signatures["serve_uint8"](images=tf.constant(np.load(sys.argv[2])))
        np.savez(sys.argv[3], **{name: value.numpy() for name, value in served.items()})
    """)
    folder = path.parent
    np.save(folder / "images.npy", images)
    subprocess.run([sys.executable, "-c", script, str(path), str(folder / "images.npy"), str(folder / "served.npz")],
                   check=True, capture_output=True)
    with np.load(folder / "served.npz") as served:
        return dict(served)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _check_served(path, model, images, *, logits=False):
    served = _serve(path, images)
    expected = np.asarray(model(images.astype("float32")))
    expected = _softmax(expected) if logits else expected
    assert served["class_map"].dtype == np.uint8 and served["class_map"].shape == images.shape[:3]
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(served["class_map"], expected.argmax(-1))


def test_fcn_of_any_size_serves_class_map_and_probabilities(tmp_path):
    model = zoo.load("fcn8s", classes=4, **SMALL_MOBILENET)
    # Zero-initialised score layers give ties everywhere; random ones give a real class map.
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if layer.name.startswith("score_stride"):
            layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    path = hk.export_saved_model(model, tmp_path / "fcn8s" / "1")
    meta = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())
    assert meta["task"] == "segmentation" and meta["classes"] == 4
    assert meta["outputs"] == ["class_map", "probabilities"] and meta["image_shape"] == [None, None, 3]
    # A size the export's own verification did not use.
    _check_served(path, model, rng.integers(0, 256, (1, 45, 70, 3), dtype=np.uint8))


def test_logits_model_serves_softmax_probabilities(tmp_path):
    model = zoo.load("fcn32s", classes=3, classifier_activation=None, input_shape=(64, 64, 3), **SMALL_MOBILENET)
    rng = np.random.default_rng(1)
    layer = model.get_layer("score_stride32")
    layer.set_weights([rng.normal(size=w.shape).astype("float32") for w in layer.get_weights()])
    path = hk.export_saved_model(model, tmp_path / "logits" / "1", verify=False)  # served and checked below
    _check_served(path, model, rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8), logits=True)


def test_forest_head_exports(tmp_path):
    fcn = zoo.load("fcn32s", classes=3, **SMALL_MOBILENET)
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    features = np.asarray(hypercolumn(fcn)(images.astype("float32")))
    rows = features.reshape(-1, features.shape[-1])
    labels = (rows[:, 0] > np.median(rows[:, 0])).astype(np.int64) + (rows[:, 1] > np.median(rows[:, 1]))
    forest = ForestLayer.from_compiled(grow_random_forest(rows, labels, 3, num_trees=4, max_depth=4),
                                       mode="log_sum")
    model = forest_head(fcn, forest)
    path = hk.export_saved_model(model, tmp_path / "forest" / "1", verify=False)  # served and checked below
    _check_served(path, model, rng.integers(0, 256, (1, 50, 81, 3), dtype=np.uint8))


def test_crf_model_at_any_size(tmp_path):
    model = zoo.load("fcn8s", classes=3, crf={"iterations": 2}, **SMALL_MOBILENET)
    path = hk.export_saved_model(model, tmp_path / "crf" / "1")
    meta = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())
    assert meta["task"] == "segmentation"


def test_what_counts_as_segmentation():
    assert segmentation_classes(zoo.load("fcn16s", classes=5, **SMALL_MOBILENET)) == 5
    # A headless backbone's map is per cell at stride 32, not per pixel.
    assert segmentation_classes(zoo.load("mobilenet_v2", alpha=0.35, include_top=False)) is None
    assert segmentation_classes(zoo.load("mobilenet_v2", alpha=0.35, include_top=False,
                                         input_shape=(64, 64, 3))) is None
    assert segmentation_classes(zoo.load("mobilenet_v2", alpha=0.35, input_shape=(96, 96, 3), classes=4)) is None


def test_fixed_size_verification_inputs_are_checked(tmp_path):
    model = zoo.load("fcn32s", classes=2, input_shape=(64, 64, 3), **SMALL_MOBILENET)
    with pytest.raises(ValueError, match="inputs must be uint8"):
        hk.export_saved_model(model, tmp_path / "bad" / "1", verify_inputs=np.zeros((1, 32, 32, 3), np.uint8))
