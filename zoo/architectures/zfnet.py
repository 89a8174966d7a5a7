"""ZFNet (Zeiler & Fergus): AlexNet with a 7x7 stride-2 first layer.

Reference: M. D. Zeiler, R. Fergus, "Visualizing and Understanding Convolutional
Networks", ECCV 2014 (Figure 3). 224x224 input; conv1 96 filters 7x7 stride 2 (110x110
maps), 3x3/2 max pooling and contrast normalisation across feature maps; conv2 256 filters
5x5 stride 2 (26x26), pooling and normalisation; conv3-5 384-384-256 3x3; pooling to
6x6x256; two 4096-unit layers. No official pretrained weights were ever published.
"""

from __future__ import annotations

from hybrid_keras.preprocessing import preprocess_numpy
from zoo import common
from zoo.lazy import hk_layers, layers
from zoo.registry import register_model

REFERENCE = "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014"


@register_model(
    "zfnet", task="classification", family="zfnet", input_shape=(224, 224, 3), reference=REFERENCE,
    preprocessing="torch", weights=(), description="ZFNet: 7x7/2 first layer, 5x5/2 second, AlexNet-style top; no published weights",
    parameters=62_357_608, reference_implementation="hand-counted from the paper's Figure 3",
)
def zfnet(card, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
          classifier_activation="softmax", include_preprocessing=True, normalization=True, dropout=0.5, name=None):
    """Build ZFNet (keras.applications signature plus ``include_preprocessing``; ``normalization``
    toggles the local contrast normalisation after the first two layers). ``weights``: None or
    a path to a ``.weights.h5`` file saved from this model."""
    common.check_arguments("zfnet", include_top=include_top, classes=classes, pooling=pooling,
                           classifier_activation=classifier_activation)
    img_input = common.model_input(input_tensor, input_shape, default_shape=(224, 224, 3), fixed_size=include_top,
                                   min_size=64, name="zfnet")
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    x = layers.ZeroPadding2D(1, name="conv1_pad")(x)
    x = layers.Conv2D(96, 7, strides=2, activation="relu", name="conv1")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    if normalization:
        x = hk_layers.LocalResponseNormalization(size=5, alpha=5e-4, beta=0.75, k=2.0, name="conv1_norm")(x)
    x = layers.Conv2D(256, 5, strides=2, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    if normalization:
        x = hk_layers.LocalResponseNormalization(size=5, alpha=5e-4, beta=0.75, k=2.0, name="conv2_norm")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)

    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(4096, activation="relu", name="fc6")(x)
        x = layers.Dropout(dropout, name="fc6_dropout")(x)
        x = layers.Dense(4096, activation="relu", name="fc7")(x)
        x = layers.Dropout(dropout, name="fc7_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = common.pooled(x, pooling)

    model = common.functional_model(input_tensor, img_input, x, name or "zfnet")
    return common.load_weights(model, card, weights, converters={})


def preprocess_input(x, mode: str = "torch"):
    """ImageNet mean/std normalisation. ``x``: RGB in [0, 255]."""
    return preprocess_numpy(x, mode)
