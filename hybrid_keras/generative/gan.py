"""DCGAN training with its own ``train_step`` on every backend, and the generator's export.

Reference: A. Radford, L. Metz, S. Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016; the losses are Goodfellow et al.'s
("Generative Adversarial Nets", NeurIPS 2014), with the generator's non-saturating form.

One training step, as ``fit`` runs it on a batch of real images ``x`` (raw pixels, [0, 255]):

1. Discriminator: ``z ~ N(0, I)``; with the generator's images ``G(z)`` held fixed, one Adam
   step on ``d_loss = -log D(x) - log(1 - D(G(z)))`` (batch means; real and generated images
   go through the discriminator as separate batches, so batch norm sees one kind at a time,
   as in the paper's reference code).
2. Generator: fresh ``z``; one Adam step on the non-saturating ``g_loss = -log D(G(z))``
   (Goodfellow et al. Sec. 3: it gives strong gradients while the discriminator still wins
   easily, where ``log(1 - D(G(z)))`` saturates).

Both optimizers are Adam with the paper's learning rate 2e-4 and beta_1 0.5 unless given.
The noise comes from ``keras.random.normal`` with the model's ``keras.random.SeedGenerator``,
so a run with the same seed (and weights) repeats itself. Logged metrics: ``d_loss``,
``g_loss``, ``d_x`` (the mean D(x), the probability the discriminator gives real images) and
``d_g_z`` (the mean D(G(z)) in step 1, before its update).

The step is written once in ``keras.ops``; only "take the gradient of this loss with respect
to this network's weights and apply it" differs per backend, following Keras 3's guides to
customising ``fit()``: TensorFlow records a ``GradientTape``; PyTorch calls
``loss.backward()`` and reads ``.grad``; JAX is stateless (``train_step(state, data)``): the
whole step runs in a ``keras.StatelessScope`` over the state ``fit`` passes in, each loss is a
pure function of one network's weights through ``stateless_call``, differentiated with
``jax.value_and_grad``, and the new state is read back from the scope.

A network is left alone by training while its ``trainable`` is False (set it, then compile
again): the generator then only makes images for the discriminator's step, and vice versa.

:func:`export_generator` writes the generator as a SavedModel with ``generate(z)`` and
``generate_from_seed(seed, count)`` signatures returning uint8 images.
"""

from __future__ import annotations

import numpy as np

import keras
from keras import ops

LEARNING_RATE = 2e-4  # the paper's Adam settings
BETA_1 = 0.5


def _mean_softplus(x):
    return ops.mean(ops.softplus(x))


def discriminator_loss(real_logits, fake_logits):
    """``-mean log sigmoid(real) - mean log(1 - sigmoid(fake))``: binary cross-entropy with
    real images labelled 1 and generated ones 0, from the discriminator's logits."""
    return _mean_softplus(-ops.cast(real_logits, "float32")) + _mean_softplus(ops.cast(fake_logits, "float32"))


def generator_loss(fake_logits):
    """The non-saturating generator loss ``-mean log sigmoid(fake)`` (generated images labelled real)."""
    return _mean_softplus(-ops.cast(fake_logits, "float32"))


def _default_optimizer():
    return keras.optimizers.Adam(LEARNING_RATE, beta_1=BETA_1)


def _checked_network(network, name: str):
    if not isinstance(network, keras.Model):
        raise ValueError(f"{name} must be a keras.Model. Received: {type(network).__name__}")
    if len(network.inputs) != 1 or len(network.outputs) != 1:
        raise ValueError(f"{name} must have one input and one output. Received: {len(network.inputs)} inputs, "
                         f"{len(network.outputs)} outputs")
    return network


