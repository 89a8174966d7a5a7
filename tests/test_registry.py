"""The registry: registration rules, lookups, close-match errors, cards."""

import pytest

import zoo
from zoo import registry
from zoo.weights import WeightSpec


@pytest.fixture
def scratch_name():
    name = "test_tiny_net"
    yield name
    registry._REGISTRY.pop(name, None)


def _register(name, **kw):
    spec = WeightSpec(tag="imagenet_test", url="http://127.0.0.1:9/tiny.pth", format="torch-pth",
                      source="test", preprocessing="torch", top1=50.0, top5=75.0)
    defaults = dict(task="classification", family="tiny", input_shape=(8, 8, 3), reference="none",
                    preprocessing="tf", weights=(spec,), default_weights="imagenet_test", parameters=10)
    defaults.update(kw)
    return registry.register_model(name, **defaults)


def _no_model(card, weights=None):
    return None


def test_builders_must_take_their_card_and_weights(scratch_name):
    with pytest.raises(TypeError, match="card"):
        _register(scratch_name)(lambda weights=None: None)


def test_listing_the_registry_imports_no_keras():
    import subprocess
    import sys

    script = "import sys, zoo; zoo.list_models(); print(zoo.model_card('vgg16')); print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False"


def test_register_load_and_card(scratch_name):
    @_register(scratch_name)
    def tiny(card, weights=None, classes=3):
        import keras

        assert card.name == scratch_name  # the registry hands the builder its card

        inputs = keras.Input((8, 8, 3))
        return keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))

    assert scratch_name in zoo.list_models()
    assert scratch_name in zoo.list_models(task="classification")
    assert scratch_name not in zoo.list_models(task="segmentation")
    assert zoo.load(scratch_name, classes=5).output_shape == (None, 5)
    card = zoo.model_card(scratch_name)
    assert card.weight("imagenet").tag == "imagenet_test"
    summary = card.summary()
    assert summary["weights"]["imagenet_test"]["top1"] == 50.0
    assert "imagenet_test" in str(card)


def test_duplicate_name_is_an_error(scratch_name):
    _register(scratch_name)(_no_model)
    with pytest.raises(ValueError, match="already registered"):
        _register(scratch_name)(_no_model)


def test_unknown_name_suggests_close_matches():
    names = zoo.list_models()
    if not names:
        pytest.skip("no architectures registered")
    target = names[0]
    with pytest.raises(ValueError, match=f"Did you mean: .*{target}"):
        zoo.load(target + "x")


def test_unknown_task_and_tag(scratch_name):
    with pytest.raises(ValueError, match="task"):
        zoo.list_models(task="juggling")
    _register(scratch_name)(_no_model)
    with pytest.raises(ValueError, match="known tags"):
        zoo.model_card(scratch_name).weight("imagenet_v9")


def test_default_tag_must_exist(scratch_name):
    with pytest.raises(ValueError, match="default_weights"):
        _register(scratch_name, default_weights="nope")(_no_model)


def test_every_registered_model_has_a_complete_card():
    for name in zoo.list_models():
        card = zoo.model_card(name)
        assert card.parameters, name
        assert card.reference, name
        assert len(card.input_shape) == 3, name
        for spec in card.weights:
            assert spec.url.startswith("https://"), (name, spec.tag)
            assert spec.top1 is not None and spec.top5 is not None, (name, spec.tag)
