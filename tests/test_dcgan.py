"""DCGAN: the zoo networks' shapes and sizes, the losses against NumPy, training steps on every
backend (both networks move, a seed repeats a run, each loss falls while the other network is
frozen), the generator's SavedModel round trip, and errors for bad latent vectors and shapes."""

import random

import numpy as np
import pytest

import keras

import zoo
from hybrid_keras.generative import DCGAN, discriminator_loss, generate_images, generator_loss

agnostic = pytest.mark.backend_agnostic

LATENT = 4
SHAPE = (8, 8, 1)


def _networks(seed=0, shape=SHAPE):
    random.seed(seed)  # Keras draws unseeded initialisers' seeds from Python's random
    generator = zoo.load("dcgan_generator", latent_dim=LATENT, image_shape=shape, filters=4)
    discriminator = zoo.load("dcgan_discriminator", input_shape=shape, filters=4)
    return generator, discriminator


def _real_images(count=8, shape=SHAPE):
    """Bright squares on black at random places: a 'dataset' with structure."""
    rng = np.random.default_rng(5)
    images = np.zeros((count, *shape), np.float32)
    for image, (y, x) in zip(images, rng.integers(0, shape[0] - 3, size=(count, 2))):
        image[y:y + 3, x:x + 3] = 255.0
    return images


def _numpy(variable):
    return np.array(keras.ops.convert_to_numpy(variable), copy=True)  # torch's arrays share memory with the variable


def _weights(model):
    return [_numpy(v) for v in model.weights]


def _compile(gan, learning_rate=None):
    optimizers = {} if learning_rate is None else {
        "d_optimizer": keras.optimizers.Adam(learning_rate, beta_1=0.5),
        "g_optimizer": keras.optimizers.Adam(learning_rate, beta_1=0.5)}
    # Tracing TensorFlow's graph costs more than a few tiny steps: the tests run TensorFlow's
    # step eagerly (the benchmark runs it compiled). JAX runs its stateless step jitted.
    gan.compile(run_eagerly=keras.backend.backend() == "tensorflow", **optimizers)


def _steps(gan, count):
    """``count`` training steps on the same real batch; each step's own logs (the metrics are
    reset before each: train_on_batch accumulates them)."""
    real, logs = _real_images(), []
    for _ in range(count):
        gan.reset_metrics()
        logs.append({k: float(v) for k, v in gan.train_on_batch(real, return_dict=True).items()})
    return logs


def _train(steps, *, seed=7):
    gan = DCGAN(*_networks(), seed=seed)
    _compile(gan)
    return gan, _steps(gan, steps)


@pytest.mark.parametrize("shape, maps", [((28, 28, 1), [(14, 14), (7, 7)]), ((32, 32, 3), [(16, 16), (8, 8), (4, 4)])])
def test_network_shapes(shape, maps):
    generator = zoo.load("dcgan_generator", latent_dim=10, image_shape=shape, filters=8)
    discriminator = zoo.load("dcgan_discriminator", input_shape=shape, filters=8)
    assert tuple(generator.input_shape) == (None, 10) and tuple(generator.output_shape) == (None, *shape)
    assert tuple(discriminator.input_shape) == (None, *shape) and tuple(discriminator.output_shape) == (None, 1)
    # Each stride-2 layer halves (discriminator) or doubles (generator) the map; channels double towards z.
    down = [tuple(discriminator.get_layer(f"conv{i}").output.shape[1:]) for i in range(1, len(maps) + 1)]
    assert down == [(*side, 8 * 2 ** i) for i, side in enumerate(maps)]
    up = [tuple(generator.get_layer("project_reshape").output.shape[1:])] + [
        tuple(generator.get_layer(f"deconv{i}").output.shape[1:]) for i in range(1, len(maps))]
    assert up == [(*side, 8 * 2 ** i) for i, side in reversed(list(enumerate(maps)))]
    kinds = {type(layer).__name__ for layer in generator.layers + discriminator.layers}
    assert not any("Pooling" in kind or kind == "Dropout" for kind in kinds)  # the paper: strided convolutions only
    images = keras.ops.convert_to_numpy(generator(np.full((2, 10), 50.0, np.float32)))  # saturates tanh
    assert images.min() >= 0.0 and images.max() <= 255.0
    pixels = keras.ops.convert_to_numpy(generator.get_layer("to_pixels")(np.array([-1.0, 0.0, 1.0], np.float32)))
    np.testing.assert_allclose(pixels, [0.0, 127.5, 255.0], atol=1e-4)


