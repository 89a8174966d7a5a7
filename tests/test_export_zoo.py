"""Every zoo family exports to a SavedModel that a fresh TensorFlow-only process
reproduces (keras issue 21258 showed some model shapes failing to export)."""

import pytest

import hybrid_keras as hk
import zoo


# test_cli_export_with_top exports (backbone and top) and verifies this one; the family list
# leaves its family out rather than export it twice.
CLI_MODEL = "mobilenet_v2"


def _one_model_per_family():
    seen = {}
    for name in zoo.list_models(task="classification"):  # other tasks' builders take other arguments
        seen.setdefault(zoo.model_card(name).family, name)
    del seen[zoo.model_card(CLI_MODEL).family]
    return sorted(seen.values())


@pytest.mark.parametrize("name", _one_model_per_family())
def test_family_exports_and_verifies(tmp_path, name):
    card = zoo.model_card(name)
    # Headless at a small size keeps the variables small; the top is a plain Dense that
    # tests/test_export.py covers. The backbone is what differs between families.
    size = max(64, min(card.input_shape[0], 96))
    model = zoo.load(name, weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))
    path = hk.export_saved_model(model, tmp_path / name / "1")
    assert (path / "saved_model.pb").exists()


def test_cli_export_with_top(tmp_path, capsys):
    from hybrid_keras import cli

    assert cli.main(["export", CLI_MODEL, str(tmp_path / "mnv2" / "1"), "--classes", "3", "--input-shape", "32,32,3"]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "tensorflow/serving" in out
