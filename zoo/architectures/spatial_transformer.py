"""A small digit CNN and its spatial transformer twin (ST-CNN).

Reference: M. Jaderberg, K. Simonyan, A. Zisserman, K. Kavukcuoglu, "Spatial Transformer
Networks", NeurIPS 2015, section 4.1 (distorted MNIST). As there, the classification network has
three weight layers (two convolutions, each followed by 2x2 max pooling, and the fully connected
classifier), and the ST-CNN puts one affine spatial transformer with bilinear sampling in front of
the very same network:

    st_cnn:    image -> preprocessing -> localisation network -> theta [B, 6]
                                      \\-> SpatialTransformer(output_size) ------> conv1 ... predictions
    mnist_cnn: image -> preprocessing ----------------------------------------> conv1 ... predictions

The localisation network is a small CNN (2x2 pooling, two 5x5 convolutions each followed by 2x2
pooling, a 32-unit hidden layer) whose last layer regresses theta and starts at the identity
(``hybrid_keras.layers.affine_regression``: zero kernel, identity bias), so an untrained ST-CNN
computes exactly what its plain twin with the same classifier weights computes. The transformer
samples the *normalised* image and reads -1 outside it, which is a black pixel under the models'
"tf" preprocessing ([0, 255] -> [-1, 1]).

Training: a localisation network trained at the full learning rate from the first step can push
the sampling grid off the image, where the sampler passes no gradient and it never comes back (seen
on 60x60 cluttered digits); ``benchmarks/spatial_transformer/distorted_mnist.py`` ramps the
localisation layers' (``loc_*``, ``theta``) learning rate up from 0 over the first 30% of the steps.

Both models take raw grey (or RGB) pixels in [0, 255] at any fixed size (default 28x28x1; the
distorted-MNIST benchmark uses 28, 42 and 60 pixels). :func:`transformer_model` gives the
transformed images (in pixels) and theta of an ST-CNN, for visualisation. There are no published
weights: ``weights`` is None or a ``.weights.h5`` saved from a model built with the same arguments.
"""

from __future__ import annotations

from zoo import common
from zoo.lazy import hk_layers, keras, layers
from zoo.registry import register_model

REFERENCE = "Jaderberg, Simonyan, Zisserman & Kavukcuoglu, Spatial Transformer Networks, NeurIPS 2015"
FILTERS = (16, 32)  # the classification network's two convolutions
KERNEL = 5
LOCALISATION_FILTERS = (16, 16)
LOCALISATION_UNITS = 32
MIN_SIZE = 8  # three 2x2 poolings in the localisation network
FILL_VALUE = -1.0  # a black pixel after "tf" preprocessing
_HINT = ("Train it (benchmarks/spatial_transformer/distorted_mnist.py does) and pass the saved .weights.h5 path")


def _check(name, filters, pooling, include_top, classes, classifier_activation):
    common.check_arguments(name, include_top=include_top, classes=classes, pooling=pooling,
                           classifier_activation=classifier_activation)
    if (not isinstance(filters, (tuple, list)) or len(filters) != 2
            or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in filters)):
        raise ValueError(f"filters must be two positive ints (the two convolutions). Received: filters={filters!r}")


