"""VGG 11/13/16/19, with and without batch normalisation.

Reference: K. Simonyan, A. Zisserman, "Very Deep Convolutional Networks for
Large-Scale Image Recognition", ICLR 2015. Layer names follow keras.applications
(``block1_conv1`` ... ``fc1``, ``fc2``, ``predictions``) so its ``.h5`` files load by
name; torchvision's ``features.N`` / ``classifier.N`` checkpoints map onto the same
layers. The batch-norm variants add ``<conv>_bn`` after each convolution (torchvision's
``vgg*_bn``; BN epsilon 1e-5 as in torch).
"""

from __future__ import annotations

from hybrid_keras.preprocessing import preprocess_numpy
from zoo import common
from zoo.common import decode_predictions  # noqa: F401  (keras.applications' per-family name)
from zoo.lazy import layers
from zoo.registry import register_model
from zoo.weights import (
    WeightSpec,
    WeightsError,
    load_state_dict,
    read_keras_h5,
    take,
    torch_batchnorm,
    torch_conv,
    torch_dense,
)

# Convolutions per block; every block ends with a 2x2 max pool.
BLOCKS = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
FILTERS = (64, 128, 256, 512, 512)
TOP_LAYERS = ("fc1", "fc2", "predictions")
REFERENCE = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition, ICLR 2015"

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/{depth}/{depth}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
_TORCH_URL = "https://download.pytorch.org/models/{file}"

# torchvision IMAGENET1K_V1 checkpoints: (file, top-1, top-5, size in MB as torchvision reports it).
_TORCHVISION = {
    "vgg11": ("vgg11-8a719046.pth", 69.020, 88.628, 506.84),
    "vgg13": ("vgg13-19584684.pth", 69.928, 89.246, 507.545),
    "vgg16": ("vgg16-397923af.pth", 71.592, 90.382, 527.796),
    "vgg19": ("vgg19-dcbb9e9d.pth", 72.376, 90.876, 548.051),
    "vgg11_bn": ("vgg11_bn-6002323d.pth", 70.370, 89.810, 506.881),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth", 71.586, 90.374, 507.59),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", 73.360, 91.516, 527.866),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth", 74.218, 91.842, 548.143),
}
# keras.applications files: md5 from keras' own source; accuracy from its documentation table.
_KERAS = {
    "vgg16": ("64373286793e3c8b2b4e3219cbf3544b", "6d6bbae143d832006294945121d1f1fc", 71.3, 90.1),
    "vgg19": ("cbe5617147190e668d6c5d5026f83318", "253f8cb515780f3b799900260a226db6", 71.3, 90.0),
}
# Parameters with the 1000-class top (equal in keras.applications and torchvision; BN
# moving statistics are counted, as Keras counts them).
_PARAMETERS = {
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840 + 2 * 2_752, "vgg13_bn": 133_053_736 + 2 * 2_944,
    "vgg16_bn": 138_365_992 + 2 * 4_224, "vgg19_bn": 143_678_248 + 2 * 5_504,
}


def _weight_specs(name: str) -> list[WeightSpec]:
    specs = []
    depth = name.removesuffix("_bn")
    if name in _KERAS:
        md5_top, md5_notop, top1, top5 = _KERAS[name]
        for suffix, md5, includes_top in (("", md5_top, True), ("_notop", md5_notop, False)):
            specs.append(WeightSpec(
                tag="imagenet_keras" + suffix, url=_KERAS_URL.format(depth=depth, suffix=suffix), format="keras-h5",
                source="keras.applications", preprocessing="caffe", file_hash=md5, hash_algorithm="md5",
                includes_top=includes_top, top1=top1, top5=top5,
                notes="keras.applications publishes an md5, not a sha256, for this file",
            ))
    file, top1, top5, megabytes = _TORCHVISION[name]
    specs.append(WeightSpec(
        tag="imagenet_torchvision", url=_TORCH_URL.format(file=file), format="torch-pth", source="torchvision",
        preprocessing="torch", file_hash=file.rsplit("-", 1)[1].split(".")[0], hash_algorithm="sha256-prefix",
        top1=top1, top5=top5,
        notes=f"torchvision IMAGENET1K_V1; about {megabytes} MB; the hash is the sha256 prefix in the file name",
    ))
    return specs


