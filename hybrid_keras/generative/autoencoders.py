"""Autoencoders and the variational autoencoder: the models' training logic, their losses, and export.

An :class:`Autoencoder` wraps two functional sub-models, ``encoder`` (images -> latent code)
and ``decoder`` (latent code -> images). Images go in and come out as raw pixels, floats in
[0, 255] (the zoo's convention: any scaling is a layer inside the model; the decoder ends in a
sigmoid times 255). Training is plain ``model.compile(optimizer)`` + ``model.fit(images)``: the
model computes its own loss (``compute_loss`` is overridden, which Keras 3 honours on every
backend, metrics included), with the images themselves as the target, or ``y`` when given.

A denoising autoencoder (Vincent et al., ICML 2008) is the same class with a
:class:`Corruption` layer at the start of its encoder: Gaussian and/or masking noise on the raw
pixels, applied only when ``training=True``, so inference takes clean images and the loss
compares the reconstruction with the clean input.

:class:`VariationalAutoencoder` (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR
2014): the encoder gives ``z_mean`` and ``z_log_var`` of a diagonal Gaussian posterior
q(z|x); :class:`Reparameterization` draws ``z = mu + sigma * eps`` with ``eps`` from
``keras.random.normal`` and a ``keras.random.SeedGenerator``; the decoder gives the mean of
p(x|z). The loss per image is the negative ELBO,

    reconstruction + beta * KL(q(z|x) || N(0, I)),

in nats, summed over pixels and latent dimensions (so the two terms are on the same scale)
and averaged over the batch. ``model.fit`` reports ``loss``, ``reconstruction``, ``kl`` and
``elbo`` (``-(reconstruction + kl)``, whatever ``beta``) as separate metrics, and ``mse``.
The reconstruction term is one of

- ``"bernoulli"``: binary cross-entropy of the pixel intensities in [0, 1] against the
  decoder's means (Kingma & Welling's MNIST likelihood). For grey values other than 0 and 1
  this is the usual cross-entropy, not a normalised likelihood, so the ELBO is comparable
  between models but is not a bound on a density;
- ``"gaussian"``: -log N(x; decoder mean, ``sigma``^2 I) of the intensities in [0, 1] with a
  fixed ``sigma``: squared error / (2 sigma^2) plus its normalising constant, a true bound on
  the log density of the [0, 1]-scaled image.

``KL`` is the closed form for two Gaussians, 0.5 * sum(sigma^2 + mu^2 - 1 - log sigma^2).
:class:`KLWarmup` anneals beta from 0 (Bowman et al. 2016; Sønderby et al. 2016), and
:func:`elbo_per_image` estimates every held-out image's ELBO by Monte Carlo.

:func:`export_autoencoder` writes a TF Serving SavedModel with ``encode``, ``decode`` and
``reconstruct`` signatures, checked in a fresh TensorFlow-only process.
"""

from __future__ import annotations

import math

import numpy as np

import keras
from keras import ops

RECONSTRUCTIONS = ("bernoulli", "gaussian")
PIXEL_MAX = 255.0
_EPSILON = 1e-7  # probabilities are kept in [eps, 1 - eps] for the cross-entropy, as Keras does


# ----------------------------------------------------------------------------- losses

def check_reconstruction(reconstruction: str, sigma: float) -> None:
    if reconstruction not in RECONSTRUCTIONS:
        raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}. Received: reconstruction={reconstruction!r}")
    if not (isinstance(sigma, (int, float)) and sigma > 0):
        raise ValueError(f"sigma must be a positive number (the Gaussian likelihood's standard deviation on [0, 1] "
                         f"intensities). Received: sigma={sigma!r}")


