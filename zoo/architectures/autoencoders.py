"""Convolutional autoencoders: undercomplete, denoising, and the variational autoencoder.

References: P. Vincent, H. Larochelle, Y. Bengio, P.-A. Manzagol, "Extracting and Composing
Robust Features with Denoising Autoencoders", ICML 2008; D. P. Kingma, M. Welling,
"Auto-Encoding Variational Bayes", ICLR 2014.

One layout for all three, for any ``input_shape`` ``(H, W, 1 or 3)``:

- encoder: raw pixels in [0, 255] -> (the denoising autoencoder's :class:`Corruption`, active
  only in training) -> ``Preprocessing("tf")`` (to [-1, 1], the zoo's scaling layer) -> one
  3x3 stride-2 ReLU convolution per entry of ``filters`` -> flatten -> a dense bottleneck of
  ``latent_dim`` units (the VAE: two, ``z_mean`` and ``z_log_var``);
- decoder: dense -> reshape to the encoder's last map -> one 4x4 stride-2 transposed ReLU
  convolution per entry of ``filters``, in reverse -> cropped to ``H x W`` (sizes that are
  not a multiple of ``2 ** len(filters)``) -> 3x3 convolution to ``C`` channels with a
  sigmoid -> times 255. (4x4 kernels, divisible by the stride: every backend pads them alike,
  and they avoid the checkerboard pattern of 3x3 ones.)

Images come out in the same range as they go in: float pixels in [0, 255] (the decoder's
sigmoid means of the intensities, times 255). The models are
:class:`hybrid_keras.generative.Autoencoder` / ``VariationalAutoencoder``: ``model.encoder``
and ``model.decoder`` are the functional sub-models, ``model.compile(optimizer)`` +
``model.fit(images)`` trains them with their own loss (see
:mod:`hybrid_keras.generative.autoencoders`).
"""

from __future__ import annotations

import math

from zoo import common
from zoo.lazy import hk_layers, keras, layers
from zoo.registry import register_model

REFERENCE_AE = "Hinton & Salakhutdinov, Reducing the Dimensionality of Data with Neural Networks, Science 2006"
REFERENCE_DAE = ("Vincent, Larochelle, Bengio & Manzagol, Extracting and Composing Robust Features with Denoising "
                 "Autoencoders, ICML 2008")
REFERENCE_VAE = "Kingma & Welling, Auto-Encoding Variational Bayes, ICLR 2014"
DEFAULT_SHAPE = (28, 28, 1)
DEFAULT_FILTERS = (32, 64)


def _generative():
    from hybrid_keras import generative

    return generative


def _check(input_shape, latent_dim, filters):
    shape = DEFAULT_SHAPE if input_shape is None else tuple(input_shape)
    if len(shape) != 3 or any(not isinstance(side, int) or isinstance(side, bool) for side in shape):
        raise ValueError(f"input_shape must be (height, width, channels) of ints. Received: input_shape={input_shape!r}")
    if shape[2] not in (1, 3):
        raise ValueError(f"input_shape must have 1 or 3 channels last. Received: input_shape={shape}")
    if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive int. Received: latent_dim={latent_dim!r}")
    filters = tuple(filters) if isinstance(filters, (list, tuple)) else filters
    if not isinstance(filters, tuple) or not filters or any(not isinstance(f, int) or f < 1 for f in filters):
        raise ValueError(f"filters must be a non-empty sequence of positive ints. Received: filters={filters!r}")
    smallest = 2 ** len(filters)
    if min(shape[:2]) < smallest:
        raise ValueError(f"input_shape={shape}: {len(filters)} stride-2 convolutions need height and width of at least "
                         f"{smallest}")
    return shape, filters


def build_encoder(input_shape, latent_dim: int, filters, *, variational: bool = False, corruption=None):
    """Images in [0, 255] -> the code ``[B, latent_dim]`` (``[z_mean, z_log_var]`` when
    ``variational``); ``corruption``: a layer applied first (the denoising autoencoder's)."""
    images = keras.Input(shape=input_shape, name="images")
    x = images
    if corruption is not None:
        x = corruption(x)
    x = hk_layers.Preprocessing("tf", name="preprocessing")(x)
    for index, count in enumerate(filters, start=1):
        x = layers.Conv2D(count, 3, strides=2, padding="same", activation="relu", name=f"encoder_conv{index}")(x)
    x = layers.Flatten(name="encoder_flatten")(x)
    if variational:
        outputs = [layers.Dense(latent_dim, name="z_mean")(x), layers.Dense(latent_dim, name="z_log_var")(x)]
    else:
        outputs = layers.Dense(latent_dim, name="latent")(x)
    return keras.Model(images, outputs, name="encoder")


def build_decoder(output_shape, latent_dim: int, filters):
    """Latent vectors ``[B, latent_dim]`` -> images ``[B, H, W, C]`` in [0, 255]."""
    height, width, channels = output_shape
    scale = 2 ** len(filters)
    rows, cols = math.ceil(height / scale), math.ceil(width / scale)  # the encoder's last map ("same" padding)
    z = keras.Input(shape=(latent_dim,), name="z")
    x = layers.Dense(rows * cols * filters[-1], activation="relu", name="decoder_dense")(z)
    x = layers.Reshape((rows, cols, filters[-1]), name="decoder_reshape")(x)
    for index, count in enumerate(reversed(filters), start=1):
        x = layers.Conv2DTranspose(count, 4, strides=2, padding="same", activation="relu", name=f"decoder_deconv{index}")(x)
    if (rows * scale, cols * scale) != (height, width):
        x = layers.Cropping2D(((0, rows * scale - height), (0, cols * scale - width)), name="decoder_crop")(x)
    x = layers.Conv2D(channels, 3, padding="same", activation="sigmoid", name="decoder_output")(x)
    images = _generative().ToPixels(name="to_pixels")(x)
    return keras.Model(z, images, name="decoder")


