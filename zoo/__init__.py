"""The hybrid-keras model zoo: classic vision architectures as Keras 3 functional models.

>>> import zoo
>>> zoo.list_models()
>>> print(zoo.model_card("vgg16"))
>>> model = zoo.load("mobilenet_v2", weights="imagenet", classes=10)
"""

from zoo.registry import ModelCard, list_models, load, model_card, register_model
from zoo.weights import WeightSpec, WeightsError, imagenet_class_names

__all__ = [
    "ModelCard",
    "WeightSpec",
    "WeightsError",
    "imagenet_class_names",
    "list_models",
    "load",
    "model_card",
    "register_model",
]
