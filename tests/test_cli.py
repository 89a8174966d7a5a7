"""The hybrid-keras command, and the README's model table staying in sync with the registry."""

from pathlib import Path

from hybrid_keras import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_is_generated_from_the_registry():
    text = README.read_text()
    block = text.split(cli.README_START, 1)[1].split(cli.README_END, 1)[0].strip()
    assert block == cli.models_table(markdown=True), "run: hybrid-keras models --write-readme README.md"


def test_models_command_lists_every_model(capsys):
    import zoo

    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    for name in zoo.list_models():
        assert name in out


def test_card_command(capsys):
    import zoo

    names = zoo.list_models()
    if names:
        cli.main(["card", names[0]])
        assert names[0] in capsys.readouterr().out


def test_readme_opens_with_the_two_commands():
    ci = (README.parent / ".ci" / "run").read_text()
    first_block = README.read_text().split("```", 2)[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["./dev.sh demo", "./dev.sh test"]
    assert "./dev.sh test" in ci and "demo" not in ci


def test_listing_commands_import_no_keras():
    import subprocess
    import sys

    script = ("import sys; from hybrid_keras import cli; cli.main(['models']); cli.main(['card', 'vgg16']);"
              "print('keras' in sys.modules or 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-1] == "False"
    assert "imagenet_keras_* (44 keras.applications files: alpha 0.35-1.4, input 96-224, with or without top)" in out


def test_weight_tags_are_grouped_for_people():
    import zoo

    summary = cli.weights_summary(zoo.model_card("mobilenet_v2"))
    assert summary.endswith("imagenet_torchvision, imagenet_torchvision_v2")
    assert cli.weights_summary(zoo.model_card("vgg16")) == "imagenet_keras, imagenet_keras_notop; imagenet_torchvision"
    assert cli.weights_summary(zoo.model_card("zfnet")) == "none published"
