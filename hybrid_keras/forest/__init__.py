"""Decision-forest heads: train a forest on a backbone's features (per image or per
pixel) with TF-DF or ydf, and compile it into a Keras layer of plain tensor ops; or grow a
residual forest (randomised trees, leaves trained jointly by SGD) with NumPy alone."""

from hybrid_keras.forest.compile import CompiledForest, UnsupportedForestError, compile_forest
from hybrid_keras.forest.layer import ForestLayer
from hybrid_keras.forest.residual import ResidualSoftmax, fit_leaves, grow_random_forest, train_residual_forest
from hybrid_keras.forest.train import (
    attach,
    extract_features,
    extract_pixel_features,
    pixel_memory_bytes,
    sample_pixels,
    train_forest,
)

__all__ = [
    "CompiledForest", "ForestLayer", "ResidualSoftmax", "UnsupportedForestError", "attach", "compile_forest",
    "extract_features", "extract_pixel_features", "fit_leaves", "grow_random_forest", "pixel_memory_bytes",
    "sample_pixels", "train_forest", "train_residual_forest",
]
