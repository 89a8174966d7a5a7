"""Autoencoder, denoising autoencoder and VAE: the zoo models' shapes, the losses against NumPy,
the reparameterisation and corruption layers, training on every backend, errors, export and
.keras round trips."""

import numpy as np
import pytest

import keras
from keras import ops

import zoo
from hybrid_keras.generative import (Corruption, KLWarmup, Reparameterization, elbo_per_image, kl_divergence,
                                     reconstruction_nll)

agnostic = pytest.mark.backend_agnostic
TINY = {"latent_dim": 3, "filters": (4,)}


def _blobs(count, shape, seed=0):
    """Images with structure to learn: a bright Gaussian blob per image on a dark background, uint8."""
    rng = np.random.default_rng(seed)
    height, width, channels = shape
    yy, xx = np.mgrid[:height, :width]
    centres = rng.uniform(0.3, 0.7, size=(count, 2)) * (height, width)
    blob = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / (0.1 * height * width))
    colour = rng.uniform(0.5, 1.0, size=(count, 1, 1, channels))
    return np.round(255 * blob[..., None] * colour).astype(np.uint8)


def _numpy(x):
    return ops.convert_to_numpy(x)


# ----------------------------------------------------------------------------- losses against NumPy

@agnostic
def test_kl_matches_numpy():
    rng = np.random.default_rng(0)
    mean, log_var = rng.normal(size=(5, 7)).astype("float32"), rng.normal(size=(5, 7)).astype("float32")
    variance = np.exp(log_var.astype(np.float64))
    # KL(N(m, v) || N(0, 1)) = 1/2 (v + m^2 - 1 - log v), summed over dimensions.
    expected = 0.5 * np.sum(variance + mean.astype(np.float64) ** 2 - 1.0 - log_var, axis=1)
    np.testing.assert_allclose(_numpy(kl_divergence(mean, log_var)), expected, rtol=1e-5)
    assert np.allclose(_numpy(kl_divergence(np.zeros((2, 4)), np.zeros((2, 4)))), 0.0)  # q = prior


@agnostic
def test_reconstruction_nll_matches_numpy():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 4, 5, 2)).astype("float32")
    means = rng.uniform(1, 254, size=(3, 4, 5, 2)).astype("float32")
    x, p = images.astype(np.float64) / 255, means.astype(np.float64) / 255
    bernoulli = -np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
    np.testing.assert_allclose(_numpy(reconstruction_nll(images, means, "bernoulli")), bernoulli, rtol=1e-5)
    sigma = 0.2
    gaussian = -np.sum(-0.5 * ((x - p) / sigma) ** 2 - np.log(sigma * np.sqrt(2 * np.pi)), axis=(1, 2, 3))
    np.testing.assert_allclose(_numpy(reconstruction_nll(images, means, "gaussian", sigma)), gaussian, rtol=1e-5)


# ----------------------------------------------------------------------------- layers

@agnostic
def test_reparameterization_is_seeded_and_has_the_posterior_moments():
    mean = np.array([1.0, -2.0, 0.0], np.float32)
    log_var = np.log(np.array([4.0, 0.25, 1.0], np.float32))
    draws = 20000
    inputs = [np.tile(mean, (draws, 1)), np.tile(log_var, (draws, 1))]
    first, second = Reparameterization(seed=7), Reparameterization(seed=7)
    a, b = _numpy(first(inputs)), _numpy(second(inputs))
    np.testing.assert_array_equal(a, b)  # same seed, same draws
    assert not np.allclose(_numpy(first(inputs)), a)  # each call advances the generator
    # The mean's standard error is sigma / sqrt(n); the variance's about var * sqrt(2 / n): 5 of each.
    std = np.exp(0.5 * log_var)
    np.testing.assert_array_less(np.abs(a.mean(axis=0) - mean), 5 * std / np.sqrt(draws))
    np.testing.assert_array_less(np.abs(a.var(axis=0) - std**2), 5 * std**2 * np.sqrt(2 / draws))


