"""The hybrid-keras model zoo: classic vision architectures as Keras 3 functional models.

>>> import zoo
>>> zoo.list_models()
>>> print(zoo.model_card("vgg16"))
>>> model = zoo.load("mobilenet_v2", weights="imagenet", classes=10)
>>> embedder = zoo.embed("mobilenet_v2", weights="imagenet")   # for kNN heads
"""

from zoo.registry import ModelCard, list_models, load, model_card, register_model
from zoo.weights import WeightSpec, WeightsError, imagenet_class_names

__all__ = [
    "ModelCard",
    "WeightSpec",
    "WeightsError",
    "embed",
    "imagenet_class_names",
    "list_models",
    "load",
    "model_card",
    "register_model",
]


def __getattr__(name):
    # Lazy: `import zoo` stays free of Keras until a model is built.
    if name == "embed":
        from zoo.embedding import embed

        return embed
    raise AttributeError(f"module 'zoo' has no attribute {name!r}")