def _vgg(card, *, batch_norm: bool, include_top, weights, input_tensor, input_shape, pooling, classes,
         classifier_activation, include_preprocessing, dropout, model_name):
    name = card.name
    common.check_arguments(name, include_top=include_top, classes=classes, pooling=pooling,
                           classifier_activation=classifier_activation)
    img_input = common.model_input(input_tensor, input_shape, default_shape=(224, 224, 3), fixed_size=include_top,
                                   min_size=32, name=name)
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    for block, (convs, filters) in enumerate(zip(BLOCKS[name.removesuffix("_bn")], FILTERS), start=1):
        for conv in range(1, convs + 1):
            layer = f"block{block}_conv{conv}"
            if batch_norm:
                x = layers.Conv2D(filters, 3, padding="same", name=layer)(x)
                x = layers.BatchNormalization(epsilon=1e-5, momentum=0.9, name=f"{layer}_bn")(x)
                x = layers.ReLU(name=f"{layer}_relu")(x)
            else:
                x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=layer)(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)

    if include_top:
        x = layers.Flatten(name="flatten")(x)
        x = layers.Dense(4096, activation="relu", name="fc1")(x)
        x = layers.Dropout(dropout, name="fc1_dropout")(x)
        x = layers.Dense(4096, activation="relu", name="fc2")(x)
        x = layers.Dropout(dropout, name="fc2_dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = common.pooled(x, pooling)

    model = common.functional_model(input_tensor, img_input, x, model_name or name)
    return common.load_weights(model, card, weights, top_layers=TOP_LAYERS,
                               converters={"keras-h5": _load_keras_h5, "torch-pth": _load_torch_pth})


def _conv_layers(model) -> list[str]:
    return [l.name for l in model.layers if isinstance(l, layers.Conv2D)]


def _load_keras_h5(model, path):
    if any(l.name.endswith("_bn") for l in model.layers):
        raise WeightsError(f"{path.name} is a keras.applications file (no batch norm); {model.name!r} has batch norm")
    return read_keras_h5(path)


def _load_torch_pth(model, path):
    state = load_state_dict(path)
    batch_norm = any(l.name.endswith("_bn") for l in model.layers)
    per_layer = {}
    index = 0  # position in torchvision's `features` Sequential
    for layer in _conv_layers(model):
        per_layer[layer] = torch_conv(take(state, f"features.{index}.weight", path.name), take(state, f"features.{index}.bias", path.name))
        if batch_norm:
            try:
                per_layer[f"{layer}_bn"] = torch_batchnorm(state, f"features.{index + 1}")
            except KeyError:
                raise WeightsError(f"{path.name} has no batch norm after features.{index}: a checkpoint without BN?") from None
        index += 3 if batch_norm else 2  # conv, [bn], relu
        if layer.endswith(f"conv{_convs_in_block(model, layer)}"):
            index += 1  # max pool
    if f"features.{index}.weight" in state:
        raise WeightsError(f"{path.name} has more convolutions than {model.name!r}: a checkpoint of a deeper VGG?")
    if any(l.name == "predictions" for l in model.layers):
        # torchvision flattens the 512x7x7 map in NCHW order; Keras flattens NHWC.
        per_layer["fc1"] = torch_dense(take(state, "classifier.0.weight"), take(state, "classifier.0.bias"), chw=(512, 7, 7))
        per_layer["fc2"] = torch_dense(take(state, "classifier.3.weight"), take(state, "classifier.3.bias"))
        per_layer["predictions"] = torch_dense(take(state, "classifier.6.weight"), take(state, "classifier.6.bias"))
    return per_layer


def _convs_in_block(model, conv_name: str) -> int:
    block = conv_name.split("_")[0]
    return sum(1 for name in _conv_layers(model) if name.startswith(block + "_"))


def preprocess_input(x, mode: str = "caffe"):
    """keras.applications VGG preprocessing ("caffe": BGR, ImageNet mean subtracted);
    pass ``mode="torch"`` for torchvision checkpoints. ``x``: RGB in [0, 255]."""
    return preprocess_numpy(x, mode)


def _register(name: str):
    batch_norm = name.endswith("_bn")
    depth = name.removesuffix("_bn").removeprefix("vgg")
    specs = _weight_specs(name)
    default = "imagenet_keras" if name in _KERAS else "imagenet_torchvision"

    @register_model(
        name, task="classification", family="vgg", input_shape=(224, 224, 3), reference=REFERENCE,
        preprocessing=next(s.preprocessing for s in specs if s.tag == default), weights=specs, default_weights=default,
        description=f"VGG-{depth}{' with batch normalisation' if batch_norm else ''}: 3x3 convolutions in five blocks, two 4096-unit layers",
        parameters=_PARAMETERS[name],
        reference_implementation=("keras.applications and torchvision" if name in _KERAS else "torchvision") + f" {name}",
    )
    def builder(card, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
                classifier_activation="softmax", include_preprocessing=True, dropout=0.5, name=None):
        return _vgg(card, batch_norm=batch_norm, include_top=include_top, weights=weights,
                    input_tensor=input_tensor, input_shape=input_shape, pooling=pooling, classes=classes,
                    classifier_activation=classifier_activation, include_preprocessing=include_preprocessing,
                    dropout=dropout, model_name=name)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""Build {name} (keras.applications signature; ``dropout`` after fc1/fc2 as in the paper).

    ``weights``: None, a tag of ``zoo.model_card('{name}')`` ("imagenet" = its default) or a
    path to a keras.applications ``.h5`` or torchvision ``.pth`` file.
    ``include_preprocessing`` (default True): the model takes raw RGB in [0, 255] and
    normalises as its weights expect; False takes keras.applications' input
    (``preprocess_input`` applied by the caller)."""
    return builder


vgg11, vgg13, vgg16, vgg19, vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn = (
    _register(n) for n in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
)
