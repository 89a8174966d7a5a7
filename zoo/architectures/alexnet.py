"""AlexNet: torchvision's single-tower layout, and the original 2012 layout.

Reference: A. Krizhevsky, I. Sutskever, G. E. Hinton, "ImageNet Classification with
Deep Convolutional Neural Networks", NeurIPS 2012; torchvision follows the
single-tower variant of A. Krizhevsky, "One weird trick for parallelizing
convolutional neural networks", 2014 (64-192-384-256-256 filters).

``variant="original"`` is the 2012 network: 96-256-384-384-256 filters on a 227x227
input, convolutions 2, 4 and 5 split into two groups (the paper's two GPUs), local
response normalisation after conv1 and conv2 (``lrn=False`` drops it), overlapping
3x3/2 pooling.
"""

from __future__ import annotations

from hybrid_keras.preprocessing import preprocess_numpy
from zoo import common
from zoo.common import decode_predictions  # noqa: F401  (keras.applications' per-family name)
from zoo.lazy import hk_layers, layers
from zoo.registry import register_model
from zoo.weights import WeightSpec, load_state_dict, take, torch_conv, torch_dense

REFERENCE = "Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural Networks, NeurIPS 2012"
VARIANTS = ("torchvision", "original")
TOP_LAYERS = ("fc6", "fc7", "predictions")

_TORCHVISION = WeightSpec(
    tag="imagenet_torchvision", url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", format="torch-pth",
    source="torchvision", preprocessing="torch", file_hash="7be5be79", hash_algorithm="sha256-prefix",
    top1=56.522, top5=79.066, builder_kwargs={"variant": "torchvision"},
    notes="torchvision IMAGENET1K_V1 (single-tower 'one weird trick' layout); about 233.1 MB; the hash is the sha256 prefix in the file name",
)


def _conv(x, filters, kernel, *, stride=1, padding=0, groups=1, name):
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    return layers.Conv2D(filters, kernel, strides=stride, groups=groups, activation="relu", name=name)(x)


@register_model(
    "alexnet", task="classification", family="alexnet", input_shape=(224, 224, 3), reference=REFERENCE,
    preprocessing="torch", weights=(_TORCHVISION,), default_weights="imagenet_torchvision",
    description="AlexNet; variant='torchvision' (default, single tower) or 'original' (2012: two groups, LRN, 227 input)",
    parameters=61_100_840, reference_implementation="torchvision alexnet (variant='torchvision')",
)
def alexnet(card, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
            classifier_activation="softmax", include_preprocessing=True, variant="torchvision", lrn=True, dropout=0.5,
            name=None):
    """Build AlexNet (keras.applications signature, plus ``include_preprocessing``, ``variant``,
    ``lrn`` and ``dropout``).

    ``weights``: None, "imagenet" / "imagenet_torchvision" (torchvision layout only), a ``.pth``
    path or a ``.weights.h5`` saved from this model.
    """
    common.check_arguments("alexnet", include_top=include_top, classes=classes, pooling=pooling,
                           classifier_activation=classifier_activation)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "original" and weights is not None and weights.format != common.KERAS_WEIGHTS:
        raise ValueError("weights: no pretrained weights exist for variant='original' (the 2012 two-group layout); use variant='torchvision'")
    original = variant == "original"
    img_input = common.model_input(input_tensor, input_shape, default_shape=(227, 227, 3) if original else (224, 224, 3),
                                   fixed_size=include_top, min_size=63, name=f"alexnet ({variant})")
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    if original:
        x = _conv(x, 96, 11, stride=4, name="conv1")
        if lrn:
            x = hk_layers.LocalResponseNormalization(size=5, alpha=5e-4, beta=0.75, k=2.0, name="conv1_lrn")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
        x = _conv(x, 256, 5, padding=2, groups=2, name="conv2")
        if lrn:
            x = hk_layers.LocalResponseNormalization(size=5, alpha=5e-4, beta=0.75, k=2.0, name="conv2_lrn")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
        x = _conv(x, 384, 3, padding=1, name="conv3")
        x = _conv(x, 384, 3, padding=1, groups=2, name="conv4")
        x = _conv(x, 256, 3, padding=1, groups=2, name="conv5")
    else:
        x = _conv(x, 64, 11, stride=4, padding=2, name="conv1")
        x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
        x = _conv(x, 192, 5, padding=2, name="conv2")
        x = layers.MaxPooling2D(3, strides=2, name="pool2")(x)
        x = _conv(x, 384, 3, padding=1, name="conv3")
        x = _conv(x, 256, 3, padding=1, name="conv4")
        x = _conv(x, 256, 3, padding=1, name="conv5")
    x = layers.MaxPooling2D(3, strides=2, name="pool5")(x)

    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dropout(dropout, name="fc6_dropout")(x)
        x = layers.Dense(4096, activation="relu", name="fc6")(x)
        x = layers.Dropout(dropout, name="fc7_dropout")(x)
        x = layers.Dense(4096, activation="relu", name="fc7")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = common.pooled(x, pooling)

    model = common.functional_model(input_tensor, img_input, x, name or ("alexnet" if not original else "alexnet_2012"))
    return common.load_weights(model, card, weights, top_layers=TOP_LAYERS,
                               converters={"torch-pth": _load_torch_pth})


def _load_torch_pth(model, path):
    state = load_state_dict(path)
    src = path.name
    per_layer = {
        layer: torch_conv(take(state, f"features.{index}.weight", src), take(state, f"features.{index}.bias", src))
        for layer, index in (("conv1", 0), ("conv2", 3), ("conv3", 6), ("conv4", 8), ("conv5", 10))
    }
    if any(l.name == "predictions" for l in model.layers):
        # The 6x6 adaptive pool is the identity at 224x224; torch flattens NCHW.
        per_layer["fc6"] = torch_dense(take(state, "classifier.1.weight", src), take(state, "classifier.1.bias", src), chw=(256, 6, 6))
        per_layer["fc7"] = torch_dense(take(state, "classifier.4.weight", src), take(state, "classifier.4.bias", src))
        per_layer["predictions"] = torch_dense(take(state, "classifier.6.weight", src), take(state, "classifier.6.bias", src))
    return per_layer


def preprocess_input(x, mode: str = "torch"):
    """torchvision preprocessing (``/255``, ImageNet mean and std). ``x``: RGB in [0, 255]."""
    return preprocess_numpy(x, mode)
