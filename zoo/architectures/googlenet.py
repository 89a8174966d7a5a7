"""GoogLeNet (Inception v1), with its two auxiliary classifiers for training.

Reference: C. Szegedy et al., "Going Deeper with Convolutions", CVPR 2015. The layout
is torchvision's, so its checkpoint loads: every convolution is followed by batch
normalisation (eps 1e-3), and the "5x5" branch of each Inception block uses a 3x3
convolution (a known difference from the paper that torchvision kept for its weights).

``aux_logits=True`` builds the training model: outputs ``[predictions,
aux1_predictions, aux2_predictions]`` (auxiliary heads after inception 4a and 4d),
trained with ``loss_weights=AUX_LOSS_WEIGHTS`` (1, 0.3, 0.3, as in the paper).
``inference_model(model)`` returns the single-output model that shares its weights.
"""

from __future__ import annotations

from hybrid_keras.preprocessing import preprocess_numpy
from zoo import common
from zoo.common import ceil_max_pool, conv_bn
from zoo.common import decode_predictions  # noqa: F401  (keras.applications' per-family name)
from zoo.lazy import hk_layers, keras, layers
from zoo.registry import register_model
from zoo.weights import WeightSpec, WeightsError, load_state_dict, take, torch_batchnorm, torch_conv, torch_dense

REFERENCE = "Szegedy et al., Going Deeper with Convolutions, CVPR 2015"
AUX_LOSS_WEIGHTS = (1.0, 0.3, 0.3)
TOP_LAYERS = ("predictions", "aux1_fc1", "aux1_predictions", "aux2_fc1", "aux2_predictions")

# (name, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool projection), from the paper's Table 1.
INCEPTION_BLOCKS = (
    ("inception3a", 64, 96, 128, 16, 32, 32),
    ("inception3b", 128, 128, 192, 32, 96, 64),
    ("inception4a", 192, 96, 208, 16, 48, 64),
    ("inception4b", 160, 112, 224, 24, 64, 64),
    ("inception4c", 128, 128, 256, 24, 64, 64),
    ("inception4d", 112, 144, 288, 32, 64, 64),
    ("inception4e", 256, 160, 320, 32, 128, 128),
    ("inception5a", 256, 160, 320, 32, 128, 128),
    ("inception5b", 384, 192, 384, 48, 128, 128),
)

_TORCHVISION = WeightSpec(
    tag="imagenet_torchvision", url="https://download.pytorch.org/models/googlenet-1378be20.pth", format="torch-pth",
    source="torchvision", preprocessing="tf", file_hash="1378be20", hash_algorithm="sha256-prefix",
    top1=69.778, top5=89.530,
    notes="torchvision IMAGENET1K_V1; about 49.7 MB. torchvision feeds it with transform_input=True, which turns "
          "mean/std-normalised input into (x / 127.5 - 1): the 'tf' preprocessing here is exactly that.",
)


def _inception(x, name, c1, c3r, c3, c5r, c5, pool_proj):
    branch1 = conv_bn(x, c1, 1, name=f"{name}_branch1")
    branch2 = conv_bn(x, c3r, 1, name=f"{name}_branch2a")
    branch2 = conv_bn(branch2, c3, 3, padding=1, name=f"{name}_branch2b")
    branch3 = conv_bn(x, c5r, 1, name=f"{name}_branch3a")
    branch3 = conv_bn(branch3, c5, 3, padding=1, name=f"{name}_branch3b")
    branch4 = layers.MaxPooling2D(3, strides=1, padding="same", name=f"{name}_branch4_pool")(x)
    branch4 = conv_bn(branch4, pool_proj, 1, name=f"{name}_branch4")
    return layers.Concatenate(name=name)([branch1, branch2, branch3, branch4])


def _aux_head(x, name, classes, classifier_activation):
    x = hk_layers.AdaptiveAveragePooling2D(4, name=f"{name}_pool")(x)
    x = conv_bn(x, 128, 1, name=f"{name}_conv")
    x = layers.Flatten(name=f"{name}_flatten")(x)
    x = layers.Dense(1024, activation="relu", name=f"{name}_fc1")(x)
    x = layers.Dropout(0.7, name=f"{name}_dropout")(x)
    return layers.Dense(classes, activation=classifier_activation, name=f"{name}_predictions")(x)