@agnostic
def test_corruption_is_active_only_in_training():
    images = np.full((4, 16, 16, 3), 128, np.float32)
    layer = Corruption(noise_stddev=0.1, mask_fraction=0.25, seed=3)
    np.testing.assert_array_equal(_numpy(layer(images)), images)  # inference: the identity
    np.testing.assert_array_equal(_numpy(layer(images, training=False)), images)
    corrupted = _numpy(layer(images, training=True))
    assert corrupted.min() >= 0 and corrupted.max() <= 255
    # Masked values are 0 before the noise: far below the rest.
    masked = corrupted < 64
    assert abs(masked.mean() - 0.25) < 0.05
    kept = corrupted[~masked] - 128
    assert abs(kept.mean()) < 3 and abs(kept.std() - 25.5) < 2.5


# ----------------------------------------------------------------------------- training on every backend

@agnostic
@pytest.mark.parametrize("name", ["denoising_autoencoder", "vae"])  # the plain autoencoder's loss is the first's
def test_a_few_steps_lower_the_loss(name):
    images = _blobs(16, (8, 8, 1)).astype(np.float32)
    model = zoo.load(name, input_shape=(8, 8, 1), seed=2, **TINY)
    # Plain SGD: the smallest training step to compile under JAX. Under TensorFlow, tracing the
    # step into a graph takes longer than running three steps of this tiny model eagerly.
    model.compile(optimizer=keras.optimizers.SGD(1e-3), run_eagerly=keras.backend.backend() == "tensorflow")
    callbacks = [KLWarmup(2)] if name == "vae" else []
    history = model.fit(images, epochs=3, batch_size=16, callbacks=callbacks, verbose=0).history  # one step per epoch
    if name != "vae":  # the loss on corrupted inputs, against the clean ones
        assert history["loss"][0] > history["loss"][1] > history["loss"][2]
        return
    # -ELBO falls whatever the KL weight; the loss is reconstruction + weight * KL with the
    # weights 0, 0.5, 1 of the warm-up (every backend reads the variable each epoch).
    assert history["elbo"][0] < history["elbo"][1] < history["elbo"][2]
    for weight, loss, reconstruction, kl, elbo in zip((0.0, 0.5, 1.0), history["loss"], history["reconstruction"],
                                                      history["kl"], history["elbo"]):
        assert loss == pytest.approx(reconstruction + weight * kl, rel=1e-5)
        assert elbo == pytest.approx(-(reconstruction + kl), rel=1e-5)
    assert float(_numpy(model.kl_weight)) == 1.0


# ----------------------------------------------------------------------------- TensorFlow only

@pytest.mark.parametrize("shape", [(28, 28, 1), (30, 27, 3)])  # the default; colour at a size that needs cropping
def test_shapes(shape):
    images = np.zeros((2, *shape), np.float32)
    for name in ("autoencoder", "denoising_autoencoder", "vae"):
        model = zoo.load(name, input_shape=shape)
        latent = 16 if name == "vae" else 32
        assert model.image_shape == shape and model.latent_dim == latent
        if shape == zoo.model_card(name).input_shape:
            assert model.count_params() == zoo.model_card(name).parameters
        code = model.encoder(images)
        if name == "vae":
            assert [tuple(c.shape) for c in code] == [(2, latent), (2, latent)]
            outputs = model(images)
            assert {k: tuple(v.shape) for k, v in outputs.items()} == {
                "reconstruction": (2, *shape), "z_mean": (2, latent), "z_log_var": (2, latent)}
            samples = _numpy(model.sample(3, seed=0))
            assert samples.shape == (3, *shape) and samples.min() >= 0 and samples.max() <= 255
        else:
            assert tuple(code.shape) == (2, latent)
            assert tuple(model(images).shape) == (2, *shape)
        assert tuple(model.decoder(np.zeros((2, latent), np.float32)).shape) == (2, *shape)


