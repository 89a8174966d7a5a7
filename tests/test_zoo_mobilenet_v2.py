"""MobileNetV2: equivalence with keras.applications at several widths (.h5) and with
torchvision (.pth, both formats), weight-tag resolution, fine-tuning, bad input."""

import keras
import numpy as np
import pytest
import torch
import torchvision

import zoo
from zoo.weights import WeightsError
from tests.zoo_reference import (
    randomise_keras_batchnorm,
    randomise_torch_batchnorm,
    save_keras_applications_h5,
    torch_logits,
)

IMAGES = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype("float32")
PIXELS = np.random.default_rng(1).integers(0, 256, size=(2, 224, 224, 3)).astype("uint8")


@pytest.mark.parametrize("alpha, size", [(0.35, 96), (1.0, 224), (1.4, 128)])
def test_matches_keras_applications_through_h5(tmp_path, alpha, size):
    ref = keras.applications.MobileNetV2(weights=None, alpha=alpha, input_shape=(size, size, 3), classifier_activation=None)
    randomise_keras_batchnorm(ref)
    path = save_keras_applications_h5(ref, tmp_path / "mnv2.h5")
    model = zoo.load("mobilenet_v2", weights=str(path), alpha=alpha, input_shape=(size, size, 3), classifier_activation=None,
                     include_preprocessing=False)
    images = IMAGES[:, :size, :size]
    assert np.max(np.abs(model(images).numpy() - ref(images).numpy())) <= 1e-4
    assert model.count_params() == ref.count_params()
    raw = zoo.load("mobilenet_v2", weights=str(path), alpha=alpha, input_shape=(size, size, 3), classifier_activation=None)
    pixels = PIXELS[:, :size, :size]
    expected = ref(keras.applications.mobilenet_v2.preprocess_input(pixels.astype("float32")))
    assert np.max(np.abs(raw(pixels).numpy() - expected.numpy())) <= 1e-4


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_matches_torchvision_through_pth(tmp_path, zip_format):
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v2()
    randomise_torch_batchnorm(ref)
    path = tmp_path / "mobilenet_v2.pth"
    torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    model = zoo.load("mobilenet_v2", weights=str(path), classifier_activation=None,  # layout follows the file
                     include_preprocessing=False)
    assert np.max(np.abs(model(IMAGES).numpy() - torch_logits(ref, IMAGES))) <= 1e-4
    assert model.get_layer("Conv1_pad").padding == ((1, 1), (1, 1))
    raw = zoo.load("mobilenet_v2", weights=str(path), classifier_activation=None)
    assert raw.get_layer("preprocessing").mode == "torch"
    torch_params = sum(p.numel() for p in ref.parameters())
    bn_channels = sum(l.weights[0].shape[0] for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    assert model.count_params() == torch_params + 2 * bn_channels == zoo.model_card("mobilenet_v2").parameters


def test_every_published_keras_file_has_a_tag():
    card = zoo.model_card("mobilenet_v2")
    keras_tags = [s for s in card.weights if s.source == "keras.applications"]
    assert len(keras_tags) == 2 * (4 * 5 + 2)  # 4 widths x 5 sizes, 1.3 and 1.4 at 224; with and without top
    assert card.weight("imagenet").builder_kwargs == {"alpha": 1.0, "input_shape": (224, 224, 3), "layout": "keras"}
    assert {s.tag for s in card.weights} >= {"imagenet_torchvision", "imagenet_torchvision_v2"}


def test_imagenet_resolves_to_the_file_for_alpha_and_size(monkeypatch, tmp_path):
    """weights='imagenet' asks the cache for the keras file of this alpha and input size."""
    import zoo.common

    asked = []

    def fake_fetch(spec, **kw):
        asked.append(spec.filename)
        raise WeightsError("offline")

    monkeypatch.setattr(zoo.common, "fetch", fake_fetch)
    with pytest.raises(WeightsError):
        zoo.load("mobilenet_v2", weights="imagenet", alpha=0.5, input_shape=(160, 160, 3), include_top=False)
    assert asked == ["mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.5_160_no_top.h5"]


def test_fine_tuning_new_top(tmp_path):
    ref = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(96, 96, 3))
    path = save_keras_applications_h5(ref, tmp_path / "mnv2.h5")
    model = zoo.load("mobilenet_v2", weights=str(path), alpha=0.35, input_shape=(96, 96, 3), classes=10)
    assert model.output_shape == (None, 10)
    np.testing.assert_array_equal(model.get_layer("Conv_1").get_weights()[0], ref.get_layer("Conv_1").get_weights()[0])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)  # else TensorFlow traces the train step twice
    x = np.random.default_rng(1).integers(0, 256, (4, 96, 96, 3)).astype("uint8")
    history = model.fit(x, np.arange(4), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_keras_file_round_trip(tmp_path):
    model = zoo.load("mobilenet_v2", alpha=0.35, input_shape=(32, 32, 3), classes=4)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), atol=1e-6)
    assert again.get_layer("preprocessing").get_config() == model.get_layer("preprocessing").get_config()


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="alpha"):
        zoo.load("mobilenet_v2", alpha=0.6)
    with pytest.raises(ValueError, match="published input sizes"):
        zoo.load("mobilenet_v2", weights="imagenet", alpha=1.4, input_shape=(128, 128, 3))
    with pytest.raises(ValueError, match="alpha"):
        zoo.load("mobilenet_v2", weights="imagenet_keras_0.5_224", alpha=1.0)
    with pytest.raises(ValueError, match="layout"):
        zoo.load("mobilenet_v2", weights="imagenet_torchvision", layout="keras")
    with pytest.raises(ValueError, match="at least 32"):
        zoo.load("mobilenet_v2", input_shape=(16, 16, 3))
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11().state_dict(), tmp_path / "vgg11.pth")
    with pytest.raises(WeightsError, match="vgg11.pth"):
        zoo.load("mobilenet_v2", weights=str(tmp_path / "vgg11.pth"))
