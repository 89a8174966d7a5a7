"""Layers the classic architectures need that Keras lacks. All are registered
serializable, so models using them round-trip through ``.keras`` files, and use
``keras.ops`` only, so they run on every Keras backend."""

from hybrid_keras.layers.crf import DenseCRF
from hybrid_keras.layers.fully_convolutional import BilinearUpsampling, CropToReference, MinimumSize, ReplicatePadding
from hybrid_keras.layers.normalization import L2Normalize, LocalResponseNormalization
from hybrid_keras.layers.pooling import AdaptiveAveragePooling2D, SpatialPyramidPooling
from hybrid_keras.layers.preprocessing import Preprocessing, find_preprocessing
from hybrid_keras.layers.roi import BoxesToRoIs, PerImage, RoIAlign, RoIPooling
from hybrid_keras.layers.spatial_transformer import SpatialTransformer, affine_regression

__all__ = ["AdaptiveAveragePooling2D", "BilinearUpsampling", "BoxesToRoIs", "CropToReference", "DenseCRF", "L2Normalize",
           "LocalResponseNormalization", "MinimumSize", "PerImage", "Preprocessing", "ReplicatePadding", "RoIAlign",
           "RoIPooling", "SpatialPyramidPooling", "SpatialTransformer", "affine_regression", "find_preprocessing"]
