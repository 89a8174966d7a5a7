"""SavedModel export: signatures, preprocessing inside the graph, the fresh-process check."""

import json
import subprocess
import sys

import keras
import numpy as np
import pytest

import hybrid_keras as hk
from hybrid_keras.export import ExportVerificationError, serving_command, verify_saved_model


def _small_model(outputs=1, channels=3, size=16):
    inputs = keras.Input((size, size, channels), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    heads = [keras.layers.Dense(3, activation="softmax", name="probabilities")(x)]
    if outputs == 2:
        heads.append(keras.layers.Dense(2, name="aux_logits")(x))
    return keras.Model(inputs, heads if outputs == 2 else heads[0])


@pytest.mark.parametrize("outputs", [1, 2], ids=["single", "multi-output"])
def test_export_verifies_and_serves_every_signature(tmp_path, outputs):
    model = _small_model(outputs)
    # The fresh-process check runs once, below, where its figures can be read (the export's own
    # call of it, verify=True, is exercised by the tests further down).
    path = hk.export_saved_model(model, tmp_path / "tiny" / "1", preprocessing="torch", verify=False)
    meta = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())
    assert meta["preprocessing"]["mode"] == "torch" and not meta["preprocessing"]["inside_model"]
    assert meta["image_shape"] == [16, 16, 3]
    diffs = verify_saved_model(model, path, preprocessing="torch", seed=7)
    signatures = {key.split("/")[0] for key in diffs}
    assert signatures == {"serving_default", "serve_uint8", "serve_image_bytes"}
    assert len(diffs) == 3 * outputs and max(diffs.values()) <= 1e-5


def test_preprocessing_is_inside_the_graph(tmp_path):
    """Serving raw pixels must equal the Keras model on pixels preprocessed by hand."""
    import tensorflow as tf

    model = _small_model()
    path = hk.export_saved_model(model, tmp_path / "m" / "1", preprocessing="caffe", verify=False)
    images = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3)).astype(np.float32)
    by_hand = images[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](images=tf.constant(images))
    np.testing.assert_allclose(served["probabilities"].numpy(), model(by_hand).numpy(), atol=1e-6)


def test_a_model_with_its_own_preprocessing_is_served_as_it_is(tmp_path):
    """Nothing is added or guessed; asking for a second normalisation is refused."""
    from hybrid_keras.layers import Preprocessing

    inputs = keras.Input((16, 16, 3), name="image")
    model = keras.Model(inputs, _small_model()(Preprocessing("tf", name="preprocessing")(inputs)))
    path = hk.export_saved_model(model, tmp_path / "m" / "1")
    meta = json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())["preprocessing"]
    assert meta["mode"] == "tf" and meta["inside_model"]
    with pytest.raises(ValueError, match="normalise twice"):
        hk.export_saved_model(model, tmp_path / "m" / "2", preprocessing="tf")


def test_feature_vector_models_get_a_tensor_signature(tmp_path):
    import tensorflow as tf

    model = keras.Sequential([keras.Input((5,), name="features"), keras.layers.Dense(2, name="scores")])
    path = hk.export_saved_model(model, tmp_path / "vectors" / "1")  # verified in a fresh process
    loaded = tf.saved_model.load(str(path))
    assert sorted(loaded.signatures) == ["serving_default"]
    rows = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    served = loaded.signatures["serving_default"](features=tf.constant(rows))
    np.testing.assert_allclose(list(served.values())[0].numpy(), model(rows).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match="image models"):
        hk.export_saved_model(model, tmp_path / "vectors" / "2", preprocessing="torch")


def test_verification_catches_a_mismatch(tmp_path):
    model = _small_model()
    path = hk.export_saved_model(model, tmp_path / "m" / "1", preprocessing="torch", verify=False)
    with pytest.raises(ExportVerificationError):
        verify_saved_model(model, path, preprocessing="caffe")


def test_failed_verification_leaves_no_version_behind(tmp_path, monkeypatch):
    import hybrid_keras.export as export

    def fail(*args, **kwargs):
        raise ExportVerificationError("simulated")

    monkeypatch.setattr(export, "verify_saved_model", fail)
    with pytest.raises(ExportVerificationError):
        hk.export_saved_model(_small_model(), tmp_path / "m" / "1")
    assert list((tmp_path / "m").iterdir()) == []


def test_loads_with_tensorflow_only(tmp_path):
    path = hk.export_saved_model(_small_model(channels=1), tmp_path / "gray" / "3", preprocessing="none", verify=False)
    script = (
        "import sys, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]);"
        "print(sorted(m.signatures)); print(sorted({k.split('.')[0] for k in sys.modules} & {'hybrid_keras', 'zoo'}))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True).stdout
    assert "['serve_image_bytes', 'serve_uint8', 'serving_default']" in out
    assert out.splitlines()[-1] == "[]"  # nothing of this project was imported


def test_bad_arguments(tmp_path):
    model = _small_model()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("")
    with pytest.raises(FileExistsError, match="immutable"):
        hk.export_saved_model(model, tmp_path / "taken")
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        hk.export_saved_model(model, tmp_path / "a", preprocessing="imagenet")
    with pytest.raises(TypeError, match="keras.Model"):
        hk.export_saved_model("vgg16", tmp_path / "b")
    inputs = keras.Input((None, None, 3))
    flexible = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ValueError, match="image_size"):
        hk.export_saved_model(flexible, tmp_path / "c")
    path = hk.export_saved_model(flexible, tmp_path / "d" / "1", image_size=(8, 12))
    assert json.loads((path / "assets.extra" / "hybrid_keras.json").read_text())["image_shape"] == [8, 12, 3]
    first, second = keras.Input((4,)), keras.Input((4,))
    two_inputs = keras.Model([first, second], keras.layers.Add()([first, second]))
    with pytest.raises(ValueError, match="single-input"):
        hk.export_saved_model(two_inputs, tmp_path / "e")


def test_serving_command_names_model_and_base(tmp_path):
    command = serving_command(tmp_path / "pets" / "1")
    assert "MODEL_NAME=pets" in command and f"source={tmp_path / 'pets'}" in command and "-gpu" in command
    assert "--gpus" not in serving_command(tmp_path / "pets" / "1", gpu=False)
