"""The zoo on every Keras backend: for the same weights and pixels, each family's outputs on
the current backend equal TensorFlow's (computed in one TensorFlow subprocess for all
families), and a few training steps lower the loss.

Under the TensorFlow run the comparison would compare TensorFlow with itself, so it is
skipped there; the training check runs on every backend.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import zoo
from tests.zoo_reference import randomise_keras_batchnorm

pytestmark = pytest.mark.backend_agnostic

ROOT = Path(__file__).resolve().parents[1]
# Small inputs and heads, so that every family builds and runs in seconds on a CPU.
FAMILIES = {
    "vgg11": dict(include_top=False, input_shape=(32, 32, 3)),
    "mobilenet_v2": dict(alpha=0.35, classes=5, classifier_activation=None, input_shape=(32, 32, 3)),
    "alexnet": dict(include_top=False, input_shape=(67, 67, 3)),
    "alexnet_original": dict(variant="original", include_top=False, input_shape=(67, 67, 3)),  # groups, LRN
    "zfnet": dict(include_top=False, input_shape=(64, 64, 3)),
    "googlenet": dict(classes=5, classifier_activation=None, input_shape=(64, 64, 3)),
    "bn_inception": dict(classes=5, classifier_activation=None, input_shape=(64, 64, 3)),
}
TOLERANCE = 1e-4  # of the output's largest magnitude


def build(family: str) -> keras.Model:
    """The family's model (name before an underscore-suffixed variant) with FAMILIES' arguments."""
    name = "alexnet" if family == "alexnet_original" else family
    return zoo.load(name, **FAMILIES[family])


def pixels(family: str) -> np.ndarray:
    """Two seeded images of raw RGB values in [0, 255], the zoo's input."""
    shape = FAMILIES[family]["input_shape"]
    return np.random.default_rng(7).uniform(0, 255, size=(2, *shape)).astype("float32")


def tensorflow_outputs(weights: dict, out: Path) -> None:
    """Run in a KERAS_BACKEND=tensorflow process: each family with the given weights, outputs to ``out`` (.npz)."""
    outputs = {}
    for family, path in weights.items():
        model = build(family)
        model.load_weights(path)
        outputs[family] = model.predict(pixels(family), verbose=0)
    np.savez(out, **outputs)


@pytest.mark.skipif(keras.backend.backend() == "tensorflow", reason="compares this backend with TensorFlow")
def test_zoo_outputs_equal_tensorflows_for_the_same_weights(tmp_path):
    ours, weights = {}, {}
    for family in FAMILIES:
        model = build(family)
        randomise_keras_batchnorm(model)  # non-trivial statistics, so a backend handling BN differently shows
        weights[family] = str(tmp_path / f"{family}.weights.h5")
        model.save_weights(weights[family])
        ours[family] = model.predict(pixels(family), verbose=0)  # compiled under JAX: faster than op by op
    script = ("import json, sys; from pathlib import Path; from tests.test_backends import tensorflow_outputs; "
              "tensorflow_outputs(json.loads(sys.argv[1]), Path(sys.argv[2]))")
    environment = {**os.environ, "KERAS_BACKEND": "tensorflow", "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", script, json.dumps(weights), str(tmp_path / "tf.npz")],
                            cwd=ROOT, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, f"the TensorFlow reference run failed:\n{result.stderr[-4000:]}"
    theirs = np.load(tmp_path / "tf.npz")
    for family in FAMILIES:
        assert ours[family].shape == theirs[family].shape, family
    scales = {family: float(np.max(np.abs(theirs[family]))) for family in FAMILIES}
    assert min(scales.values()) > 0.01, f"outputs too small to compare: {scales}"
    # Measured: at most 7e-7 (outputs of magnitude 0.06 to 0.9) under JAX and PyTorch.
    relative = {family: float(np.max(np.abs(ours[family] - theirs[family]))) / scales[family] for family in FAMILIES}
    too_far = {family: value for family, value in relative.items() if value > TOLERANCE}
    assert not too_far, (f"max |{keras.backend.backend()} - tensorflow| / max |tensorflow| beyond {TOLERANCE}: "
                         f"{too_far}")


def test_a_few_training_steps_lower_the_loss():
    """Fitting one small batch: the training loss falls on the current backend."""
    rng = np.random.default_rng(3)
    labels = np.arange(16) % 3
    images = rng.uniform(0, 80, size=(16, 32, 32, 3)).astype("float32")
    images[np.arange(16), :, :, labels] += 150  # the class is the brightest channel
    model = zoo.load("mobilenet_v2", alpha=0.35, classes=3, input_shape=(32, 32, 3), dropout=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    # Built before the first step: under TensorFlow, variables created while the train function
    # is traced make tf.function trace it a second time (half of this test's time).
    model.optimizer.build(model.trainable_variables)
    losses = [float(model.train_on_batch(images, labels)) for _ in range(8)]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < 0.7 * losses[0], losses
