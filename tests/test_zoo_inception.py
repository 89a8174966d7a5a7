"""GoogLeNet against torchvision (.pth, both formats), its auxiliary training heads,
and BN-Inception's structure against the paper's table."""

import keras
import numpy as np
import pytest
import torch
import torchvision

import zoo
from zoo.architectures.googlenet import AUX_LOSS_WEIGHTS, inference_model
from zoo.weights import WeightsError
from tests.zoo_reference import randomise_torch_batchnorm, torch_logits

IMAGES = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype("float32")


def _torch_googlenet():
    torch.manual_seed(0)
    ref = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True, transform_input=False)
    randomise_torch_batchnorm(ref)
    return ref


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_googlenet_matches_torchvision_through_pth(tmp_path, zip_format):
    ref = _torch_googlenet()
    path = tmp_path / "googlenet.pth"
    torch.save(ref.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    model = zoo.load("googlenet", weights=str(path), classifier_activation=None, include_preprocessing=False)
    assert np.max(np.abs(model(IMAGES).numpy() - torch_logits(ref, IMAGES))) <= 1e-4
    ref.aux1 = ref.aux2 = None  # torchvision counts its published parameters without the aux heads
    bn_channels = sum(l.weights[0].shape[0] for l in model.layers if isinstance(l, keras.layers.BatchNormalization))
    assert model.count_params() == sum(p.numel() for p in ref.parameters()) + 2 * bn_channels
    assert model.count_params() == zoo.model_card("googlenet").parameters


def test_aux_heads_load_and_match_torch_training_outputs(tmp_path):
    ref = _torch_googlenet()
    torch.save(ref.state_dict(), tmp_path / "g.pth")
    model = zoo.load("googlenet", weights=str(tmp_path / "g.pth"), aux_logits=True, classifier_activation=None,
                     include_preprocessing=False)
    assert [o.name for o in model.outputs] != [] and len(model.outputs) == 3
    # torch's aux heads run only in training mode; compare them with dropout disabled.
    ref.train()
    for module in ref.modules():
        if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.Dropout)):
            module.eval()
    for aux in (ref.aux1, ref.aux2):
        aux.training = False
    with torch.no_grad():
        main, aux2, aux1 = ref(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2)))
    ours = [o.numpy() for o in model(IMAGES, training=False)]
    for mine, theirs in zip(ours, (main, aux1, aux2)):
        assert np.max(np.abs(mine - theirs.numpy())) <= 1e-4
    single = inference_model(model)
    assert len(single.outputs) == 1
    np.testing.assert_allclose(single(IMAGES).numpy(), ours[0], atol=1e-5)


def test_training_with_aux_heads_uses_paper_loss_weights():
    model = zoo.load("googlenet", aux_logits=True, classes=3, input_shape=(160, 160, 3))
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=["sparse_categorical_crossentropy"] * 3,
                  loss_weights=list(AUX_LOSS_WEIGHTS))
    x = np.random.default_rng(0).normal(size=(2, 160, 160, 3)).astype("float32")
    y = np.array([0, 2])
    losses = [float(keras.losses.sparse_categorical_crossentropy(y, p).numpy().mean()) for p in model(x, training=False)]
    total = model.evaluate(x, [y, y, y], verbose=0)[0]
    assert AUX_LOSS_WEIGHTS == (1.0, 0.3, 0.3)
    assert total == pytest.approx(losses[0] + 0.3 * losses[1] + 0.3 * losses[2], rel=1e-4)
    model.optimizer.build(model.trainable_variables)  # else TensorFlow traces the train step twice
    history = model.fit(x, [y, y, y], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_torchvision_transform_input_equals_tf_preprocessing():
    pixels = np.random.default_rng(1).uniform(0, 255, size=(1, 8, 8, 3)).astype("float32")
    from hybrid_keras.preprocessing import preprocess_numpy

    torch_normalised = preprocess_numpy(pixels, "torch")
    transformed = torchvision.models.GoogLeNet(transform_input=True, init_weights=False)._transform_input(
        torch.from_numpy(torch_normalised.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(transformed, preprocess_numpy(pixels, "tf"), atol=1e-5)


def test_bn_inception_structure_follows_the_paper():
    model = zoo.load("bn_inception")
    expected_channels = {"inception3a": 256, "inception3b": 320, "inception3c": 576, "inception4a": 576,
                         "inception4b": 576, "inception4c": 608, "inception4d": 608, "inception4e": 1056,
                         "inception5a": 1024, "inception5b": 1024}
    for block, channels in expected_channels.items():
        assert model.get_layer(block).output.shape[-1] == channels, block
    assert model.get_layer("inception3c").output.shape[1:3] == (14, 14)
    assert model.get_layer("inception5b").output.shape[1:3] == (7, 7)
    assert all(any(isinstance(l, keras.layers.BatchNormalization) and l.name == f"{c.name}_bn" for l in model.layers)
               for c in model.layers if isinstance(c, keras.layers.Conv2D))
    assert model.count_params() == zoo.model_card("bn_inception").parameters
    assert zoo.model_card("bn_inception").weights == ()


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="aux_logits"):
        zoo.load("googlenet", aux_logits=True, include_top=False)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alexnet.pth")
    with pytest.raises(WeightsError, match="another architecture"):
        zoo.load("googlenet", weights=str(tmp_path / "alexnet.pth"))
