"""What every keras.applications-style builder shares: argument checks, the input and
its preprocessing layer, the pooling, resolving ``weights=`` (once, here, for every
family) and loading the resolved file."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from zoo.lazy import hk_layers, keras, layers
from zoo.weights import WeightSpec, WeightsError, assign, detect_format, fetch, imagenet_class_names

log = logging.getLogger("zoo")

# A converter reads one file: (model, path) -> {layer name: [arrays in the layer's weight order]}.
Converter = Callable[[Any, Path], Mapping[str, list]]

KERAS_WEIGHTS = "keras-weights"  # a Keras 3 ``.weights.h5`` saved from a model of the same family


@dataclasses.dataclass(frozen=True)
class ResolvedWeights:
    """A local weights file, what it is, and the preprocessing its weights expect."""

    path: Path
    format: str  # "keras-h5", "torch-pth" or KERAS_WEIGHTS
    preprocessing: str
    spec: WeightSpec | None = None  # None for a file the user gave


def check_arguments(name: str, *, include_top: bool, classes: int, pooling, classifier_activation) -> None:
    if not isinstance(include_top, bool):
        raise TypeError(f"include_top must be True or False. Received: include_top={include_top!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be a positive int. Received: classes={classes!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
    if classifier_activation is not None:
        try:
            keras.activations.get(classifier_activation)
        except (ValueError, TypeError):
            raise ValueError(f"classifier_activation must be None, a Keras activation name or a callable. "
                             f"Received: classifier_activation={classifier_activation!r}") from None


# ----------------------------------------------------------------------------- weights=

def resolve_weights(card, arguments: dict[str, Any]) -> ResolvedWeights | None:
    """The one interpretation of ``weights=`` for every family.

    ``weights`` is None, a weight tag of ``card`` ("imagenet" picks the default
    publisher's file for the call's other arguments, such as MobileNetV2's ``alpha`` and
    input size), a published ``.h5`` / ``.pth`` file, or a Keras ``.weights.h5`` saved from
    a model of this family. The builder arguments a file needs (``layout``, the input
    size of a file with its top, ``alpha``) are checked, and filled in ``arguments``
    where the caller left them unset.
    """
    weights = arguments.get("weights")
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, a weight tag of {card.name!r} or a file path. "
                        f"Received: weights of type {type(weights).__name__}")
    text = os.fspath(weights)
    if os.sep in text or text.endswith((".h5", ".pth", ".pt")) or os.path.exists(text):
        return _resolve_file(card, Path(text).expanduser(), arguments)
    spec = _select_spec(card, text, arguments)
    _apply_builder_arguments(card, spec.builder_kwargs, arguments, source=f"weights={spec.tag!r}",
                             input_size_binding=spec.includes_top)
    return ResolvedWeights(path=fetch(spec), format=spec.format, preprocessing=spec.preprocessing, spec=spec)


def _resolve_file(card, path: Path, arguments) -> ResolvedWeights:
    if not path.is_file():
        raise WeightsError(f"weights={str(path)!r}: no such file")
    if path.name.endswith(".weights.h5"):
        return ResolvedWeights(path=path, format=KERAS_WEIGHTS, preprocessing=card.preprocessing)
    fmt = detect_format(path)
    published = [spec for spec in card.weights if spec.format == fmt]
    if not published:
        readable = sorted({spec.format for spec in card.weights} | {KERAS_WEIGHTS})
        raise WeightsError(f"{card.name} cannot read {fmt} files (it reads {readable}). Received: weights={str(path)!r}")
    _apply_builder_arguments(card, card.format_arguments.get(fmt, {}), arguments, source=f"a {fmt} file",
                             input_size_binding=False)
    return ResolvedWeights(path=path, format=fmt, preprocessing=published[0].preprocessing)


def _select_spec(card, tag: str, arguments) -> WeightSpec:
    if tag != "imagenet" or not card.default_weights:
        return card.weight(tag)
    default = card.weight(card.default_weights)
    include_top = arguments.get("include_top", True)
    shape = arguments.get("input_shape")
    rows = (tuple(shape) if shape is not None else card.input_shape)[0]
    candidates = []
    for spec in card.weights:
        if spec.source != default.source or spec.format != default.format:
            continue
        if any(arguments.get(key, value) != value for key, value in spec.builder_kwargs.items()
               if key not in ("input_shape", "layout")):
            continue  # another width
        if "input_shape" in spec.builder_kwargs and spec.builder_kwargs["input_shape"][0] != rows:
            continue  # trained at another input size
        candidates.append(spec)
    if not candidates:
        widths = {key: arguments[key] for key in default.builder_kwargs if key not in ("input_shape", "layout")}
        published = sorted({spec.builder_kwargs["input_shape"][0] for spec in card.weights
                            if "input_shape" in spec.builder_kwargs
                            and all(spec.builder_kwargs.get(k) == v for k, v in widths.items())})
        if not published:
            raise ValueError(f"weights='imagenet': no pretrained weights of {card.name} are published for "
                             + ", ".join(f"{k}={v!r}" for k, v in widths.items()))
        raise ValueError(f"weights='imagenet': {card.name} has no {default.source} file for input size {rows}"
                         f"{' with ' + str(widths) if widths else ''}; published input sizes: {published}")
    # A file without its top is smaller, so take it when the model has no top.
    candidates.sort(key=lambda spec: spec.includes_top != include_top)
    return candidates[0]


def _apply_builder_arguments(card, required: Mapping[str, Any], arguments, *, source: str, input_size_binding: bool):
    for key, value in required.items():
        if key == "input_shape":
            given = arguments.get("input_shape")
            if given is None:
                if input_size_binding or arguments.get("include_top", True):
                    arguments["input_shape"] = tuple(value)
            elif input_size_binding and arguments.get("include_top", True) and tuple(given) != tuple(value):
                raise ValueError(f"input_shape={tuple(given)}: {source} with its classifier needs {tuple(value)}")
            continue
        if key not in arguments:
            raise ValueError(f"{source} needs {key}={value!r}, which {card.name} does not take")
        if arguments[key] is None:
            arguments[key] = value
        elif arguments[key] != value:
            raise ValueError(f"{key}={arguments[key]!r} does not fit {source}, which needs {key}={value!r}")


def load_weights(model, card, weights: ResolvedWeights | None, *, converters: Mapping[str, Converter],
                 top_layers: tuple[str, ...] = ("predictions",)):
    """Load resolved ``weights`` into ``model`` with the converter for the file's format.

    A converter reads the file and returns ``{layer name: arrays}`` for the layers of
    ``model`` it can map. When the file's classifier (``top_layers``) does not fit the
    model's, as when fine-tuning on a new label set, the backbone loads, the top stays
    freshly initialised, and a log line says so.
    """
    if weights is None:
        return model
    if weights.format == KERAS_WEIGHTS:
        try:
            model.load_weights(weights.path)
        except (ValueError, KeyError, OSError) as error:
            raise WeightsError(f"{weights.path} does not fit {model.name!r} (saved from another model?): {error}") from None
        return model
    if weights.spec is not None and detect_format(weights.path) != weights.spec.format:
        raise WeightsError(f"{weights.path} is not a {weights.spec.format} file, as weight tag {weights.spec.tag!r} is")
    if weights.format not in converters:
        raise WeightsError(f"{card.name} cannot read {weights.format} files (it reads {sorted(converters)})")
    arrays = dict(converters[weights.format](model, weights.path))
    model_layers = {layer.name: layer for layer in model.layers}

    def fits(name):
        return name in arrays and [tuple(w.shape) for w in model_layers[name].weights] == [tuple(a.shape) for a in arrays[name]]

    # Top layers the file cannot fill (other classes, or a headless file) stay freshly initialised.
    skip = {name for name in top_layers if name in model_layers and not fits(name)}
    if skip:
        log.warning("%s: loaded the pretrained backbone from %s; %s newly initialised (the file's classifier does "
                    "not fit the model's: other classes, or no top in the file)", card.name, weights.path.name,
                    ", ".join(sorted(skip)))
    # A file with a classifier loads into a headless model: its top is simply not used.
    arrays = {name: value for name, value in arrays.items() if not (name in top_layers and (name in skip or name not in model_layers))}
    assign(model, arrays, skip=skip, source=weights.path.name)
    return model


# ----------------------------------------------------------------------------- graph pieces

def model_input(input_tensor, input_shape, *, default_shape: tuple[int, int, int], fixed_size: bool, min_size: int,
                name: str, include_top: bool = False):
    """The model's input layer, with the shape checks keras.applications makes.

    ``fixed_size``: the top (flatten + dense) only works at ``default_shape``. Without an
    ``input_shape``, a model with its top takes ``default_shape`` (as keras.applications
    does); a headless one takes any size.
    """
    if input_shape is None:
        input_shape = default_shape if (fixed_size or include_top) else (None, None, default_shape[2])
    input_shape = tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels). Received: input_shape={input_shape}")
    if input_shape[2] not in (None, 1, 3):
        raise ValueError(f"input_shape must have 1 or 3 channels last. Received: input_shape={input_shape}")
    if fixed_size and tuple(input_shape[:2]) != tuple(default_shape[:2]):
        raise ValueError(
            f"input_shape={input_shape}: {name} with include_top=True needs {default_shape} "
            "(its flatten + dense top is sized for it); use include_top=False for other sizes"
        )
    for side in input_shape[:2]:
        if side is not None and side < min_size:
            raise ValueError(f"input_shape={input_shape}: {name} needs height and width of at least {min_size}")
    if input_tensor is None:
        return keras.Input(shape=input_shape, name="image")
    if not keras.backend.is_keras_tensor(input_tensor):
        return keras.Input(tensor=input_tensor, shape=input_shape, name="image")
    return input_tensor


def preprocessing(x, card, weights: ResolvedWeights | None, include_preprocessing: bool):
    """The model's first layer: raw RGB in [0, 255] -> what the weights were trained on."""
    if not isinstance(include_preprocessing, bool):
        raise TypeError(f"include_preprocessing must be True or False. Received: {include_preprocessing!r}")
    if not include_preprocessing:
        return x
    mode = weights.preprocessing if weights is not None else card.preprocessing
    return hk_layers.Preprocessing(mode, name="preprocessing")(x)