def reconstruction_nll(images, reconstructions, reconstruction: str = "bernoulli", sigma: float = 0.1):
    """Per-image negative log-likelihood in nats, ``[B]``: images and reconstructions are pixels in
    [0, 255] (scaled to [0, 1] here); summed over pixels and channels. See the module docstring."""
    check_reconstruction(reconstruction, sigma)
    target = ops.cast(images, "float32") / PIXEL_MAX
    mean = ops.cast(reconstructions, "float32") / PIXEL_MAX
    axes = tuple(range(1, len(target.shape)))
    if reconstruction == "bernoulli":
        p = ops.clip(mean, _EPSILON, 1.0 - _EPSILON)
        return -ops.sum(target * ops.log(p) + (1.0 - target) * ops.log(1.0 - p), axis=axes)
    pixels = math.prod(int(side) for side in target.shape[1:])
    constant = 0.5 * pixels * math.log(2.0 * math.pi * sigma**2)
    return ops.sum(ops.square(target - mean), axis=axes) / (2.0 * sigma**2) + constant


def kl_divergence(z_mean, z_log_var):
    """KL(N(z_mean, exp(z_log_var)) || N(0, I)) per example in nats, ``[B]`` (closed form)."""
    z_mean, z_log_var = ops.cast(z_mean, "float32"), ops.cast(z_log_var, "float32")
    return 0.5 * ops.sum(ops.exp(z_log_var) + ops.square(z_mean) - 1.0 - z_log_var, axis=-1)


def _mean(values, sample_weight):
    if sample_weight is None:
        return ops.mean(values)
    weights = ops.reshape(ops.cast(sample_weight, values.dtype), (-1,))
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1e-12)


def _pixel_mse(images, reconstructions):
    """Per-image mean squared error of intensities in [0, 1], ``[B]``."""
    difference = (ops.cast(images, "float32") - ops.cast(reconstructions, "float32")) / PIXEL_MAX
    return ops.mean(ops.square(difference), axis=tuple(range(1, len(difference.shape))))


# ----------------------------------------------------------------------------- layers

