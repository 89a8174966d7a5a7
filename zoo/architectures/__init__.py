"""One module per architecture family; importing them registers their builders."""

import importlib

# Each module registers its builders with @zoo.register_model when imported.
_FAMILIES = ("alexnet", "zfnet", "vgg", "googlenet", "bn_inception", "mobilenet_v2")

for _family in _FAMILIES:
    try:
        importlib.import_module(f"zoo.architectures.{_family}")
    except ModuleNotFoundError as error:  # a family still being written; the others stay usable
        if error.name != f"zoo.architectures.{_family}":
            raise
