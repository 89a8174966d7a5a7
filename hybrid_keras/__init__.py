"""hybrid-keras: hybrid solvers (compiled decision forests, FANNG nearest neighbours)
on Keras 3 models, and SavedModel export for TensorFlow Serving.

Submodules import TensorFlow lazily, so ``python -m hybrid_keras.fanng.build`` and
the command line start quickly.
"""

import os
from pathlib import Path

__version__ = "0.1.0"
# Where trained artefacts and prepared benchmark data are kept between runs.
CACHE_DIR = Path(os.environ.get("HYBRID_KERAS_CACHE", Path.home() / ".cache" / "hybrid_keras"))

__all__ = ["export_saved_model", "verify_saved_model"]


def __getattr__(name):
    if name in ("export_saved_model", "verify_saved_model"):
        from hybrid_keras import export

        return getattr(export, name)
    raise AttributeError(f"module 'hybrid_keras' has no attribute {name!r}")
