"""Modules imported on first use, so registering models (metadata only) imports no Keras.

``import zoo`` and ``hybrid-keras models`` list the registry without loading Keras and
its backend (TensorFlow takes seconds to import); the architecture modules refer to
``keras`` and ``layers`` through these proxies, which import on the first attribute read.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class LazyModule:
    """Stands in for a module until an attribute is read, then imports it."""

    def __init__(self, name: str):
        self._name = name

    def _module(self) -> ModuleType:
        return importlib.import_module(self._name)

    def __getattr__(self, attribute: str):
        return getattr(self._module(), attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


keras = LazyModule("keras")
layers = LazyModule("keras.layers")
hk_layers = LazyModule("hybrid_keras.layers")
