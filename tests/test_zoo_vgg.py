"""VGG: equivalence with keras.applications (.h5) and torchvision (.pth) through the
publishers' file formats, parameter counts, fine-tuning, bad input."""

import logging

import keras
import numpy as np
import pytest
import torch
import torchvision

import zoo
from zoo.weights import WeightsError
from tests.zoo_reference import randomise_torch_batchnorm, save_keras_applications_h5, torch_logits

IMAGES = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype("float32")
PIXELS = np.random.default_rng(1).integers(0, 256, size=(1, 224, 224, 3)).astype("uint8")
TORCH_MEAN, TORCH_STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


@pytest.mark.parametrize("name, reference", [("vgg16", keras.applications.VGG16), ("vgg19", keras.applications.VGG19)])
def test_matches_keras_applications_through_h5(tmp_path, name, reference):
    ref = reference(weights=None, classifier_activation=None)
    path = save_keras_applications_h5(ref, tmp_path / f"{name}.h5")
    model = zoo.load(name, weights=str(path), classifier_activation=None, include_preprocessing=False)
    assert np.max(np.abs(model(IMAGES).numpy() - ref(IMAGES).numpy())) <= 1e-4
    assert model.count_params() == ref.count_params() == zoo.model_card(name).parameters
    # By default the model takes raw pixels and normalises as keras.applications' preprocess_input does.
    raw = zoo.load(name, weights=str(path), classifier_activation=None)
    expected = ref(keras.applications.imagenet_utils.preprocess_input(PIXELS.astype("float32"), mode="caffe"))
    assert np.max(np.abs(raw(PIXELS).numpy() - expected.numpy())) <= 1e-3


@pytest.mark.parametrize("name, zip_format", [("vgg11", True), ("vgg11_bn", False)], ids=["zip", "legacy-bn"])
def test_matches_torchvision_through_pth(tmp_path, name, zip_format):
    torch.manual_seed(0)
    ref = getattr(torchvision.models, name)()
    randomise_torch_batchnorm(ref)
    path = tmp_path / f"{name}.pth"
    torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    model = zoo.load(name, weights=str(path), classifier_activation=None, include_preprocessing=False)
    assert np.max(np.abs(model(IMAGES).numpy() - torch_logits(ref, IMAGES))) <= 1e-4
    # Raw pixels in: the model normalises as torchvision's Normalize(mean, std) after ToTensor does.
    raw = zoo.load(name, weights=str(path), classifier_activation=None)
    normalised = (PIXELS.astype("float32") / 255.0 - TORCH_MEAN) / TORCH_STD
    assert np.max(np.abs(raw(PIXELS).numpy() - torch_logits(ref, normalised))) <= 1e-4


@pytest.mark.parametrize("name", ["vgg13", "vgg16_bn", "vgg19_bn"])
def test_parameter_counts(name):
    model = zoo.load(name)
    torch_params = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
    bn_channels = sum(l.weights[0].shape[0] for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    # Keras counts BN moving mean/variance as (non-trainable) parameters; torch keeps them as buffers.
    assert model.count_params() == torch_params + 2 * bn_channels == zoo.model_card(name).parameters


def test_fine_tuning_keeps_backbone_and_builds_new_top(tmp_path, caplog):
    ref = keras.applications.VGG16(weights=None)
    path = save_keras_applications_h5(ref, tmp_path / "vgg16.h5")
    with caplog.at_level(logging.WARNING, logger="zoo"):
        model = zoo.load("vgg16", weights=str(path), classes=10)
    assert "newly initialised" in caplog.text
    assert model.output_shape == (None, 10)
    for layer in ("block1_conv1", "block5_conv3", "fc2"):
        for mine, theirs in zip(model.get_layer(layer).get_weights(), ref.get_layer(layer).get_weights()):
            np.testing.assert_array_equal(mine, theirs)


def test_headless_any_size_and_pooling():
    model = zoo.load("vgg11", include_top=False, input_shape=(64, 96, 3), pooling="avg")
    assert model.output_shape == (None, 512)


def test_bad_input():
    with pytest.raises(ValueError, match="input_shape"):
        zoo.load("vgg16", input_shape=(128, 128, 3))  # the flatten + dense top is sized for 224
    with pytest.raises(ValueError, match="channels"):
        zoo.load("vgg16", include_top=False, input_shape=(64, 64, 4))
    with pytest.raises(ValueError, match="known tags"):
        zoo.load("vgg16", weights="imagenet_v7")
    with pytest.raises(ValueError, match="classes"):
        zoo.load("vgg16", classes=0)
    with pytest.raises(ValueError, match="pooling"):
        zoo.load("vgg16", include_top=False, pooling="mean")
    with pytest.raises(ValueError, match="classifier_activation"):
        zoo.load("vgg16", classifier_activation="softmaxx")
    with pytest.raises(TypeError, match="include_preprocessing"):
        zoo.load("vgg16", include_top=False, include_preprocessing="caffe")


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg13().state_dict(), tmp_path / "vgg13.pth")
    with pytest.raises(WeightsError, match="vgg"):
        zoo.load("vgg11", include_top=False, input_shape=(32, 32, 3), weights=str(tmp_path / "vgg13.pth"))
    torch.save(torchvision.models.vgg11().state_dict(), tmp_path / "vgg11.pth")
    with pytest.raises(WeightsError, match="batch norm"):
        zoo.load("vgg11_bn", include_top=False, input_shape=(32, 32, 3), weights=str(tmp_path / "vgg11.pth"))


def test_decode_predictions_uses_shipped_class_names():
    from zoo.common import decode_predictions

    scores = np.zeros((1, 1000), np.float32)
    scores[0, 1] = 1.0
    assert decode_predictions(scores, top=1) == [[(1, "goldfish", 1.0)]]
