"""Pieces every keras.applications-style builder shares: argument checks, the input,
the pooling/top, and loading pretrained weights through the registry's specs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Mapping

import keras

from zoo.weights import WeightSpec, WeightsError, assign, detect_format, fetch

log = logging.getLogger("zoo")

# A converter reads one file: (model, path) -> {layer name: [arrays in the layer's weight order]}.
Converter = Callable[[keras.Model, Path], Mapping[str, list]]


def check_arguments(name: str, *, weights, include_top: bool, classes: int, pooling, classifier_activation) -> None:
    if not isinstance(include_top, bool):
        raise TypeError(f"include_top must be True or False, got {include_top!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be a positive int, got {classes!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, a weight tag of {name!r} or a file path, got {type(weights).__name__}")


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
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    if input_shape[2] not in (None, 1, 3):
        raise ValueError(f"input_shape must have 1 or 3 channels last, got {input_shape}")
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


def resolve_weights(card, weights) -> tuple[Path | None, WeightSpec | None]:
    """(local path, spec) for ``weights``: None, a tag of ``card``, or a file path."""
    if weights is None:
        return None, None
    text = os.fspath(weights)
    looks_like_path = os.sep in text or text.endswith((".h5", ".pth", ".pt")) or os.path.exists(text)
    if looks_like_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights={text!r}: no such file")
        return path, None
    spec = card.weight(text)
    return fetch(spec), spec


def load_weights(
    model: keras.Model,
    card,
    weights,
    *,
    include_top: bool,
    converters: Mapping[str, Converter],
    top_layers: tuple[str, ...] = ("predictions",),
) -> keras.Model:
    """Load ``weights`` into ``model`` with the converter for the file's format.

    A converter reads the file and returns ``{layer name: arrays}`` for the layers of
    ``model`` it can map. When the file's classifier (``top_layers``) does not fit the
    model's, as when fine-tuning on a new label set, the backbone loads, the top stays
    freshly initialised, and a log line says so.
    """
    path, spec = resolve_weights(card, weights)
    # Export reads this to put the right preprocessing inside the served graph.
    model.preprocessing = card.preprocessing
    if path is None:
        return model
    fmt = detect_format(path)
    model.preprocessing = spec.preprocessing if spec is not None else ("torch" if fmt == "torch-pth" else card.preprocessing)
    if spec is not None and fmt != spec.format:
        raise WeightsError(f"{path} is a {fmt} file but weight tag {spec.tag!r} is {spec.format}")
    if fmt not in converters:
        raise WeightsError(f"{card.name} cannot read {fmt} files (it reads {sorted(converters)})")
    arrays = dict(converters[fmt](model, path))
    model_layers = {layer.name: layer for layer in model.layers}

    def fits(name):
        return name in arrays and [tuple(w.shape) for w in model_layers[name].weights] == [tuple(a.shape) for a in arrays[name]]

    # Top layers the file cannot fill (other classes, or a headless file) stay freshly initialised.
    skip = {name for name in top_layers if name in model_layers and not fits(name)}
    if skip:
        log.warning("%s: loaded the pretrained backbone from %s; %s newly initialised (the file's classifier does "
                    "not fit the model's: other classes, or no top in the file)", card.name, path.name, ", ".join(sorted(skip)))
    # A file with a classifier loads into a headless model: its top is simply not used.
    arrays = {name: value for name, value in arrays.items() if not (name in top_layers and (name in skip or name not in model_layers))}
    assign(model, arrays, skip=skip, source=path.name)
    return model