def classification_network(x, *, filters, include_top: bool, pooling, classes: int, classifier_activation):
    """The layers both models share, from the (possibly transformed) normalised image on: two
    5x5 convolutions with ReLU, each followed by 2x2 max pooling, then the classifier
    (``flatten`` + ``predictions``) or, without the top, the feature map or its pooling."""
    x = layers.Conv2D(filters[0], KERNEL, padding="same", activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(filters[1], KERNEL, padding="same", activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    if not include_top:
        return common.pooled(x, pooling)
    x = layers.Flatten(name="flatten")(x)
    return layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


def localisation_network(x, *, filters=LOCALISATION_FILTERS, units: int = LOCALISATION_UNITS):
    """The ST-CNN's localisation network: normalised image -> theta ``[B, 6]``, the identity at
    initialisation. Needs a fixed input size (its hidden layer is fully connected)."""
    x = layers.MaxPooling2D(2, name="loc_pool0")(x)
    x = layers.Conv2D(filters[0], KERNEL, padding="same", activation="relu", name="loc_conv1")(x)
    x = layers.MaxPooling2D(2, name="loc_pool1")(x)
    x = layers.Conv2D(filters[1], KERNEL, padding="same", activation="relu", name="loc_conv2")(x)
    x = layers.MaxPooling2D(2, name="loc_pool2")(x)
    x = layers.Flatten(name="loc_flatten")(x)
    x = layers.Dense(units, activation="relu", name="loc_fc")(x)
    return hk_layers.affine_regression(name="theta")(x)


@register_model(
    "mnist_cnn", task="classification", family="spatial_transformer", input_shape=(28, 28, 1), reference=REFERENCE,
    preprocessing="tf", description="The distorted-MNIST CNN (conv-pool-conv-pool-fc), the plain twin of st_cnn",
    parameters=28_938,
    weights_hint=_HINT,
)
def mnist_cnn(card, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
              classifier_activation="softmax", include_preprocessing=True, filters=FILTERS, name=None):
    """Build the plain CNN (keras.applications signature, plus ``include_preprocessing`` and
    ``filters``, the two convolutions' widths). With its top it takes ``input_shape`` (default
    28x28x1) only; without it, any size of at least 4 pixels."""
    _check("mnist_cnn", filters, pooling, include_top, classes, classifier_activation)
    img_input = common.model_input(input_tensor, input_shape, default_shape=card.input_shape, fixed_size=False,
                                   min_size=4, name="mnist_cnn", include_top=include_top)
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    x = classification_network(x, filters=filters, include_top=include_top, pooling=pooling, classes=classes,
                               classifier_activation=classifier_activation)
    model = common.functional_model(input_tensor, img_input, x, name or "mnist_cnn")
    return common.load_weights(model, card, weights, converters={})


@register_model(
    "st_cnn", task="classification", family="spatial_transformer", input_shape=(28, 28, 1), reference=REFERENCE,
    preprocessing="tf",
    description=("ST-CNN: an affine spatial transformer (localisation CNN -> theta -> bilinear sampler) in front "
                 "of mnist_cnn; transformer_model() shows the transformed images"),
    parameters=40_608,
    weights_hint=_HINT,
)
def st_cnn(card, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=10,
           classifier_activation="softmax", include_preprocessing=True, filters=FILTERS, output_size=None,
           localisation_filters=LOCALISATION_FILTERS, localisation_units=LOCALISATION_UNITS, align_corners=False,
           name=None):
    """Build the ST-CNN (keras.applications signature, plus ``include_preprocessing``, ``filters``).

    ``input_shape``: any fixed ``(H, W, C)`` with sides of at least 8 (default 28x28x1); the
    localisation network is fully connected, so the size is fixed even without the top.
    ``output_size``: the transformer's output ``(height, width)`` that the classification network
    sees (default: the input's size). ``localisation_filters``, ``localisation_units``: the
    localisation network's widths. ``align_corners``: the sampler's convention
    (``hybrid_keras.layers.SpatialTransformer``).
    """
    _check("st_cnn", filters, pooling, include_top, classes, classifier_activation)
    if (not isinstance(localisation_filters, (tuple, list)) or len(localisation_filters) != 2
            or not all(isinstance(f, int) and f >= 1 for f in localisation_filters)):
        raise ValueError("localisation_filters must be two positive ints. "
                         f"Received: localisation_filters={localisation_filters!r}")
    if not isinstance(localisation_units, int) or localisation_units < 1:
        raise ValueError(f"localisation_units must be a positive int. Received: localisation_units={localisation_units!r}")
    img_input = common.model_input(input_tensor, input_shape, default_shape=card.input_shape, fixed_size=False,
                                   min_size=MIN_SIZE, name="st_cnn", include_top=True)
    if img_input.shape[1] is None or img_input.shape[2] is None:
        raise ValueError(f"st_cnn needs a fixed input height and width (its localisation network is fully "
                         f"connected). Received: input shape {tuple(img_input.shape[1:])}")
    if output_size is None:
        output_size = tuple(img_input.shape[1:3])
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    theta = localisation_network(x, filters=tuple(localisation_filters), units=localisation_units)
    x = hk_layers.SpatialTransformer(output_size, align_corners=align_corners, fill_value=FILL_VALUE,
                                     name="transformer")([x, theta])
    x = classification_network(x, filters=filters, include_top=include_top, pooling=pooling, classes=classes,
                               classifier_activation=classifier_activation)
    model = common.functional_model(input_tensor, img_input, x, name or "st_cnn")
    return common.load_weights(model, card, weights, converters={})


def transformer_model(model):
    """``images -> {"warped": [B, h, w, C], "theta": [B, 6]}`` from an ST-CNN (its own layers and
    weights): the transformed images the classification network sees, in the input's pixel
    units (the model's preprocessing undone), and the predicted affine matrices."""
    try:
        transformer = model.get_layer("transformer")
        theta = model.get_layer("theta").output
    except ValueError:
        raise ValueError(f"transformer_model needs an ST-CNN (layers 'transformer' and 'theta'). "
                         f"Received: model {model.name!r}") from None
    warped = transformer.output
    preprocessing = hk_layers.find_preprocessing(model)
    if preprocessing is not None:
        if preprocessing.channel_order != "rgb":
            raise ValueError(f"transformer_model undoes RGB-order preprocessing only. Received: a model whose "
                             f"preprocessing is {preprocessing.mode!r} ({preprocessing.channel_order})")
        # Preprocessing computes (x * scale - mean) / std; this is its inverse (keras.ops on the
        # symbolic tensor: Keras' Rescaling layer needs TensorFlow under the other backends).
        std = [s / preprocessing.scale for s in preprocessing.std]
        offset = [m / preprocessing.scale for m in preprocessing.mean]
        warped = keras.ops.add(keras.ops.multiply(warped, std if len(std) > 1 else std[0]),
                               offset if len(offset) > 1 else offset[0])
    return keras.Model(model.input, {"warped": warped, "theta": theta}, name=f"{model.name}_transformer")
