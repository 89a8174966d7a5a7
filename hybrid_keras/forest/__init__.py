"""Decision-forest heads: train a forest on a backbone's features (per image or per
pixel) with TF-DF or ydf, and compile it into a Keras layer of plain tensor ops."""

from hybrid_keras.forest.compile import CompiledForest, UnsupportedForestError, compile_forest
from hybrid_keras.forest.layer import ForestLayer
from hybrid_keras.forest.train import (
    attach,
    extract_features,
    extract_pixel_features,
    pixel_memory_bytes,
    sample_pixels,
    train_forest,
)

__all__ = [
    "CompiledForest", "ForestLayer", "UnsupportedForestError", "attach", "compile_forest", "extract_features",
    "extract_pixel_features", "pixel_memory_bytes", "sample_pixels", "train_forest",
]
