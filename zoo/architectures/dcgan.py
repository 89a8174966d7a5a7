"""DCGAN: the deep convolutional generator and discriminator.

Reference: A. Radford, L. Metz, S. Chintala, "Unsupervised Representation Learning with Deep
Convolutional Generative Adversarial Networks", ICLR 2016. The paper's rules, kept here: no
pooling (strided convolutions in the discriminator, fractionally-strided, i.e. transposed,
convolutions in the generator); batch normalisation in both networks except the generator's
output layer and the discriminator's input layer; no fully connected hidden layers (the
generator's first layer projects z and reshapes it, the discriminator's last convolution is
flattened into one output); ReLU in the generator with tanh at its output; LeakyReLU (slope
0.2) in the discriminator; weights drawn from N(0, 0.02).

Kernels are 4x4 by default, as in the PyTorch reference implementation, where the paper's
figure shows 5x5 (``kernel_size=5`` builds that). The reason is portability: Keras' PyTorch
backend pads an odd-sized stride-2 "same" transposed convolution on the other side from
TensorFlow and JAX, so a 5x5 generator trained under one backend draws shifted images under
another (measured here: up to 0.22 of 255 apart with random weights); with 4x4 kernels all
three backends give the same images.

Sizes: every stride-2 layer halves (discriminator) or doubles (generator) the image, as many
times as height and width halve evenly while above 4: 28x28 is 7x7 doubled twice, 32x32
is 4x4 doubled three times, 64x64 (the paper's) 4x4 doubled four times. The layer next to
the smallest map has ``filters * 2^(n-1)`` channels, halving towards the image (the paper's
64x64 generator: ``filters=128``, 1024-512-256-128).

Pixels, the zoo's convention: the generator ends in tanh followed by a fixed layer
``to_pixels`` (``127.5 x + 127.5``), so it makes images in [0, 255] like the images every
zoo model takes; the discriminator takes raw [0, 255] pixels and maps them back to [-1, 1]
in its first layer (``Preprocessing("tf")``). The discriminator returns a logit ``[B, 1]``
(the paper's sigmoid is in the loss, where it is numerically safer).

Training, with the paper's losses and Adam settings on every backend, is
:class:`hybrid_keras.generative.DCGAN`.
"""

from __future__ import annotations

from zoo import common
from zoo.lazy import hk_layers, keras, layers
from zoo.registry import register_model

REFERENCE = ("Radford, Metz & Chintala, Unsupervised Representation Learning with Deep Convolutional "
             "Generative Adversarial Networks, ICLR 2016")
DEFAULT_SHAPE = (32, 32, 3)
LATENT_DIM = 100  # the paper's z: 100 numbers
BN_MOMENTUM = 0.9  # PyTorch's 0.1, the reference implementations' default
BN_EPSILON = 1e-5
LEAK = 0.2


def upsamplings(image_shape) -> tuple[int, tuple[int, int]]:
    """``(n, (h, w))``: how many stride-2 layers an image of ``image_shape`` takes, and the size of
    the smallest map: height and width halve while both are even and above 4."""
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else ()
    if (len(shape) != 3 or not all(isinstance(side, int) and side > 0 for side in shape)
            or shape[2] not in (1, 3)):
        raise ValueError("image_shape must be (height, width, channels) with 1 or 3 channels. "
                         f"Received: image_shape={image_shape!r}")
    height, width, count = shape[0], shape[1], 0
    while height % 2 == 0 and width % 2 == 0 and min(height, width) > 4:
        height, width, count = height // 2, width // 2, count + 1
    if count == 0:
        raise ValueError("image_shape: height and width must halve at least once (even and above 4), e.g. "
                         f"(28, 28, 1) or (32, 32, 3). Received: image_shape={image_shape!r}")
    return count, (height, width)


def _check(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}. Received: {name}={value!r}")
    return value


def _init():
    return keras.initializers.RandomNormal(stddev=0.02)


def _batch_norm(name):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _parameters(kind: str, *, image_shape=DEFAULT_SHAPE, latent_dim=LATENT_DIM, filters=64, kernel_size=4) -> int:
    """The weight count (batch-norm statistics included) of a network built with these arguments."""
    count, (height, width) = upsamplings(image_shape)
    widths = [filters * 2 ** i for i in range(count)]  # image side first
    square = kernel_size * kernel_size
    if kind == "generator":
        total = latent_dim * height * width * widths[-1] + 4 * widths[-1]
        for wide, narrow in zip(widths[:0:-1], widths[-2::-1]):
            total += square * wide * narrow + 4 * narrow
        return total + square * widths[0] * image_shape[2] + image_shape[2]
    total = square * image_shape[2] * widths[0] + widths[0]
    for narrow, wide in zip(widths[:-1], widths[1:]):
        total += square * narrow * wide + 4 * wide
    return total + height * width * widths[-1] + 1


