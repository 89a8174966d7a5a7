"""Pieces every keras.applications-style builder shares: argument checks, the input,
the pooling/top, and loading pretrained weights through the registry's specs."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Mapping

import keras

from zoo.weights import WeightSpec, WeightsError, detect_format, fetch

log = logging.getLogger("zoo")

# A converter puts one file's arrays on the model: (model, path, load_top) -> None.
Converter = Callable[[keras.Model, Path, bool], None]


def check_arguments(name: str, *, weights, include_top: bool, classes: int, pooling, classifier_activation) -> None:
    if not isinstance(include_top, bool):
        raise TypeError(f"include_top must be True or False, got {include_top!r}")
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(f"classes must be a positive int, got {classes!r}")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be None, a weight tag of {name!r} or a file path, got {type(weights).__name__}")


def model_input(input_tensor, input_shape, *, default_shape: tuple[int, int, int], fixed_size: bool, min_size: int, name: str):
    """The model's input layer, with the shape checks keras.applications makes.

    ``fixed_size``: the top (flatten + dense) only works at ``default_shape``.
    """
    if input_shape is None:
        input_shape = default_shape if fixed_size else (None, None, default_shape[2])
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
    classes: int,
    converters: Mapping[str, Converter],
) -> keras.Model:
    """Load ``weights`` into ``model`` with the converter for the file's format.

    When ``classes`` differs from the weights' classes (fine-tuning on a new label
    set), the backbone loads and the top stays freshly initialised.
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
    file_classes = spec.classes if spec is not None else None
    load_top = include_top and (file_classes is None or file_classes == classes)
    if include_top and spec is not None and not spec.includes_top:
        load_top = False
    if include_top and not load_top:
        log.warning(
            "%s: loaded the pretrained backbone from %s; the %d-class top is newly initialised (the weights have %s classes)",
            card.name, path.name, classes, file_classes,
        )
    converters[fmt](model, path, load_top)
    return model