def test_denoising_autoencoder_corrupts_only_in_training():
    model = zoo.load("denoising_autoencoder", input_shape=(8, 8, 1), noise_stddev=0.5, seed=1, **TINY)
    x = _blobs(4, (8, 8, 1)).astype(np.float32)
    clean = _numpy(model.encoder(x))
    np.testing.assert_array_equal(_numpy(model.encoder(x, training=False)), clean)
    np.testing.assert_array_equal(_numpy(model(x)), _numpy(model.decoder(clean)))  # inference: no corruption
    assert np.abs(_numpy(model.encoder(x, training=True)) - clean).max() > 0.1 * np.abs(clean).max()


def test_bad_input_gets_clear_errors():
    model = zoo.load("vae", input_shape=(8, 8, 1), **TINY)
    with pytest.raises(ValueError, match=r"latent vectors must be \[batch, 3\].*Received: z of shape \(2, 5\)"):
        model.decode(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"1 channel last.*Received: images of shape \(2, 8, 8, 3\)"):
        model(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"must be 8x8.*Received: images of shape \(2, 9, 8, 1\)"):
        model.encode(np.zeros((2, 9, 8, 1), np.float32))
    with pytest.raises(ValueError, match="input_shape must have 1 or 3 channels"):
        zoo.load("autoencoder", input_shape=(8, 8, 2))
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        zoo.load("vae", latent_dim=0)
    with pytest.raises(ValueError, match="need height and width of at least 4"):
        zoo.load("autoencoder", input_shape=(3, 8, 1), filters=(4, 8))
    with pytest.raises(ValueError, match="reconstruction must be one of"):
        zoo.load("vae", reconstruction="poisson")


def test_elbo_per_image_is_the_sum_of_its_terms():
    model = zoo.load("vae", input_shape=(8, 8, 1), **TINY)
    images = _blobs(5, (8, 8, 1))
    one = elbo_per_image(model, images, samples=3, batch_size=2, seed=4)
    np.testing.assert_allclose(one["elbo"], -(one["reconstruction"] + one["kl"]), rtol=1e-6)
    again = elbo_per_image(model, images, samples=3, batch_size=2, seed=4)
    np.testing.assert_array_equal(again["elbo"], one["elbo"])  # seeded
    z_mean, z_log_var = model.encode(images)
    np.testing.assert_allclose(one["kl"], _numpy(kl_divergence(z_mean, z_log_var)), rtol=1e-5)


def test_keras_round_trip(tmp_path):
    images = _blobs(3, (8, 8, 3)).astype(np.float32)
    for name in ("denoising_autoencoder", "vae"):
        model = zoo.load(name, input_shape=(8, 8, 3), reconstruction="gaussian", sigma=0.2, seed=9, **TINY)
        path = tmp_path / f"{name}.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert type(loaded) is type(model) and (loaded.reconstruction, loaded.sigma) == ("gaussian", 0.2)
        np.testing.assert_allclose(_numpy(loaded.reconstruct(images)), _numpy(model.reconstruct(images)), atol=1e-4)
        assert loaded.encoder.get_layer("preprocessing").mode == "tf"
    assert loaded.beta == 1.0 and loaded.latent_dim == 3


def test_export_round_trip(tmp_path):
    import tensorflow as tf

    from hybrid_keras.generative import export_autoencoder

    model = zoo.load("vae", input_shape=(8, 8, 1), **TINY)
    path = export_autoencoder(model, tmp_path / "vae" / "1")  # verified in a fresh TensorFlow-only process
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"encode", "decode", "reconstruct", "serving_default"}
    images = _blobs(2, (8, 8, 1)).astype(np.float32)
    served = loaded.signatures["encode"](images=tf.constant(images))
    np.testing.assert_allclose(served["z_mean"].numpy(), _numpy(model.encode(images)[0]), atol=1e-5)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"z must be float32 \[batch, 3\] latent vectors"):
        loaded.signatures["decode"](z=tf.zeros((1, 5)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"images must be float32 \[batch, 8, 8, 1\] images"):
        loaded.signatures["reconstruct"](images=tf.zeros((1, 8, 8, 3)))
