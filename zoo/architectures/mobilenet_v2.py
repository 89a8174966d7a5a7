"""MobileNetV2 with width multipliers 0.35 to 1.4.

Reference: M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2:
Inverted Residuals and Linear Bottlenecks", CVPR 2018. Layer names follow
keras.applications (``Conv1``, ``block_N_expand``, ``block_N_depthwise``, ...).

The two publishers differ in details that change the numbers, so the builder has a
``layout``: ``"keras"`` pads stride-2 depthwise convolutions bottom/right and uses BN
epsilon 1e-3; ``"torchvision"`` pads symmetrically and uses epsilon 1e-5. The layout
follows the weights (a torchvision tag or ``.pth`` file selects ``"torchvision"``).
"""

from __future__ import annotations

from hybrid_keras.preprocessing import preprocess_numpy
from zoo import common
from zoo.common import decode_predictions  # noqa: F401  (keras.applications' per-family name)
from zoo.lazy import layers
from zoo.registry import register_model
from zoo.weights import WeightSpec, WeightsError, load_state_dict, read_keras_h5, take
from zoo.weights import torch_batchnorm, torch_conv, torch_dense, torch_depthwise

REFERENCE = "Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks, CVPR 2018"
ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
LAYOUTS = ("keras", "torchvision")
# (expansion t, output channels c, repeats n, first stride s), from the paper's Table 2.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}{suffix}.h5"
# ImageNet top-1/top-5 of the TF-slim checkpoints these files were converted from, as
# their publisher's table reports them; keyed by (alpha, input size).
_KERAS_ACCURACY = {
    (1.4, 224): (75.0, 92.5), (1.3, 224): (74.4, 92.1),
    (1.0, 224): (71.8, 91.0), (1.0, 192): (70.7, 90.1), (1.0, 160): (68.8, 89.0), (1.0, 128): (65.3, 86.9), (1.0, 96): (60.3, 83.2),
    (0.75, 224): (69.8, 89.6), (0.75, 192): (68.7, 88.9), (0.75, 160): (66.4, 87.3), (0.75, 128): (63.2, 85.3), (0.75, 96): (58.8, 81.6),
    (0.5, 224): (65.4, 86.4), (0.5, 192): (63.9, 85.4), (0.5, 160): (61.0, 83.2), (0.5, 128): (57.7, 80.8), (0.5, 96): (51.2, 75.8),
    (0.35, 224): (60.3, 82.9), (0.35, 192): (58.2, 81.2), (0.35, 160): (55.7, 79.1), (0.35, 128): (50.8, 75.0), (0.35, 96): (45.5, 70.4),
}
_TORCHVISION = (
    ("imagenet_torchvision", "mobilenet_v2-b0353104.pth", 71.878, 90.286, "IMAGENET1K_V1"),
    ("imagenet_torchvision_v2", "mobilenet_v2-7ebf99e0.pth", 72.154, 90.822, "IMAGENET1K_V2 (longer recipe)"),
)


def keras_tag(alpha: float, rows: int, include_top: bool = True) -> str:
    return f"imagenet_keras_{alpha}_{rows}" + ("" if include_top else "_notop")


def _weight_specs() -> list[WeightSpec]:
    specs = []
    for (alpha, rows), (top1, top5) in _KERAS_ACCURACY.items():
        for includes_top in (True, False):
            specs.append(WeightSpec(
                tag=keras_tag(alpha, rows, includes_top),
                url=_KERAS_URL.format(alpha=alpha, rows=rows, suffix="" if includes_top else "_no_top"),
                format="keras-h5", source="keras.applications", preprocessing="tf", includes_top=includes_top,
                top1=top1, top5=top5, builder_kwargs={"alpha": alpha, "input_shape": (rows, rows, 3), "layout": "keras"},
                notes="keras.applications publishes no hash for the MobileNetV2 files",
            ))
    for tag, file, top1, top5, what in _TORCHVISION:
        specs.append(WeightSpec(
            tag=tag, url=f"https://download.pytorch.org/models/{file}", format="torch-pth", source="torchvision",
            preprocessing="torch", file_hash=file.rsplit("-", 1)[1].split(".")[0], hash_algorithm="sha256-prefix",
            top1=top1, top5=top5, builder_kwargs={"alpha": 1.0, "layout": "torchvision"},
            notes=f"torchvision {what}; the hash is the sha256 prefix in the file name",
        ))
    return specs


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _stride2_padding(layout: str):
    return ((0, 1), (0, 1)) if layout == "keras" else ((1, 1), (1, 1))