@register_model(
    "googlenet", task="classification", family="googlenet", input_shape=(224, 224, 3), reference=REFERENCE,
    preprocessing="tf", weights=(_TORCHVISION,), default_weights="imagenet_torchvision",
    description="Inception v1 (torchvision layout: BN after every conv, 3x3 in the '5x5' branch); aux_logits=True adds the two training heads",
    parameters=6_624_904 + 2 * 7_280,
    reference_implementation="torchvision googlenet (6,624,904 without BN buffers; Keras counts BN moving statistics)",
)
def googlenet(card, include_top=True, weights=None, input_tensor=None, input_shape=None, pooling=None, classes=1000,
              classifier_activation="softmax", include_preprocessing=True, aux_logits=False, dropout=0.2, name=None):
    """Build GoogLeNet (keras.applications signature plus ``include_preprocessing``,
    ``aux_logits`` and ``dropout``).

    With ``aux_logits=True`` the model has three outputs for training; compile it with
    ``loss_weights=AUX_LOSS_WEIGHTS`` and serve ``inference_model(model)``.
    """
    common.check_arguments("googlenet", include_top=include_top, classes=classes, pooling=pooling,
                           classifier_activation=classifier_activation)
    if aux_logits and not include_top:
        raise ValueError("aux_logits=True needs include_top=True (the auxiliary heads are classifiers)")
    img_input = common.model_input(input_tensor, input_shape, default_shape=(224, 224, 3), fixed_size=False,
                                   min_size=32 if not aux_logits else 160, name="googlenet", include_top=include_top)
    x = common.preprocessing(img_input, card, weights, include_preprocessing)
    x = conv_bn(x, 64, 7, stride=2, padding=3, name="conv1")
    x = ceil_max_pool(x, 3, 2, "pool1")
    x = conv_bn(x, 64, 1, name="conv2")
    x = conv_bn(x, 192, 3, padding=1, name="conv3")
    x = ceil_max_pool(x, 3, 2, "pool2")
    aux_outputs = []
    for block in INCEPTION_BLOCKS:
        x = _inception(x, *block)
        if block[0] == "inception3b":
            x = ceil_max_pool(x, 3, 2, "pool3")
        elif block[0] == "inception4e":
            x = ceil_max_pool(x, 2, 2, "pool4")
        elif aux_logits and block[0] in ("inception4a", "inception4d"):
            aux_outputs.append(_aux_head(x, "aux1" if block[0] == "inception4a" else "aux2", classes, classifier_activation))

    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(classes, activation=classifier_activation, name="predictions")(x)
    else:
        x = common.pooled(x, pooling)

    model = common.functional_model(input_tensor, img_input, [x, *aux_outputs] if aux_outputs else x, name or "googlenet")
    return common.load_weights(model, card, weights, top_layers=TOP_LAYERS,
                               converters={"torch-pth": _load_torch_pth})


def inference_model(model: keras.Model) -> keras.Model:
    """The single-output model (main classifier) of a GoogLeNet built with aux_logits=True; weights are shared."""
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.inputs, model.outputs[0], name=f"{model.name}_inference")


def _load_torch_pth(model, path):
    state = load_state_dict(path)
    src = path.name

    def conv_and_bn(layer, prefix):
        return {layer: torch_conv(take(state, f"{prefix}.conv.weight", src)), f"{layer}_bn": torch_batchnorm(state, f"{prefix}.bn")}

    per_layer = {}
    try:
        for layer in ("conv1", "conv2", "conv3"):
            per_layer.update(conv_and_bn(layer, layer))
        for block in INCEPTION_BLOCKS:
            name = block[0]
            for layer, prefix in (("branch1", "branch1"), ("branch2a", "branch2.0"), ("branch2b", "branch2.1"),
                                  ("branch3a", "branch3.0"), ("branch3b", "branch3.1"), ("branch4", "branch4.1")):
                per_layer.update(conv_and_bn(f"{name}_{layer}", f"{name}.{prefix}"))
    except KeyError as error:
        raise WeightsError(f"{src} has no tensor {error}: not a torchvision GoogLeNet checkpoint") from None
    layer_names = {l.name for l in model.layers}
    for aux in ("aux1", "aux2"):
        if f"{aux}_fc1" in layer_names:
            per_layer.update(conv_and_bn(f"{aux}_conv", f"{aux}.conv"))
            per_layer[f"{aux}_fc1"] = torch_dense(take(state, f"{aux}.fc1.weight", src), take(state, f"{aux}.fc1.bias", src), chw=(128, 4, 4))
            per_layer[f"{aux}_predictions"] = torch_dense(take(state, f"{aux}.fc2.weight", src), take(state, f"{aux}.fc2.bias", src))
    per_layer["predictions"] = torch_dense(take(state, "fc.weight", src), take(state, "fc.bias", src))
    return per_layer


def preprocess_input(x, mode: str = "tf"):
    """Scale to [-1, 1] (what torchvision's transform_input produces). ``x``: RGB in [0, 255]."""
    return preprocess_numpy(x, mode)
