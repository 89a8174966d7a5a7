"""Custom layers against torch's definitions, a hand-computed case, and .keras round trips."""

import keras
import numpy as np
import pytest
import torch

from hybrid_keras.layers import AdaptiveAveragePooling2D, LocalResponseNormalization


@pytest.mark.parametrize("size", [1, 2, 3, 5, 6])
def test_lrn_matches_torch(size):
    x = np.random.default_rng(size).normal(size=(2, 4, 5, 9)).astype("float32")
    ours = LocalResponseNormalization(size=size, alpha=1e-2, beta=0.75, k=2.0)(x).numpy()
    theirs = torch.nn.LocalResponseNorm(size, alpha=1e-2, beta=0.75, k=2.0)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6)


def test_lrn_hand_computed():
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape(1, 1, 1, 3)
    out = LocalResponseNormalization(size=3, alpha=3.0, beta=1.0, k=1.0)(x).numpy().ravel()
    # alpha / size = 1; windows: {1,2}, {1,2,3}, {2,3} -> sums of squares 5, 14, 13.
    np.testing.assert_allclose(out, [1 / 6, 2 / 15, 3 / 14], rtol=1e-6)


@pytest.mark.parametrize("size_in, size_out", [((14, 14), (4, 4)), ((7, 9), (3, 2)), ((6, 6), (6, 6))])
def test_adaptive_average_pooling_matches_torch(size_in, size_out):
    x = np.random.default_rng(0).normal(size=(2, *size_in, 3)).astype("float32")
    ours = AdaptiveAveragePooling2D(size_out)(x).numpy()
    theirs = torch.nn.AdaptiveAvgPool2d(size_out)(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer", [LocalResponseNormalization(size=5, alpha=5e-4), AdaptiveAveragePooling2D((2, 3))])
def test_keras_round_trip(tmp_path, layer):
    inputs = keras.Input((6, 6, 4))
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    x = np.random.default_rng(1).normal(size=(1, 6, 6, 4)).astype("float32")
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy())
    assert again.layers[-1].get_config() == model.layers[-1].get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        LocalResponseNormalization(size=0)
    with pytest.raises(ValueError, match="output_size"):
        AdaptiveAveragePooling2D((0, 2))
