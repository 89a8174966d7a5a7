"""The model registry: one ``@register_model`` decorator beside each builder.

A registered entry is a :class:`ModelCard`: what the model is for, its input size,
its reference, its preprocessing and the pretrained weight files it can load.
``zoo.load(name, ...)`` calls the builder; ``zoo.model_card(name)`` describes it.

A builder is written as ``def vgg16(card, include_top=True, weights=None, ...)``: the
decorator hands it its card and resolves ``weights=`` before the call
(:func:`zoo.common.resolve_weights`, the one place that interprets it), so the builder
receives a :class:`zoo.common.ResolvedWeights` or None. The public function it returns
has the keras.applications signature, without ``card``. Nothing here imports Keras.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Any, Callable, Mapping

from zoo.common import resolve_weights
from zoo.weights import WeightSpec

TASKS = ("classification", "embedding", "segmentation", "detection", "tracking", "generative", "sequence")

_REGISTRY: dict[str, "ModelCard"] = {}


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything a user needs to know about a registered model before loading it."""

    name: str
    builder: Callable[..., Any]
    task: str
    family: str
    input_shape: tuple[int, int, int]
    reference: str
    preprocessing: str  # a mode of hybrid_keras.preprocessing ("caffe", "torch", "tf", "none")
    weights: tuple[WeightSpec, ...] = ()
    default_weights: str | None = None  # the tag "imagenet" resolves to
    description: str = ""
    parameters: int | None = None  # with the 1000-class top, as the reference implementation counts them
    reference_implementation: str = ""
    # Builder arguments a weights file of a format needs, e.g. MobileNetV2's
    # {"torch-pth": {"layout": "torchvision"}}.
    format_arguments: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    # Said when a weight tag is asked of a model that has none (e.g. where the FCNs' go instead).
    weights_hint: str = ""
    # What the model takes, where input_shape (the builder's default image shape) does not say
    # it: "100 tokens" for a sequence model, "z of 100" for a generator.
    input_label: str = ""

    def weight(self, tag: str) -> WeightSpec:
        """The weight file for ``tag`` ("imagenet" means this model's default)."""
        if tag == "imagenet" and self.default_weights:
            tag = self.default_weights
        for spec in self.weights:
            if spec.tag == tag:
                return spec
        if not self.weights:
            raise ValueError(f"weights={tag!r}: {self.name} has no published weights; pass None (random "
                             "initialisation) or a .weights.h5 file saved from a model of this family"
                             + (f". {self.weights_hint}" if self.weights_hint else ""))
        known = ["imagenet"] * bool(self.default_weights) + [s.tag for s in self.weights]
        raise ValueError(
            f"weights={tag!r} is not a weight tag of {self.name!r}; known tags: {known or 'none'} "
            "(or pass a path to a weights file, or None for random initialisation)"
        )

    def summary(self) -> dict[str, Any]:
        """A plain dict of the card (what ``zoo.model_card`` shows)."""
        return {
            "name": self.name,
            "task": self.task,
            "family": self.family,
            "description": self.description,
            "input_shape": self.input_shape,
            "parameters": self.parameters,
            "reference": self.reference,
            "reference_implementation": self.reference_implementation,
            "preprocessing": self.preprocessing,
            "default_weights": self.default_weights,
            "weights": {spec.tag: spec.summary() for spec in self.weights},
        }

    def __str__(self) -> str:
        lines = [f"{self.name} ({self.task}, family {self.family})"]
        if self.description:
            lines.append(f"  {self.description}")
        params = f"{self.parameters:,}" if self.parameters else "n/a"
        lines += [
            f"  input: {self.input_label or self.input_shape}   parameters: {params}",
            f"  preprocessing: {self.preprocessing}",
            f"  reference: {self.reference}",
        ]
        if self.reference_implementation:
            lines.append(f"  matches: {self.reference_implementation}")
        for spec in self.weights:
            default = " (default for 'imagenet')" if spec.tag == self.default_weights else ""
            lines.append(f"  weights {spec.tag!r}{default}: {spec.describe()}")
        return "\n".join(lines)


def register_model(
    name: str,
    *,
    task: str,
    family: str,
    input_shape: tuple[int, int, int],
    reference: str,
    preprocessing: str,
    weights: tuple[WeightSpec, ...] | list[WeightSpec] = (),
    default_weights: str | None = None,
    description: str = "",
    parameters: int | None = None,
    reference_implementation: str = "",
    format_arguments: Mapping[str, Mapping[str, Any]] | None = None,
    weights_hint: str = "",
    input_label: str = "",
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a builder under ``name``. Registering a name twice is an error."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")

    def decorate(build: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered (by {_REGISTRY[name].builder.__module__})")
        tags = [spec.tag for spec in weights]
        if len(set(tags)) != len(tags):
            raise ValueError(f"{name!r} lists a weight tag twice: {tags}")
        if default_weights is not None and default_weights not in tags:
            raise ValueError(f"{name!r}: default_weights={default_weights!r} is not among its tags {tags}")
        signature = inspect.signature(build)
        if next(iter(signature.parameters), None) != "card" or "weights" not in signature.parameters:
            raise TypeError(f"the builder of {name!r} must take (card, ..., weights=None, ...)")
        public_signature = signature.replace(parameters=list(signature.parameters.values())[1:])

        @functools.wraps(build)
        def builder(*args, **kwargs):
            bound = public_signature.bind(*args, **kwargs)
            bound.apply_defaults()
            arguments = dict(bound.arguments)
            extra = arguments.pop(next((p.name for p in public_signature.parameters.values()
                                        if p.kind is inspect.Parameter.VAR_KEYWORD), "__none__"), {})
            arguments["weights"] = resolve_weights(card, arguments)
            return build(card, **arguments, **extra)

        builder.__signature__ = public_signature
        builder.model_name = name
        card = ModelCard(
            name=name,
            builder=builder,
            task=task,
            family=family,
            input_shape=tuple(input_shape),
            reference=reference,
            preprocessing=preprocessing,
            weights=tuple(weights),
            default_weights=default_weights,
            description=description,
            parameters=parameters,
            reference_implementation=reference_implementation,
            format_arguments=dict(format_arguments or {}),
            weights_hint=weights_hint,
            input_label=input_label,
        )
        _REGISTRY[name] = card
        return builder

    return decorate


def _ensure_populated() -> None:
    # Importing the architecture modules runs their decorators.
    import zoo.architectures  # noqa: F401


def get_card(name: str) -> ModelCard:
    _ensure_populated()
    if not isinstance(name, str):
        raise TypeError(f"name must be a model name (str), got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model name {name!r}.{hint} See zoo.list_models() for all {len(_REGISTRY)}.") from None


def list_models(task: str | None = None) -> list[str]:
    """Every registered model name (sorted), optionally only those of one ``task``."""
    _ensure_populated()
    if task is not None and task not in TASKS:
        raise ValueError(f"task={task!r} is not one of {TASKS}")
    return sorted(n for n, card in _REGISTRY.items() if task is None or card.task == task)


def model_card(name: str) -> ModelCard:
    """The card of a registered model: task, parameters, input size, preprocessing, weights."""
    return get_card(name)


def load(name: str, weights: str | None = None, **kwargs: Any):
    """Build the registered model ``name``.

    ``weights`` is None (random initialisation), a weight tag from its model card
    ("imagenet" is the default tag) or a path to a weights file. Other keyword
    arguments go to the builder (``classes``, ``include_top``, ``input_shape``, ...).
    """
    card = get_card(name)
    model = card.builder(weights=weights, **kwargs)
    return model
