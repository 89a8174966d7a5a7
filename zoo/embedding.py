"""Embedding models from zoo backbones, for nearest-neighbour heads.

>>> embedder = zoo.embed("mobilenet_v2", weights="imagenet", input_shape=(160, 160, 3))
>>> vectors = embedder.predict(images)      # [N, 1280], unit length
"""

from __future__ import annotations

import keras

from hybrid_keras.layers import L2Normalize
from zoo.registry import load

POOLINGS = ("avg", "max")


def embed(backbone, *, layer: str | None = None, pooling: str = "avg", normalize: bool = True,
          name: str | None = None, **load_kwargs) -> keras.Model:
    """An images -> [batch, D] embedding model from a zoo backbone.

    ``backbone``: a registered model name (built with ``include_top=False`` and
    ``load_kwargs``, e.g. ``weights``, ``input_shape``, ``alpha``) or a Keras model.
    ``layer`` reads an inner layer instead of the output; feature maps are pooled
    with ``pooling``; ``normalize`` L2-normalises the result (cosine geometry). The
    backbone's preprocessing layer stays the first layer, so the embedder takes raw pixels.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if isinstance(backbone, str):
        backbone = load(backbone, include_top=False, **load_kwargs)
    elif load_kwargs:
        raise TypeError(f"{sorted(load_kwargs)} only apply when the backbone is given by name")
    features = backbone.get_layer(layer).output if layer else backbone.output
    if len(features.shape) == 4:
        pool = keras.layers.GlobalAveragePooling2D if pooling == "avg" else keras.layers.GlobalMaxPooling2D
        features = pool(name="embedding_pool")(features)
    elif len(features.shape) != 2:
        raise ValueError(f"cannot embed features of shape {features.shape}; expected [B, D] or [B, H, W, C]")
    if normalize:
        features = L2Normalize(name="embedding_l2")(features)
    # A single input stays a single tensor, so calling the embedder with one array warns of nothing.
    inputs = backbone.inputs[0] if len(backbone.inputs) == 1 else backbone.inputs
    return keras.Model(inputs, features, name=name or f"{backbone.name}_embedding")