@keras.saving.register_keras_serializable(package="hybrid_keras")
class Corruption(keras.layers.Layer):
    """The denoising autoencoder's corruption of raw pixels in [0, ``max_value``], active only with
    ``training=True`` (at inference the layer is the identity).

    ``mask_fraction``: masking noise (Vincent et al. 2008): each value (pixel and channel) is set
    to 0 with this probability. ``noise_stddev``: then additive Gaussian noise with standard
    deviation ``noise_stddev * max_value`` (so 0.3 means 30% of the intensity range). The result
    is clipped to [0, ``max_value``], so a corrupted image is still an image. ``seed``: for the
    layer's ``keras.random.SeedGenerator``.
    """

    def __init__(self, noise_stddev: float = 0.0, mask_fraction: float = 0.0, max_value: float = PIXEL_MAX,
                 seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(noise_stddev, (int, float)) and noise_stddev >= 0):
            raise ValueError(f"noise_stddev must be a number >= 0. Received: noise_stddev={noise_stddev!r}")
        if not (isinstance(mask_fraction, (int, float)) and 0 <= mask_fraction < 1):
            raise ValueError(f"mask_fraction must be in [0, 1). Received: mask_fraction={mask_fraction!r}")
        if not (isinstance(max_value, (int, float)) and max_value > 0):
            raise ValueError(f"max_value must be > 0. Received: max_value={max_value!r}")
        self.noise_stddev, self.mask_fraction, self.max_value = float(noise_stddev), float(mask_fraction), float(max_value)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        x = ops.cast(images, self.compute_dtype)
        if not training:
            return x
        if self.mask_fraction > 0:
            keep = keras.random.uniform(ops.shape(x), seed=self.seed_generator, dtype=self.compute_dtype)
            x = x * ops.cast(keep >= self.mask_fraction, self.compute_dtype)
        if self.noise_stddev > 0:
            x = x + keras.random.normal(ops.shape(x), stddev=self.noise_stddev * self.max_value,
                                        seed=self.seed_generator, dtype=self.compute_dtype)
        return ops.clip(x, 0.0, self.max_value)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "noise_stddev": self.noise_stddev, "mask_fraction": self.mask_fraction,
                "max_value": self.max_value, "seed": self.seed}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class ToPixels(keras.layers.Layer):
    """Intensities in [0, 1] (a decoder's sigmoid means) -> pixels in [0, ``max_value``]. (Keras'
    ``Rescaling`` would do the arithmetic, but it is a tf.data layer that probes for TensorFlow.)"""

    def __init__(self, max_value: float = PIXEL_MAX, **kwargs):
        super().__init__(**kwargs)
        self.max_value = float(max_value)

    def call(self, intensities):
        return ops.cast(intensities, self.compute_dtype) * self.max_value

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_value": self.max_value}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class Reparameterization(keras.layers.Layer):
    """``[z_mean, z_log_var] -> z = z_mean + exp(z_log_var / 2) * eps``, ``eps ~ N(0, I)`` drawn with
    ``keras.random.normal`` from the layer's ``SeedGenerator(seed)``: differentiable in both inputs
    (Kingma & Welling's reparameterisation trick). Two layers with the same seed draw the same
    sequence of ``eps``; each call advances it."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        eps = keras.random.normal(ops.shape(z_mean), seed=self.seed_generator, dtype=z_mean.dtype)
        return z_mean + ops.exp(0.5 * z_log_var) * eps

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


# ----------------------------------------------------------------------------- models

def _shape_text(shape) -> str:
    return "[" + ", ".join("batch" if side is None else str(side) for side in shape) + "]"


@keras.saving.register_keras_serializable(package="hybrid_keras")
class Autoencoder(keras.Model):
    """``encoder`` (images [B, H, W, C] in [0, 255] -> code [B, latent_dim]) and ``decoder`` (code ->
    images in [0, 255]); ``model(images)`` is ``decoder(encoder(images))``.

    Train with ``model.compile(optimizer=...)`` (no loss: the model computes its own, see
    ``reconstruction`` and ``sigma`` in the module docstring) and ``model.fit(images)``; the
    target is the input itself, or ``y`` when given. Reported: ``loss`` (the per-image
    reconstruction NLL in nats) and ``mse`` (per pixel, intensities in [0, 1]).
    """

    def __init__(self, encoder, decoder, reconstruction: str = "bernoulli", sigma: float = 0.1, **kwargs):
        super().__init__(**kwargs)
        self._set_up(encoder, decoder, reconstruction, sigma)
        self.build(encoder.input_shape)

    def _set_up(self, encoder, decoder, reconstruction, sigma):
        check_reconstruction(reconstruction, sigma)
        self.encoder, self.decoder = encoder, decoder
        self.reconstruction, self.sigma = reconstruction, float(sigma)
        self.image_shape = tuple(encoder.input_shape[1:])
        self.latent_dim = int(decoder.input_shape[-1])
        if len(self.image_shape) != 3 or None in self.image_shape:
            raise ValueError(f"encoder must take images of a fixed [batch, H, W, C] shape. Received: encoder input "
                             f"shape {encoder.input_shape}")
        if tuple(decoder.output_shape[1:]) != self.image_shape:
            raise ValueError(f"decoder must give images of the encoder's input shape {self.image_shape}. Received: "
                             f"decoder output shape {decoder.output_shape}")
        self.mse_tracker = keras.metrics.Mean(name="mse")

    def build(self, input_shape):
        self.built = True  # the sub-models are built already

    # -- checks with clear messages (Keras' own would name an internal layer)
    def check_images(self, images):
        shape = tuple(images.shape)
        height, width, channels = self.image_shape
        if len(shape) != 4 or shape[-1] != channels:
            raise ValueError(f"images must be {_shape_text((None, height, width, channels))} with {channels} "
                             f"channel{'s' if channels > 1 else ''} last, pixels in [0, 255]. Received: images of shape "
                             f"{shape}")
        if shape[1:3] != (height, width):
            raise ValueError(f"images must be {height}x{width} (the model's input size). Received: images of shape "
                             f"{shape}")

    def check_latent(self, z):
        shape = tuple(z.shape)
        if len(shape) != 2 or shape[-1] != self.latent_dim:
            raise ValueError(f"latent vectors must be [batch, {self.latent_dim}] (latent_dim={self.latent_dim}). "
                             f"Received: z of shape {shape}")

    def call(self, images, training=None):
        self.check_images(images)
        return self.decoder(self.encoder(images, training=training), training=training)

    def encode(self, images):
        """The code of clean ``images`` (inference mode)."""
        images = ops.convert_to_tensor(images, "float32")
        self.check_images(images)
        return self.encoder(images, training=False)

    def decode(self, z):
        """Images in [0, 255] for latent vectors ``z`` ``[B, latent_dim]``."""
        z = ops.convert_to_tensor(z, "float32")
        self.check_latent(z)
        return self.decoder(z, training=False)

    def reconstruct(self, images):
        """``decode(encode(images))``, deterministic."""
        return self.decode(self.encode(images))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        target = x if y is None else y
        loss = _mean(reconstruction_nll(target, y_pred, self.reconstruction, self.sigma), sample_weight)
        self.mse_tracker.update_state(_mean(_pixel_mse(target, y_pred), sample_weight))
        return loss

    def get_config(self):
        return {**super().get_config(), "encoder": keras.saving.serialize_keras_object(self.encoder),
                "decoder": keras.saving.serialize_keras_object(self.decoder),
                "reconstruction": self.reconstruction, "sigma": self.sigma}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("encoder", "decoder"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class VariationalAutoencoder(Autoencoder):
    """The VAE: ``encoder`` (images -> ``[z_mean, z_log_var]``, each [B, latent_dim]), a
    :class:`Reparameterization` sampler, ``decoder`` (z -> images in [0, 255]).

    ``model(images)`` returns ``{"reconstruction", "z_mean", "z_log_var"}``: with
    ``training=True`` the reconstruction decodes a sampled z, otherwise the posterior mean (so
    inference is deterministic). The loss is the negative ELBO with the KL term weighted by
    ``kl_weight`` (a non-trainable variable, ``beta`` unless :class:`KLWarmup` changes it);
    ``fit`` and ``evaluate`` report ``loss``, ``reconstruction``, ``kl``, ``elbo`` and ``mse``
    (``evaluate`` decodes a sampled z too, so its ELBO is the same Monte-Carlo estimate).
    """

    def __init__(self, encoder, decoder, reconstruction: str = "bernoulli", sigma: float = 0.1, beta: float = 1.0,
                 seed: int | None = None, **kwargs):
        if not (isinstance(beta, (int, float)) and beta >= 0):
            raise ValueError(f"beta must be a number >= 0 (the KL term's weight). Received: beta={beta!r}")
        if not isinstance(encoder.output, (list, tuple)) or len(encoder.outputs) != 2:
            raise ValueError(f"encoder must give [z_mean, z_log_var]. Received: an encoder with outputs "
                             f"{encoder.output_shape}")
        # All state exists before the model is marked built, so the base class's __init__ (which
        # builds) is skipped for keras.Model's.
        keras.Model.__init__(self, **kwargs)
        self._set_up(encoder, decoder, reconstruction, sigma)
        self.beta, self.seed = float(beta), seed
        self.sampler = Reparameterization(seed=seed, name="reparameterization")
        self.kl_weight = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.beta),
                                         trainable=False, name="kl_weight")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.elbo_tracker = keras.metrics.Mean(name="elbo")
        self.build(encoder.input_shape)

    def call(self, images, training=None):
        self.check_images(images)
        z_mean, z_log_var = self.encoder(images, training=training)
        z = self.sampler([z_mean, z_log_var]) if training else z_mean
        return {"reconstruction": self.decoder(z, training=training), "z_mean": z_mean, "z_log_var": z_log_var}

    def reconstruct(self, images):
        """Images decoded from the posterior mean, deterministic."""
        z_mean, _ = self.encode(images)
        return self.decode(z_mean)

    def sample(self, count: int, seed: int | None = None):
        """``count`` images decoded from z ~ N(0, I) (``seed``: for a fresh SeedGenerator)."""
        z = keras.random.normal((int(count), self.latent_dim), seed=keras.random.SeedGenerator(seed))
        return self.decode(z)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        target = x if y is None else y
        z_mean, z_log_var = y_pred["z_mean"], y_pred["z_log_var"]
        reconstructions = y_pred["reconstruction"]
        if not training:  # the model's output decoded the posterior mean; the ELBO takes a sample
            reconstructions = self.decoder(self.sampler([z_mean, z_log_var]), training=False)
        reconstruction = _mean(reconstruction_nll(target, reconstructions, self.reconstruction, self.sigma), sample_weight)
        kl = _mean(kl_divergence(z_mean, z_log_var), sample_weight)
        self.reconstruction_tracker.update_state(reconstruction)
        self.kl_tracker.update_state(kl)
        self.elbo_tracker.update_state(-(reconstruction + kl))
        self.mse_tracker.update_state(_mean(_pixel_mse(target, reconstructions), sample_weight))
        return reconstruction + ops.cast(self.kl_weight, "float32") * kl

    def get_config(self):
        return {**super().get_config(), "beta": self.beta, "seed": self.seed}


class KLWarmup(keras.callbacks.Callback):
    """KL warm-up: the VAE's ``kl_weight`` goes linearly from 0 at the first epoch to its ``beta``
    after ``epochs`` epochs, then stays there (set at the start of each epoch, which every
    backend's training loop reads)."""

    def __init__(self, epochs: int):
        super().__init__()
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int. Received: epochs={epochs!r}")
        self.epochs = epochs

    def on_epoch_begin(self, epoch, logs=None):
        if not isinstance(self.model, VariationalAutoencoder):
            raise ValueError(f"KLWarmup needs a VariationalAutoencoder. Received: {type(self.model).__name__}")
        self.model.kl_weight.assign(self.model.beta * min(1.0, epoch / self.epochs))


# ----------------------------------------------------------------------------- evaluation

def elbo_per_image(model: VariationalAutoencoder, images, *, samples: int = 1, batch_size: int = 256,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Each image's ELBO and its two terms, in nats: ``{"elbo", "reconstruction", "kl"}``, arrays
    ``[N]``, with ``elbo = -(reconstruction + kl)``. The KL is exact; the reconstruction term
    E_q[-log p(x|z)] is the mean over ``samples`` draws of z (seeded by ``seed``)."""
    if not isinstance(model, VariationalAutoencoder):
        raise ValueError(f"model must be a VariationalAutoencoder. Received: {type(model).__name__}")
    if not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int. Received: samples={samples!r}")
    images = np.asarray(images)
    generator = keras.random.SeedGenerator(seed)
    reconstruction, kl = [], []
    for start in range(0, len(images), batch_size):
        batch = ops.convert_to_tensor(images[start:start + batch_size], "float32")
        z_mean, z_log_var = model.encode(batch)
        total = 0.0
        for _ in range(samples):
            eps = keras.random.normal(ops.shape(z_mean), seed=generator)
            decoded = model.decoder(z_mean + ops.exp(0.5 * z_log_var) * eps, training=False)
            total = total + reconstruction_nll(batch, decoded, model.reconstruction, model.sigma)
        reconstruction.append(ops.convert_to_numpy(total) / samples)
        kl.append(ops.convert_to_numpy(kl_divergence(z_mean, z_log_var)))
    reconstruction, kl = np.concatenate(reconstruction), np.concatenate(kl)
    return {"elbo": -(reconstruction + kl), "reconstruction": reconstruction, "kl": kl}


# ----------------------------------------------------------------------------- export

def _export_functions(model, tf):
    """The signatures' functions and their output names."""
    variational = isinstance(model, VariationalAutoencoder)
    height, width, channels = model.image_shape
    images_spec = tf.TensorSpec((None, height, width, channels), tf.float32, name="images")
    z_spec = tf.TensorSpec((None, model.latent_dim), tf.float32, name="z")

    def checked(tensor, expected, name, what):
        # Signatures do not check the shapes of requests; without this a wrong size would fail
        # deep inside the graph with a matrix-size message.
        check = tf.debugging.assert_equal(tf.shape(tensor)[1:], tf.constant(expected, tf.int32),
                                          message=f"{name} must be {what}")
        with tf.control_dependencies([check]):
            return tf.identity(tensor)

    image_text = f"float32 [batch, {height}, {width}, {channels}] images, pixels in [0, 255]"

    def encode(images):
        code = model.encoder(checked(images, [height, width, channels], "images", image_text), training=False)
        return {"z_mean": code[0], "z_log_var": code[1]} if variational else {"latent": code}

    def decode(z):
        z = checked(z, [model.latent_dim], "z", f"float32 [batch, {model.latent_dim}] latent vectors")
        return {"images": model.decoder(z, training=False)}

    def reconstruct(images):
        code = model.encoder(checked(images, [height, width, channels], "images", image_text), training=False)
        return {"images": model.decoder(code[0] if variational else code, training=False)}

    return {"encode": (encode, images_spec), "decode": (decode, z_spec), "reconstruct": (reconstruct, images_spec),
            "serving_default": (reconstruct, images_spec)}


def export_autoencoder(model: Autoencoder, path, *, verify: bool = True, verbose: bool = False):
    """Write ``model`` (an :class:`Autoencoder` or :class:`VariationalAutoencoder`) as a TF Serving
    SavedModel at the version directory ``path``, verified by default in a fresh TensorFlow-only
    process. Signatures (pixels are float32 in [0, 255]):

    - ``encode``: ``images`` [B, H, W, C] -> ``latent`` [B, latent_dim] (an autoencoder) or
      ``z_mean`` and ``z_log_var`` (a VAE);
    - ``decode``: ``z`` float32 [B, latent_dim] -> ``images`` [B, H, W, C];
    - ``reconstruct`` (also ``serving_default``): ``images`` -> ``images`` (a VAE decodes the
      posterior mean).

    A request of another image size, channel count or latent size is refused with an error
    that says what the signature takes. Returns the path written.
    """
    import tensorflow as tf

    from hybrid_keras.export import check_served, serve_in_fresh_process, write_archive

    if not isinstance(model, Autoencoder):
        raise ValueError(f"model must be an Autoencoder or VariationalAutoencoder. Received: {type(model).__name__}")
    functions = _export_functions(model, tf)
    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, (function, spec) in functions.items():
        archive.add_endpoint(name, function, [spec])
    variational = isinstance(model, VariationalAutoencoder)
    metadata = {"model": model.name, "task": "generative", "image_shape": list(model.image_shape),
                "latent_dim": model.latent_dim, "pixel_range": [0, PIXEL_MAX],
                "signatures": {"encode": ["z_mean", "z_log_var"] if variational else ["latent"],
                               "decode": ["images"], "reconstruct": ["images"]}}

    def check(staging):
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(3, *model.image_shape)).astype(np.float32)
        z = rng.normal(size=(3, model.latent_dim)).astype(np.float32)
        inputs, expected = {}, {}
        for name, (function, spec) in functions.items():
            argument = images if spec.name == "images" else z
            inputs[f"{name}.{spec.name}.0"] = argument
            for output, value in function(ops.convert_to_tensor(argument)).items():
                expected[f"{name}/{output}/0"] = ops.convert_to_numpy(value)
        check_served(serve_in_fresh_process(staging, inputs), expected, staging)

    return write_archive(archive, path, metadata, check if verify else None, verbose=verbose)