@register_model(
    "dcgan_generator", task="generative", family="dcgan", input_shape=DEFAULT_SHAPE, input_label=f"z of {LATENT_DIM}",
    reference=REFERENCE,
    preprocessing="none",
    description=("DCGAN generator: z [B, latent_dim] -> images [B, H, W, C] in [0, 255] (card: 32x32x3, z of 100, "
                 "filters 64; image_shape=(28, 28, 1) for MNIST)"),
    parameters=_parameters("generator"),
    reference_implementation="the paper's generator (projection, fractionally-strided convolutions, BN, ReLU, tanh); 4x4 kernels",
    weights_hint="Train one with benchmarks/generative/dcgan.py (it saves the generator's .weights.h5)",
)
def dcgan_generator(card, latent_dim=LATENT_DIM, image_shape=None, filters=64, kernel_size=4, weights=None, name=None):
    """Build the DCGAN generator: ``z`` ``[B, latent_dim]`` -> images ``[B, *image_shape]`` in [0, 255].

    ``image_shape``: (height, width, 1 or 3), default (32, 32, 3); ``filters``: channels of the
    last hidden layer (doubling towards z); ``weights``: None or a ``.weights.h5`` saved from a
    generator built with the same arguments.
    """
    image_shape = tuple(card.input_shape if image_shape is None else image_shape)
    count, (height, width) = upsamplings(image_shape)
    _check("latent_dim", latent_dim)
    _check("filters", filters)
    _check("kernel_size", kernel_size)
    z = keras.Input(shape=(latent_dim,), name="z")
    channels = filters * 2 ** (count - 1)
    x = layers.Dense(height * width * channels, use_bias=False, kernel_initializer=_init(), name="project")(z)
    x = layers.Reshape((height, width, channels), name="project_reshape")(x)
    x = _batch_norm("project_bn")(x)
    x = layers.ReLU(name="project_relu")(x)
    for block in range(1, count):
        channels //= 2
        x = layers.Conv2DTranspose(channels, kernel_size, strides=2, padding="same", use_bias=False,
                                   kernel_initializer=_init(), name=f"deconv{block}")(x)
        x = _batch_norm(f"deconv{block}_bn")(x)
        x = layers.ReLU(name=f"deconv{block}_relu")(x)
    x = layers.Conv2DTranspose(image_shape[2], kernel_size, strides=2, padding="same", activation="tanh",
                               kernel_initializer=_init(), name="deconv_out")(x)
    # tanh's [-1, 1] -> pixels: the inverse of the "tf" normalisation, as a Preprocessing layer with
    # scale 127.5 and mean -127.5 (keras.layers.Rescaling would do too, but as a tf.data-aware layer
    # it looks for TensorFlow on every call, which the model side must not need).
    images = hk_layers.Preprocessing("none", scale=127.5, mean=(-127.5,), name="to_pixels")(x)
    model = keras.Model(z, images, name=name or "dcgan_generator")
    return common.load_weights(model, card, weights, converters={})


@register_model(
    "dcgan_discriminator", task="generative", family="dcgan", input_shape=DEFAULT_SHAPE, reference=REFERENCE,
    preprocessing="tf",
    description=("DCGAN discriminator: images [B, H, W, C] in [0, 255] -> real-vs-generated logit [B, 1] "
                 "(card: 32x32x3, filters 64; input_shape=(28, 28, 1) for MNIST)"),
    parameters=_parameters("discriminator"),
    reference_implementation="the paper's discriminator (strided convolutions, BN, LeakyReLU 0.2, one output); 4x4 kernels",
    weights_hint="Train one with benchmarks/generative/dcgan.py (it saves the discriminator's .weights.h5)",
)
def dcgan_discriminator(card, input_shape=None, filters=64, kernel_size=4, include_preprocessing=True, weights=None,
                        name=None):
    """Build the DCGAN discriminator: images ``[B, *input_shape]`` (raw pixels in [0, 255]) -> logit
    ``[B, 1]`` (positive: judged real).

    ``input_shape``: (height, width, 1 or 3), default (32, 32, 3); ``filters``: channels of the
    first convolution (doubling with every halving); ``include_preprocessing=False`` takes
    images already in [-1, 1]; ``weights``: None or a ``.weights.h5`` saved from a
    discriminator built with the same arguments.
    """
    input_shape = tuple(card.input_shape if input_shape is None else input_shape)
    count, _ = upsamplings(input_shape)
    _check("filters", filters)
    _check("kernel_size", kernel_size)
    images = keras.Input(shape=input_shape, name="image")
    x = common.preprocessing(images, card, weights, include_preprocessing)
    for block in range(1, count + 1):
        x = layers.Conv2D(filters * 2 ** (block - 1), kernel_size, strides=2, padding="same", use_bias=block == 1,
                          kernel_initializer=_init(), name=f"conv{block}")(x)
        if block > 1:  # no batch norm on the input layer (the paper's rule)
            x = _batch_norm(f"conv{block}_bn")(x)
        x = layers.LeakyReLU(LEAK, name=f"conv{block}_leaky_relu")(x)
    x = layers.Flatten(name="flatten")(x)
    logit = layers.Dense(1, kernel_initializer=_init(), name="logit")(x)
    model = keras.Model(images, logit, name=name or "dcgan_discriminator")
    return common.load_weights(model, card, weights, converters={})
