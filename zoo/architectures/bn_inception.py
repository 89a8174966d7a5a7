"""BN-Inception: Inception with batch normalisation (Inception-v2 of Ioffe & Szegedy).

Reference: S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", ICML 2015, Figure 5: GoogLeNet with
batch normalisation after every convolution, the 5x5 convolutions replaced by two
3x3 ones, average pooling in most blocks, and stride-2 blocks (3c, 4e) that replace
the max pools between stages. No official Keras or torchvision weights exist.
"""

from __future__ import annotations

from hybrid_keras.preprocessing import preprocess_numpy
from zoo import common
from zoo.common import ceil_max_pool, conv_bn
from zoo.lazy import layers
from zoo.registry import register_model

REFERENCE = "Ioffe & Szegedy, Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate Shift, ICML 2015"
EPSILON = 1e-5

# (name, 1x1, 3x3 reduce, 3x3, double-3x3 reduce, double-3x3, pool ("avg"/"max"), pool projection, stride),
# from the paper's Figure 5. Stride-2 blocks have no 1x1 branch and pass the pooled input through.
BLOCKS = (
    ("inception3a", 64, 64, 64, 64, 96, "avg", 32, 1),
    ("inception3b", 64, 64, 96, 64, 96, "avg", 64, 1),
    ("inception3c", 0, 128, 160, 64, 96, "max", 0, 2),
    ("inception4a", 224, 64, 96, 96, 128, "avg", 128, 1),
    ("inception4b", 192, 96, 128, 96, 128, "avg", 128, 1),
    ("inception4c", 160, 128, 160, 128, 160, "avg", 128, 1),
    ("inception4d", 96, 128, 192, 160, 192, "avg", 128, 1),
    ("inception4e", 0, 128, 192, 192, 256, "max", 0, 2),
    ("inception5a", 352, 192, 320, 160, 224, "avg", 128, 1),
    ("inception5b", 352, 192, 320, 192, 224, "max", 128, 1),
)


def _block(x, name, c1, c3r, c3, d3r, d3, pool, proj, stride):
    branches = []
    if c1:
        branches.append(conv_bn(x, c1, 1, epsilon=EPSILON, name=f"{name}_1x1"))
    b = conv_bn(x, c3r, 1, epsilon=EPSILON, name=f"{name}_3x3_reduce")
    branches.append(conv_bn(b, c3, 3, stride=stride, padding=1, epsilon=EPSILON, name=f"{name}_3x3"))
    b = conv_bn(x, d3r, 1, epsilon=EPSILON, name=f"{name}_double_3x3_reduce")
    b = conv_bn(b, d3, 3, padding=1, epsilon=EPSILON, name=f"{name}_double_3x3a")
    branches.append(conv_bn(b, d3, 3, stride=stride, padding=1, epsilon=EPSILON, name=f"{name}_double_3x3b"))
    if stride == 2:
        branches.append(ceil_max_pool(x, 3, 2, f"{name}_pool"))  # pass-through
    else:
        pooling = layers.AveragePooling2D if pool == "avg" else layers.MaxPooling2D
        b = pooling(3, strides=1, padding="same", name=f"{name}_pool")(x)
        branches.append(conv_bn(b, proj, 1, epsilon=EPSILON, name=f"{name}_pool_proj"))
    return layers.Concatenate(name=name)(branches)


@register_model(
    "bn_inception", task="classification", family="bn_inception", input_shape=(224, 224, 3), reference=REFERENCE,
    preprocessing="tf", weights=(),
    description="Inception with batch normalisation (Ioffe & Szegedy 2015, Figure 5); no official weights published",
    parameters=11_305_256, reference_implementation="the paper's Figure 5 (block output widths checked in tests)",
)
def bn_inception(card, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
                 classifier_activation="softmax", include_preprocessing=True, dropout=0.0, name=None):
    """Build BN-Inception (keras.applications signature plus ``include_preprocessing``).
    ``weights``: None or a ``.weights.h5`` file saved from this model (no official weights exist)."""
    common.check_arguments("bn_inception", include_top=include_top, classes=classes, pooling=pooling,
                           classifier_activation=classifier_activation)
    img_input = common.model_input(input_tensor, input_shape, default_shape=(224, 224, 3), fixed_size=False,
                                   min_size=32, name="bn_inception", include_top=include_top)
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    x = conv_bn(x, 64, 7, stride=2, padding=3, epsilon=EPSILON, name="conv1")
    x = ceil_max_pool(x, 3, 2, "pool1")
    x = conv_bn(x, 64, 1, epsilon=EPSILON, name="conv2_reduce")
    x = conv_bn(x, 192, 3, padding=1, epsilon=EPSILON, name="conv2")
    x = ceil_max_pool(x, 3, 2, "pool2")
    for block in BLOCKS:
        x = _block(x, *block)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = common.pooled(x, pooling)

    model = common.functional_model(input_tensor, img_input, x, name or "bn_inception")
    return common.load_weights(model, card, weights, converters={})


def preprocess_input(x, mode: str = "tf"):
    """Scale to [-1, 1]. ``x``: RGB in [0, 255]."""
    return preprocess_numpy(x, mode)