def test_cards_count_the_default_networks():
    for name, argument in (("dcgan_generator", "image_shape"), ("dcgan_discriminator", "input_shape")):
        card = zoo.model_card(name)
        assert card.task == "generative"
        assert zoo.load(name).count_params() == card.parameters
        # The MNIST size: 7x7 maps doubled twice.
        assert zoo.load(name, **{argument: (28, 28, 1)}).count_params() == zoo.architectures.dcgan._parameters(
            name.split("_")[1], image_shape=(28, 28, 1))


@agnostic
def test_losses_match_numpy():
    real = np.array([[2.0], [-1.0], [0.3], [30.0]], np.float32)
    fake = np.array([[-3.0], [0.5], [-40.0], [1.0]], np.float32)

    def sigmoid(x):
        return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))

    expected_d = -np.mean(np.log(sigmoid(real))) - np.mean(np.log(1.0 - sigmoid(fake)))
    expected_g = -np.mean(np.log(sigmoid(fake)))
    assert float(discriminator_loss(real, fake)) == pytest.approx(expected_d, rel=1e-5)
    assert float(generator_loss(fake)) == pytest.approx(expected_g, rel=1e-5)


@agnostic
def test_train_steps_move_both_networks_and_repeat_for_a_seed():
    generator, discriminator = _networks()
    gan = DCGAN(generator, discriminator, seed=7)
    _compile(gan)
    for optimizer, network in ((gan.d_optimizer, discriminator), (gan.g_optimizer, generator)):
        optimizer.build(network.trainable_variables)
    state = gan.variables + gan.d_optimizer.variables + gan.g_optimizer.variables  # the seed's state included
    start = [_numpy(v) for v in state]
    logs = _steps(gan, 2)
    assert set(logs[0]) == {"d_loss", "g_loss", "d_x", "d_g_z"}
    assert 0.0 < logs[0]["d_x"] < 1.0 and 0.0 < logs[0]["d_g_z"] < 1.0
    for network in (generator, discriminator):
        for variable in network.trainable_weights:
            before = start[next(i for i, v in enumerate(state) if v is variable)]
            assert not np.array_equal(before, keras.ops.convert_to_numpy(variable)), variable.path
    seed_state = keras.ops.convert_to_numpy(gan.seed_generator.state)
    assert not np.array_equal(seed_state, keras.ops.convert_to_numpy(keras.random.SeedGenerator(7).state))
    trained = _weights(gan)
    # Back to the starting state (weights, optimizer moments, the noise's seed state): the same
    # two steps again, to the bit (fit carried the seed state through JAX's stateless steps too).
    for variable, value in zip(state, start):
        variable.assign(value)
    assert _steps(gan, 2) == logs
    for a, b in zip(trained, _weights(gan)):
        np.testing.assert_array_equal(a, b)


@agnostic
def test_each_loss_falls_while_the_other_network_is_frozen():
    generator, discriminator = _networks()
    gan = DCGAN(generator, discriminator, seed=3)
    frozen_generator = _weights(generator)
    generator.trainable = False  # the discriminator learns to tell the fixed generator's images from real ones
    _compile(gan, learning_rate=2e-2)
    d_logs = _steps(gan, 5)
    assert d_logs[-1]["d_loss"] < 0.8 * d_logs[0]["d_loss"], [log["d_loss"] for log in d_logs]
    assert d_logs[-1]["d_x"] > d_logs[0]["d_x"] and d_logs[-1]["d_g_z"] < d_logs[0]["d_g_z"]
    for a, b in zip(frozen_generator, _weights(generator)):
        np.testing.assert_array_equal(a, b)

    frozen_discriminator = _weights(discriminator)
    generator.trainable, discriminator.trainable = True, False  # now the generator learns to fool it
    _compile(gan, learning_rate=2e-2)
    g_logs = _steps(gan, 5)
    assert g_logs[-1]["g_loss"] < 0.6 * g_logs[0]["g_loss"], [log["g_loss"] for log in g_logs]
    for a, b in zip(frozen_discriminator, _weights(discriminator)):
        np.testing.assert_array_equal(a, b)