class _OptimizerPair:
    """The two optimizers where Keras' trainer expects one (``model.optimizer``). Under JAX,
    ``fit`` carries ``model.optimizer.variables`` through ``train_step`` as state and writes
    them back afterwards, so this lists both optimizers' variables, the discriminator's first."""

    def __init__(self, gan):
        self._gan = gan

    @property
    def variables(self):
        return list(self._gan.d_optimizer.variables) + list(self._gan.g_optimizer.variables)

    @property
    def built(self):
        return self._gan.d_optimizer.built and self._gan.g_optimizer.built

    def build(self, variables=None):
        gan = self._gan
        for optimizer, network in ((gan.d_optimizer, gan.discriminator), (gan.g_optimizer, gan.generator)):
            if not optimizer.built:
                optimizer.build(network.trainable_variables)

    @property
    def iterations(self):
        return self._gan.g_optimizer.iterations

    def __repr__(self):
        return f"<optimizers d={self._gan.d_optimizer.name}, g={self._gan.g_optimizer.name}>"


@keras.saving.register_keras_serializable(package="hybrid_keras")
class DCGAN(keras.Model):
    """A generator and a discriminator trained against each other by ``fit``.

    ``generator``: a model ``z [B, latent_dim] -> images [B, H, W, C]`` (pixels in [0, 255]);
    ``discriminator``: images of that shape -> one logit per image ``[B, 1]`` (the zoo's
    ``dcgan_generator`` and ``dcgan_discriminator``). ``seed``: the noise's seed (None:
    random). Calling the model generates: ``gan(z)`` is ``generator(z)``.

    ``compile(d_optimizer=None, g_optimizer=None, ...)``: Adam(2e-4, beta_1=0.5) each by
    default. ``fit(images)`` then trains on real images (labels, if given, are ignored).
    """

    def __init__(self, generator, discriminator, *, seed=None, **kwargs):
        super().__init__(**kwargs)
        _checked_network(generator, "generator")
        _checked_network(discriminator, "discriminator")
        latent = generator.inputs[0].shape
        if len(latent) != 2 or latent[1] is None:
            raise ValueError(f"generator must take latent vectors [batch, latent_dim]. Received: input shape {latent}")
        image_shape = tuple(generator.outputs[0].shape[1:])
        if tuple(discriminator.inputs[0].shape[1:]) != image_shape:
            raise ValueError(f"discriminator must take the generator's images {image_shape}. "
                             f"Received: input shape {tuple(discriminator.inputs[0].shape[1:])}")
        if tuple(discriminator.outputs[0].shape[1:]) != (1,):
            raise ValueError("discriminator must return one logit per image [batch, 1]. "
                             f"Received: output shape {tuple(discriminator.outputs[0].shape)}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an int or None. Received: seed={seed!r}")
        self.generator, self.discriminator = generator, discriminator
        self.latent_dim, self.image_shape, self.seed = int(latent[1]), image_shape, seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="noise_seed")
        self.d_loss_tracker = keras.metrics.Mean(name="d_loss")
        self.g_loss_tracker = keras.metrics.Mean(name="g_loss")
        self.d_x_tracker = keras.metrics.Mean(name="d_x")
        self.d_g_z_tracker = keras.metrics.Mean(name="d_g_z")
        self.d_optimizer = self.g_optimizer = None
        self.built = True  # both networks are built functional models

    # ------------------------------------------------------------------ configuration
    def compile(self, d_optimizer=None, g_optimizer=None, **kwargs):
        """``d_optimizer``, ``g_optimizer``: Keras optimizers (or their names / configs);
        Adam(2e-4, beta_1=0.5) when None. Other arguments go to ``keras.Model.compile``
        (``jit_compile``, ``run_eagerly``, ``steps_per_execution``); a loss is not taken."""
        for key in ("optimizer", "loss", "metrics"):
            if kwargs.get(key) is not None:
                raise ValueError("DCGAN.compile takes d_optimizer and g_optimizer, and brings its own losses. "
                                 f"Received: {key}={kwargs[key]!r}")
        d_optimizer = keras.optimizers.get(d_optimizer) if d_optimizer is not None else _default_optimizer()
        g_optimizer = keras.optimizers.get(g_optimizer) if g_optimizer is not None else _default_optimizer()
        if d_optimizer is g_optimizer:
            raise ValueError("d_optimizer and g_optimizer must be two optimizer objects (each keeps its "
                             "network's moments). Received: the same object twice")
        super().compile(optimizer=None, **kwargs)
        self.d_optimizer, self.g_optimizer = d_optimizer, g_optimizer
        self.optimizer = _OptimizerPair(self)

    def get_compile_config(self):
        if self.d_optimizer is None:
            return None
        return {"d_optimizer": keras.optimizers.serialize(self.d_optimizer),
                "g_optimizer": keras.optimizers.serialize(self.g_optimizer)}

    def compile_from_config(self, config):
        self.compile(d_optimizer=keras.optimizers.deserialize(config["d_optimizer"]),
                     g_optimizer=keras.optimizers.deserialize(config["g_optimizer"]))
        self.optimizer.build()  # so saved optimizer state has variables to load into

    def get_config(self):
        return {**super().get_config(), "generator": keras.saving.serialize_keras_object(self.generator),
                "discriminator": keras.saving.serialize_keras_object(self.discriminator), "seed": self.seed}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        generator = keras.saving.deserialize_keras_object(config.pop("generator"))
        discriminator = keras.saving.deserialize_keras_object(config.pop("discriminator"))
        return cls(generator, discriminator, **config)

    @property
    def metrics(self):
        return [self.d_loss_tracker, self.g_loss_tracker, self.d_x_tracker, self.d_g_z_tracker]

    # ------------------------------------------------------------------ generating
    def _check_latent(self, z):
        shape = tuple(z.shape)
        if len(shape) != 2 or shape[1] != self.latent_dim:
            raise ValueError(f"z must be latent vectors [batch, {self.latent_dim}]. Received: shape={shape}")

    def call(self, z, training=False):
        self._check_latent(z)
        return self.generator(z, training=training)

    def sample(self, count: int, seed: int = 0, batch_size: int = 256) -> np.ndarray:
        """``count`` images, uint8 ``[count, H, W, C]``, from noise drawn with ``seed``."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive int. Received: count={count!r}")
        z = keras.random.normal((count, self.latent_dim), seed=seed)
        return generate_images(self.generator, ops.convert_to_numpy(z), batch_size=batch_size)

    # ------------------------------------------------------------------ training
    def train_step(self, *args):
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        (data,) = args
        return self._train_step(data)

    def _train_step(self, data):
        """One discriminator step, then one generator step; returns the logs. Backend-agnostic
        but for :meth:`_minimise`."""
        real = ops.cast(data[0] if isinstance(data, (tuple, list)) else data, "float32")
        batch = ops.shape(real)[0]

        z = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)
        fake = ops.stop_gradient(self.generator(z, training=True))

        def discriminator_objective(run):
            real_logits = run(self.discriminator, real)
            fake_logits = run(self.discriminator, fake)
            scores = (ops.mean(ops.sigmoid(real_logits)), ops.mean(ops.sigmoid(fake_logits)))
            return discriminator_loss(real_logits, fake_logits), scores

        d_loss, (d_x, d_g_z) = self._minimise(self.discriminator, self.d_optimizer, discriminator_objective)

        z = keras.random.normal((batch, self.latent_dim), seed=self.seed_generator)

        def generator_objective(run):
            return generator_loss(run(self.discriminator, run(self.generator, z))), ()

        g_loss, _ = self._minimise(self.generator, self.g_optimizer, generator_objective)

        for tracker, value in ((self.d_loss_tracker, d_loss), (self.g_loss_tracker, g_loss),
                               (self.d_x_tracker, d_x), (self.d_g_z_tracker, d_g_z)):
            tracker.update_state(ops.stop_gradient(value))
        return {tracker.name: tracker.result() for tracker in self.metrics}

    def _minimise(self, network, optimizer, objective):
        """Evaluate ``objective(run) -> (loss, extras)`` (``run(net, x)`` calls a network in
        training mode) and take one ``optimizer`` step on ``network``'s trainable weights
        against the loss's gradient. Returns ``(loss, extras)``."""
        variables = network.trainable_variables
        backend = keras.backend.backend()
        if backend == "jax":
            return self._jax_minimise(network, optimizer, objective)
        if backend == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                loss, extras = objective(_run_stateful)
            if variables:
                optimizer.apply(tape.gradient(loss, variables), variables)
            return loss, extras
        if backend == "torch":
            import torch

            for variable in self.trainable_variables:  # gradients of the last step (both networks') are stale
                variable.value.grad = None
            loss, extras = objective(_run_stateful)
            if variables:
                loss.backward()
                with torch.no_grad():
                    optimizer.apply([v.value.grad for v in variables], variables)
            return loss, extras
        raise NotImplementedError(f"DCGAN trains under the tensorflow, jax and torch backends, not {backend!r}")

    def _jax_minimise(self, network, optimizer, objective):
        import jax

        variables = network.trainable_variables
        networks = {id(self.generator): self.generator, id(self.discriminator): self.discriminator}

        def pure(trainable_values):
            # Each network's batch-norm statistics, as updated by its calls so far in this objective.
            updated = {}

            def run(net, x):
                trainable = trainable_values if net is network else [v.value for v in net.trainable_variables]
                non_trainable = updated.get(id(net), [v.value for v in net.non_trainable_variables])
                outputs, updated[id(net)] = net.stateless_call(trainable, non_trainable, x, training=True)
                return outputs

            loss, extras = objective(run)
            return loss, (extras, updated)

        (loss, (extras, updated)), grads = jax.value_and_grad(pure, has_aux=True)([v.value for v in variables])
        for key, values in updated.items():
            for variable, value in zip(networks[key].non_trainable_variables, values):
                variable.assign(value)
        if variables:
            optimizer.apply(grads, variables)
        return loss, extras

    def _jax_train_step(self, state, data):
        groups = (self.trainable_variables, self.non_trainable_variables, list(self.optimizer.variables),
                  self.metrics_variables)
        if len(state) != len(groups) or any(len(g) != len(s) for g, s in zip(groups, state)):
            raise ValueError("DCGAN.train_step under JAX expects the state fit() passes: (trainable, non-trainable, "
                             "optimizer, metrics variables). Received: a state of another structure")
        mapping = [(variable, value) for group, values in zip(groups, state) for variable, value in zip(group, values)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            logs = self._train_step(data)

        def current(variable, value):
            new = scope.get_current_value(variable)
            return value if new is None else new

        new_state = tuple([current(v, value) for v, value in zip(group, values)] for group, values in zip(groups, state))
        return logs, new_state


def _run_stateful(network, x):
    return network(x, training=True)


def to_uint8(images):
    """Pixels in [0, 255] (float) -> uint8, rounded and clipped (keras.ops, any backend)."""
    return ops.cast(ops.round(ops.clip(images, 0.0, 255.0)), "uint8")


def _generator_of(model):
    return model.generator if isinstance(model, DCGAN) else _checked_network(model, "generator")


def generate_images(generator, z, batch_size: int = 256) -> np.ndarray:
    """uint8 images ``[B, H, W, C]`` from latent vectors ``z`` ``[B, latent_dim]`` (NumPy), in batches.
    ``generator``: a generator model or a :class:`DCGAN`."""
    generator = _generator_of(generator)
    latent_dim = int(generator.inputs[0].shape[-1])
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != latent_dim:
        raise ValueError(f"z must be latent vectors [batch, {latent_dim}]. Received: shape={z.shape}")
    if len(z) == 0:
        return np.zeros((0, *generator.outputs[0].shape[1:]), np.uint8)
    return np.concatenate([ops.convert_to_numpy(to_uint8(generator(z[i:i + batch_size], training=False)))
                           for i in range(0, len(z), batch_size)])


def export_generator(model, path, *, verify: bool = True, verbose: bool = False):
    """Write a generator (or a :class:`DCGAN`'s) as a TF Serving SavedModel at the version
    directory ``path`` and, by default, verify it in a fresh TensorFlow-only process.

    Signatures:

    - ``generate`` (also ``serving_default``): ``z`` float32 ``[B, latent_dim]`` -> ``images``
      uint8 ``[B, H, W, C]``;
    - ``generate_from_seed``: ``seed`` int64 scalar, ``count`` int32 scalar -> ``images`` and the
      ``z`` they came from (``tf.random.stateless_normal`` with seed ``[seed, 0]``: the same
      seed gives the same images on every call and every server).

    A ``z`` of another length is refused with an InvalidArgumentError that says the length
    wanted. Returns the path written.
    """
    import tensorflow as tf

    from hybrid_keras.export import (ExportVerificationError, serve_in_fresh_process, write_archive)

    generator = _generator_of(model)
    latent_dim = int(generator.inputs[0].shape[-1])
    image_shape = [int(side) for side in generator.outputs[0].shape[1:]]

    def checked(z):
        # The signature's [None, latent_dim] is not enforced when it is called: say what is wrong
        # before the first layer's matrix product does, less clearly.
        check = tf.debugging.assert_equal(tf.shape(z)[1], latent_dim,
                                          message=f"z must be latent vectors [batch, {latent_dim}]")
        with tf.control_dependencies([check]):
            return tf.identity(z)

    def generate(z):
        return {"images": to_uint8(generator(checked(z), training=False))}

    def seeded_noise(seed, count):
        return tf.random.stateless_normal(tf.stack([count, latent_dim]), seed=tf.stack([seed, tf.constant(0, tf.int64)]))

    def generate_from_seed(seed, count):
        with tf.control_dependencies([tf.debugging.assert_positive(count, message="count must be >= 1")]):
            z = seeded_noise(seed, count)
        return {"images": to_uint8(generator(z, training=False)), "z": z}

    z_spec = tf.TensorSpec((None, latent_dim), tf.float32, name="z")
    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_endpoint("serving_default", generate, [z_spec])
    archive.add_endpoint("generate", generate, [z_spec])
    archive.add_endpoint("generate_from_seed", generate_from_seed,
                         [tf.TensorSpec((), tf.int64, name="seed"), tf.TensorSpec((), tf.int32, name="count")])
    metadata = {"model": generator.name, "task": "generative", "latent_dim": latent_dim, "image_shape": image_shape,
                "pixels": "uint8 [0, 255]", "noise": "z ~ N(0, I); generate_from_seed: tf.random.stateless_normal "
                                                    "([count, latent_dim], seed=[seed, 0])",
                "signatures": {"generate": ["images"], "generate_from_seed": ["images", "z"]}}

    def check(staging):
        z = np.random.default_rng(0).normal(size=(3, latent_dim)).astype(np.float32)
        seed, count = np.int64(1234), np.int32(2)
        seeded = seeded_noise(tf.constant(seed), tf.constant(count)).numpy()
        expected = {"generate/images/0": generate_images(generator, z),
                    "serving_default/images/0": generate_images(generator, z),
                    "generate_from_seed/images/0": generate_images(generator, seeded),
                    "generate_from_seed/z/0": seeded}
        served = serve_in_fresh_process(staging, {"generate.z.0": z, "serving_default.z.0": z,
                                                  "generate_from_seed.seed.0": seed,
                                                  "generate_from_seed.count.0": count})
        if set(served) != set(expected):
            raise ExportVerificationError(f"the SavedModel's outputs {sorted(served)} are not {sorted(expected)}")
        for key, value in expected.items():
            difference = np.abs(served[key].astype(np.float64) - value.astype(np.float64))
            # Pixels may round the other way where graph and eager float sums differ in the last bit.
            if served[key].dtype != value.dtype or served[key].shape != value.shape or difference.max(initial=0) > (
                    1 if value.dtype == np.uint8 else 1e-6):
                raise ExportVerificationError(f"{staging}: {key} differs from the Keras generator "
                                              f"(max difference {difference.max(initial=0):.3g})")

    return write_archive(archive, path, metadata, check if verify else None, verbose=verbose)