@register_model(
    "autoencoder", task="generative", family="autoencoder", input_shape=DEFAULT_SHAPE, reference=REFERENCE_AE,
    preprocessing="tf", parameters=321_377,
    description=("Undercomplete convolutional autoencoder: conv encoder -> latent_dim bottleneck -> transposed-conv "
                 "decoder; pixels [0, 255] in and out; .encoder / .decoder sub-models"),
)
def autoencoder(card, input_shape=None, latent_dim=32, filters=DEFAULT_FILTERS, reconstruction="bernoulli", sigma=0.1,
                weights=None, name=None):
    """Build an undercomplete autoencoder (:class:`hybrid_keras.generative.Autoencoder`).

    ``input_shape``: ``(H, W, 1 or 3)``, default (28, 28, 1). ``latent_dim``: the bottleneck's
    size. ``filters``: the encoder's convolutions (each halves the size). ``reconstruction``:
    "bernoulli" (cross-entropy) or "gaussian" (squared error, ``sigma`` on [0, 1] intensities).
    ``weights``: None or a ``.weights.h5`` saved from a model built with the same arguments.
    """
    shape, filters = _check(input_shape, latent_dim, filters)
    model = _generative().Autoencoder(build_encoder(shape, latent_dim, filters), build_decoder(shape, latent_dim, filters),
                                      reconstruction=reconstruction, sigma=sigma, name=name or "autoencoder")
    return common.load_weights(model, card, weights, converters={})


@register_model(
    "denoising_autoencoder", task="generative", family="autoencoder", input_shape=DEFAULT_SHAPE, reference=REFERENCE_DAE,
    preprocessing="tf", parameters=321_377,
    description=("Denoising autoencoder: the autoencoder trained on corrupted inputs (Gaussian noise_stddev and/or "
                 "masking mask_fraction, a training-only layer); clean images at inference"),
)
def denoising_autoencoder(card, input_shape=None, latent_dim=32, filters=DEFAULT_FILTERS, noise_stddev=0.3,
                          mask_fraction=0.0, reconstruction="bernoulli", sigma=0.1, seed=None, weights=None, name=None):
    """Build a denoising autoencoder: :func:`autoencoder` with a
    :class:`hybrid_keras.generative.Corruption` layer first in its encoder, active only in
    training: masking noise (each value zeroed with probability ``mask_fraction``, Vincent et
    al.'s MNIST corruption) then Gaussian noise of standard deviation ``noise_stddev`` times 255,
    clipped to [0, 255]. The loss compares the reconstruction with the clean input. ``seed``:
    the corruption's SeedGenerator. Other arguments as :func:`autoencoder`.
    """
    shape, filters = _check(input_shape, latent_dim, filters)
    corruption = _generative().Corruption(noise_stddev=noise_stddev, mask_fraction=mask_fraction, seed=seed,
                                          name="corruption")
    encoder = build_encoder(shape, latent_dim, filters, corruption=corruption)
    model = _generative().Autoencoder(encoder, build_decoder(shape, latent_dim, filters), reconstruction=reconstruction,
                                      sigma=sigma, name=name or "denoising_autoencoder")
    return common.load_weights(model, card, weights, converters={})


@register_model(
    "vae", task="generative", family="autoencoder", input_shape=DEFAULT_SHAPE, reference=REFERENCE_VAE,
    preprocessing="tf", parameters=271_202,
    description=("Variational autoencoder: conv encoder -> z_mean, z_log_var; z = mu + sigma * eps (seeded); "
                 "transposed-conv decoder; loss = reconstruction + beta KL, ELBO terms as metrics"),
)
def vae(card, input_shape=None, latent_dim=16, filters=DEFAULT_FILTERS, reconstruction="bernoulli", sigma=0.1, beta=1.0,
        seed=None, weights=None, name=None):
    """Build a variational autoencoder (:class:`hybrid_keras.generative.VariationalAutoencoder`).

    ``reconstruction``: the likelihood p(x|z), "bernoulli" (MNIST) or "gaussian" with fixed
    ``sigma`` on intensities in [0, 1] (colour images). ``beta``: the KL term's weight (1: the
    ELBO). ``seed``: the reparameterisation's SeedGenerator. Other arguments as
    :func:`autoencoder`. ``model(images)`` gives ``{"reconstruction", "z_mean", "z_log_var"}``.
    """
    shape, filters = _check(input_shape, latent_dim, filters)
    model = _generative().VariationalAutoencoder(
        build_encoder(shape, latent_dim, filters, variational=True), build_decoder(shape, latent_dim, filters),
        reconstruction=reconstruction, sigma=sigma, beta=beta, seed=seed, name=name or "vae")
    return common.load_weights(model, card, weights, converters={})