@agnostic
def test_wrong_latent_size_is_refused():
    gan = DCGAN(*_networks(), seed=0)
    with pytest.raises(ValueError, match=r"z must be latent vectors \[batch, 4\]. Received: shape=\(2, 5\)"):
        generate_images(gan, np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"z must be latent vectors \[batch, 4\]. Received: shape=\(3, 4, 1\)"):
        gan(np.zeros((3, 4, 1), np.float32))
    images = generate_images(gan, np.zeros((3, 4), np.float32))
    assert images.dtype == np.uint8 and images.shape == (3, *SHAPE)
    np.testing.assert_array_equal(gan.sample(3, seed=1), gan.sample(3, seed=1))
    with pytest.raises(ValueError, match="count must be a positive int. Received: count=0"):
        gan.sample(0)


def test_mismatched_networks_and_bad_shapes_are_refused():
    generator, _ = _networks()
    wide = zoo.load("dcgan_discriminator", input_shape=(16, 16, 1), filters=4)
    with pytest.raises(ValueError, match=r"discriminator must take the generator's images \(8, 8, 1\)"):
        DCGAN(generator, wide)
    with pytest.raises(ValueError, match=r"discriminator must return one logit per image \[batch, 1\]"):
        DCGAN(generator, keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten()]))
    with pytest.raises(ValueError, match="image_shape: height and width must halve at least once"):
        zoo.load("dcgan_generator", image_shape=(7, 7, 1))
    with pytest.raises(ValueError, match=r"image_shape must be \(height, width, channels\) with 1 or 3 channels"):
        zoo.load("dcgan_discriminator", input_shape=(8, 8, 2))


def test_generator_export_round_trip(tmp_path):
    import tensorflow as tf

    from hybrid_keras.generative import export_generator

    generator, _ = _networks()
    # Verified on the way out: a fresh TensorFlow-only process serves both signatures and
    # reproduces the Keras generator's uint8 images (export_generator raises otherwise).
    path = export_generator(generator, tmp_path / "dcgan" / "1")
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "generate", "generate_from_seed"}
    z = np.random.default_rng(3).normal(size=(5, LATENT)).astype(np.float32)
    served = loaded.signatures["generate"](z=tf.constant(z))["images"].numpy()
    assert served.dtype == np.uint8 and served.shape == (5, *SHAPE)
    assert np.abs(served.astype(int) - generate_images(generator, z).astype(int)).max() <= 1
    first = loaded.signatures["generate_from_seed"](seed=tf.constant(9, tf.int64), count=tf.constant(3))
    second = loaded.signatures["generate_from_seed"](seed=tf.constant(9, tf.int64), count=tf.constant(3))
    np.testing.assert_array_equal(first["images"].numpy(), second["images"].numpy())
    np.testing.assert_array_equal(first["z"].numpy(), tf.random.stateless_normal((3, LATENT), seed=[9, 0]).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"z must be latent vectors \[batch, 4\]"):
        loaded.signatures["generate"](z=tf.zeros((1, LATENT + 1)))


def test_dcgan_keras_file_round_trip(tmp_path):
    gan, _ = _train(1, seed=11)
    path = tmp_path / "gan.keras"
    gan.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, DCGAN) and loaded.seed == 11 and loaded.latent_dim == LATENT
    for a, b in zip(_weights(gan), _weights(loaded)):
        np.testing.assert_array_equal(a, b)
    assert float(loaded.g_optimizer.learning_rate) == pytest.approx(2e-4) and float(loaded.d_optimizer.beta_1) == 0.5
    for a, b in zip(gan.d_optimizer.variables, loaded.d_optimizer.variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