def pooled(x, pooling):
    """The headless model's output: the feature map, or its global average / max."""
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def functional_model(input_tensor, img_input, outputs, name):
    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    return keras.Model(inputs, outputs, name=name)


def conv_bn(x, filters, kernel, *, stride=1, padding=0, epsilon=1e-3, momentum=0.9, name):
    """Convolution (no bias), batch norm, ReLU: torchvision's BasicConv2d."""
    if padding:
        x = layers.ZeroPadding2D(padding, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, kernel, strides=stride, use_bias=False, name=name)(x)
    x = layers.BatchNormalization(epsilon=epsilon, momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def ceil_max_pool(x, size, stride, name):
    """Max pooling with torch's ceil_mode=True: a partial window at the bottom/right edge counts.

    The inputs follow ReLUs (>= 0), so zero padding cannot win the max.
    """
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        return layers.MaxPooling2D(size, strides=stride, padding="same", name=name)(x)

    def extra(n):
        out = math.ceil((n - size) / stride) + 1
        if (out - 1) * stride >= n:  # the last window must start inside the input
            out -= 1
        return max(0, (out - 1) * stride + size - n)

    pad_h, pad_w = extra(height), extra(width)
    if pad_h or pad_w:
        x = layers.ZeroPadding2D(((0, pad_h), (0, pad_w)), name=f"{name}_pad")(x)
    return layers.MaxPooling2D(size, strides=stride, name=name)(x)


# ----------------------------------------------------------------------------- ImageNet outputs

def decode_predictions(predictions, top: int = 5):
    """[(class index, class name, score), ...] per row of ImageNet-1k scores, with the shipped names."""
    names = imagenet_class_names()
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[1] != len(names):
        raise ValueError(f"predictions must be [batch, {len(names)}]. Received: shape {predictions.shape}")
    order = np.argsort(-predictions, axis=1)[:, :top]
    return [[(int(i), names[i], float(row[i])) for i in idx] for row, idx in zip(predictions, order)]
