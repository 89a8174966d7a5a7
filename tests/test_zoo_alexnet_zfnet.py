"""AlexNet against torchvision through .pth files; the 2012 layout; ZFNet's shapes and
parameter count checked by hand against the paper."""

import keras
import numpy as np
import pytest
import torch
import torchvision

import zoo
from hybrid_keras.layers import LocalResponseNormalization
from zoo.weights import WeightsError
from tests.zoo_reference import torch_logits


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_alexnet_matches_torchvision_through_pth(tmp_path, zip_format):
    torch.manual_seed(0)
    ref = torchvision.models.alexnet()
    path = tmp_path / "alexnet.pth"
    torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    model = zoo.load("alexnet", weights=str(path), classifier_activation=None, include_preprocessing=False)
    images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype("float32")
    assert np.max(np.abs(model(images).numpy() - torch_logits(ref, images))) <= 1e-4
    assert model.count_params() == sum(p.numel() for p in ref.parameters()) == zoo.model_card("alexnet").parameters


def test_alexnet_2012_layout():
    model = zoo.load("alexnet", variant="original")
    assert model.input_shape == (None, 227, 227, 3)
    assert model.get_layer("conv1").output.shape[1:] == (55, 55, 96)
    assert model.get_layer("pool5").output.shape[1:] == (6, 6, 256)
    assert isinstance(model.get_layer("conv1_lrn"), LocalResponseNormalization)
    # Two groups in conv2/4/5, as on the paper's two GPUs: 60,965,224 parameters.
    assert model.count_params() == 60_965_224
    assert not any(isinstance(l, LocalResponseNormalization) for l in zoo.load("alexnet", variant="original", lrn=False).layers)


def test_alexnet_with_lrn_round_trips_through_keras_file(tmp_path):
    model = zoo.load("alexnet", variant="original", include_top=False, input_shape=(99, 99, 3), pooling="avg")
    model.save(tmp_path / "a.keras")
    again = keras.models.load_model(tmp_path / "a.keras")
    x = np.random.default_rng(3).normal(size=(1, 99, 99, 3)).astype("float32")
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_zfnet_shapes_and_parameters_by_hand():
    model = zoo.load("zfnet")
    conv1 = model.get_layer("conv1")
    assert conv1.kernel_size == (7, 7) and conv1.strides == (2, 2) and conv1.filters == 96
    assert model.get_layer("conv1").output.shape[1:] == (110, 110, 96)  # as in the paper's Figure 3
    assert model.get_layer("pool1").output.shape[1:] == (55, 55, 96)
    assert model.get_layer("conv2").output.shape[1:] == (26, 26, 256)
    assert model.get_layer("pool5").output.shape[1:] == (6, 6, 256)
    by_hand = (7 * 7 * 3 * 96 + 96) + (5 * 5 * 96 * 256 + 256) + (3 * 3 * 256 * 384 + 384) + (3 * 3 * 384 * 384 + 384) \
        + (3 * 3 * 384 * 256 + 256) + (6 * 6 * 256 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    assert model.count_params() == by_hand == zoo.model_card("zfnet").parameters
    assert zoo.model_card("zfnet").weights == ()


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="input_shape"):
        zoo.load("alexnet", input_shape=(200, 200, 3))
    with pytest.raises(ValueError, match="variant"):
        zoo.load("alexnet", variant="caffenet")
    with pytest.raises(ValueError, match="no pretrained weights"):
        zoo.load("alexnet", variant="original", weights="imagenet")
    with pytest.raises(ValueError, match="no published weights"):
        zoo.load("zfnet", weights="imagenet")
    torch.manual_seed(0)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mnv2.pth")
    with pytest.raises(WeightsError, match="mnv2.pth"):
        zoo.load("alexnet", weights=str(tmp_path / "mnv2.pth"))