def _inverted_residual(x, *, expansion, filters, stride, alpha, block_id, layout, epsilon):
    in_channels = x.shape[-1]
    out_channels = make_divisible(int(filters * alpha), 8)
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    inputs = x
    if block_id:
        x = layers.Conv2D(expansion * in_channels, 1, use_bias=False, name=prefix + "expand")(x)
        x = layers.BatchNormalization(epsilon=epsilon, momentum=0.999, name=prefix + "expand_BN")(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
    if stride == 2:
        x = layers.ZeroPadding2D(_stride2_padding(layout), name=prefix + "pad")(x)
    x = layers.DepthwiseConv2D(3, strides=stride, use_bias=False, padding="same" if stride == 1 else "valid",
                               name=prefix + "depthwise")(x)
    x = layers.BatchNormalization(epsilon=epsilon, momentum=0.999, name=prefix + "depthwise_BN")(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D(out_channels, 1, use_bias=False, name=prefix + "project")(x)
    x = layers.BatchNormalization(epsilon=epsilon, momentum=0.999, name=prefix + "project_BN")(x)
    if stride == 1 and in_channels == out_channels:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x


@register_model(
    "mobilenet_v2", task="classification", family="mobilenet_v2", input_shape=(224, 224, 3), reference=REFERENCE,
    preprocessing="tf", weights=_weight_specs(), default_weights=keras_tag(1.0, 224),
    description="MobileNetV2: inverted residual blocks with linear bottlenecks; alpha 0.35-1.4 scales the width",
    parameters=3_538_984, reference_implementation="keras.applications MobileNetV2 (alpha 1.0); torchvision mobilenet_v2 has 3,504,872 without BN buffers",
    format_arguments={"keras-h5": {"layout": "keras"}, "torch-pth": {"layout": "torchvision"}},
)
def mobilenet_v2(card, include_top=True, weights=None, input_tensor=None, input_shape=None, alpha=1.0, pooling=None,
                 classes=1000, classifier_activation="softmax", include_preprocessing=True, dropout=0.2, layout=None,
                 name=None):
    """Build MobileNetV2 (keras.applications signature plus ``include_preprocessing``, ``dropout``
    before the classifier and ``layout``).

    ``weights``: None, a tag of ``zoo.model_card('mobilenet_v2')``, or a ``.h5``/``.pth`` path.
    ``"imagenet"`` picks the keras.applications file for this ``alpha`` and input size
    (96, 128, 160, 192 or 224; 1.3 and 1.4 only at 224). ``layout`` follows the weights
    (torchvision files need "torchvision"); without weights it defaults to "keras".
    ``include_preprocessing`` (default True): the model takes raw RGB in [0, 255].
    """
    common.check_arguments("mobilenet_v2", include_top=include_top, classes=classes, pooling=pooling,
                           classifier_activation=classifier_activation)
    if alpha not in ALPHAS:
        raise ValueError(f"alpha must be one of {ALPHAS}. Received: alpha={alpha!r}")
    layout = "keras" if layout is None else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}. Received: layout={layout!r}")
    epsilon = 1e-3 if layout == "keras" else 1e-5

    img_input = common.model_input(input_tensor, input_shape, default_shape=(224, 224, 3), fixed_size=False,
                                   min_size=32, name="mobilenet_v2", include_top=include_top)
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    x = layers.ZeroPadding2D(_stride2_padding(layout), name="Conv1_pad")(x)
    x = layers.Conv2D(make_divisible(32 * alpha, 8), 3, strides=2, use_bias=False, name="Conv1")(x)
    x = layers.BatchNormalization(epsilon=epsilon, momentum=0.999, name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    block_id = 0
    for expansion, filters, repeats, first_stride in SETTINGS:
        for i in range(repeats):
            x = _inverted_residual(x, expansion=expansion, filters=filters, stride=first_stride if i == 0 else 1,
                                   alpha=alpha, block_id=block_id, layout=layout, epsilon=epsilon)
            block_id += 1
    last_channels = make_divisible(1280 * alpha, 8) if alpha > 1.0 else 1280
    x = layers.Conv2D(last_channels, 1, use_bias=False, name="Conv_1")(x)
    x = layers.BatchNormalization(epsilon=epsilon, momentum=0.999, name="Conv_1_bn")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)

    if include_top:
        x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = common.pooled(x, pooling)

    model = common.functional_model(input_tensor, img_input, x, name or f"mobilenetv2_{alpha:.2f}_{img_input.shape[1] or 'any'}")
    return common.load_weights(model, card, weights,
                               converters={"keras-h5": _load_keras_h5, "torch-pth": _load_torch_pth})


def _load_keras_h5(model, path):
    return read_keras_h5(path)


def _block_prefixes(model) -> list[str]:
    """'expanded_conv_', 'block_1_', ... in order."""
    return ["expanded_conv_"] + [f"block_{i}_" for i in range(1, 17) if any(l.name == f"block_{i}_project" for l in model.layers)]


def _load_torch_pth(model, path):
    state = load_state_dict(path)
    src = path.name
    per_layer = {
        "Conv1": torch_conv(take(state, "features.0.0.weight", src)),
        "bn_Conv1": torch_batchnorm(state, "features.0.1"),
    }
    for index, prefix in enumerate(_block_prefixes(model), start=1):
        conv = f"features.{index}.conv"
        if prefix == "expanded_conv_":  # no expansion: depthwise, project
            parts = {"depthwise": (f"{conv}.0.0", f"{conv}.0.1"), "project": (f"{conv}.1", f"{conv}.2")}
        else:
            parts = {"expand": (f"{conv}.0.0", f"{conv}.0.1"), "depthwise": (f"{conv}.1.0", f"{conv}.1.1"),
                     "project": (f"{conv}.2", f"{conv}.3")}
        for part, (conv_key, bn_key) in parts.items():
            weight = take(state, f"{conv_key}.weight", src)
            per_layer[prefix + part] = torch_depthwise(weight) if part == "depthwise" else torch_conv(weight)
            per_layer[prefix + part + "_BN"] = torch_batchnorm(state, bn_key)
    per_layer["Conv_1"] = torch_conv(take(state, "features.18.0.weight", src))
    try:
        per_layer["Conv_1_bn"] = torch_batchnorm(state, "features.18.1")
    except KeyError:
        raise WeightsError(f"{src} is not a torchvision MobileNetV2 checkpoint") from None
    per_layer["predictions"] = torch_dense(take(state, "classifier.1.weight", src), take(state, "classifier.1.bias", src))
    return per_layer


def preprocess_input(x, mode: str = "tf"):
    """keras.applications MobileNetV2 preprocessing ("tf": scale to [-1, 1]); pass
    ``mode="torch"`` for torchvision checkpoints. ``x``: RGB in [0, 255]."""
    return preprocess_numpy(x, mode)
