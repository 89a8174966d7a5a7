"""Layers the classic architectures need that Keras lacks. All are registered
serializable, so models using them round-trip through ``.keras`` files."""

from hybrid_keras.layers.normalization import L2Normalize, LocalResponseNormalization
from hybrid_keras.layers.pooling import AdaptiveAveragePooling2D

__all__ = ["AdaptiveAveragePooling2D", "L2Normalize", "LocalResponseNormalization"]
