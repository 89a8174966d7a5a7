"""Embedding networks on zoo backbones, and the Siamese pair model SINT trains.

``embedding_model("mobilenet_v2", dim=128)`` is a zoo backbone (raw pixels in, its
preprocessing inside), global average pooling, a linear projection and L2 normalisation:
train it with a triplet loss on ``(images, labels)``. ``siamese(embedding)`` runs one
embedding network on both images of a pair and outputs their squared distance, for
:class:`~hybrid_keras.metric_learning.ContrastiveLoss` on ``([images_1, images_2], match)``.
"""

from __future__ import annotations

import keras
from keras import ops

from hybrid_keras.layers import L2Normalize


@keras.saving.register_keras_serializable(package="hybrid_keras")
class PairDistance(keras.layers.Layer):
    """``[a, b]`` (two ``[batch, D]`` embeddings) -> their squared Euclidean distances ``[batch]``."""

    def call(self, inputs):
        first, second = inputs
        return ops.sum(ops.square(ops.cast(first, "float32") - ops.cast(second, "float32")), axis=-1)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[0][:-1])


def embedding_model(backbone="mobilenet_v2", dim: int = 128, *, normalize: bool = True, input_shape=None,
                    weights=None, name: str | None = None, **backbone_kwargs) -> keras.Model:
    """Images -> embeddings ``[batch, dim]`` (unit length with ``normalize``).

    ``backbone``: a zoo model name (loaded headless with ``weights`` and
    ``backbone_kwargs``, e.g. ``alpha=0.35``) or a Keras model of images whose output is a
    feature map ``[B, H, W, C]`` or vector ``[B, C]``.
    """
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ValueError(f"dim must be a positive integer. Received: dim={dim!r}")
    if isinstance(backbone, str):
        import zoo

        backbone = zoo.load(backbone, include_top=False, weights=weights, input_shape=input_shape,
                            **backbone_kwargs)
    elif not isinstance(backbone, keras.Model):
        raise TypeError(f"backbone must be a zoo model name or a keras.Model. Received: {type(backbone).__name__}")
    x = backbone.output
    if len(x.shape) == 4:
        x = keras.layers.GlobalAveragePooling2D(name="embedding_pool")(x)
    elif len(x.shape) != 2:
        raise ValueError(f"the backbone must output [B, H, W, C] or [B, C]; it outputs {x.shape}")
    x = keras.layers.Dense(dim, name="embedding")(x)
    if normalize:
        x = L2Normalize(name="embedding_l2")(x)
    return keras.Model(backbone.input, x, name=name or f"{backbone.name}_embedding")


def siamese(embedding: keras.Model, name: str | None = None) -> keras.Model:
    """``[images_1, images_2]`` -> squared distances ``[batch]`` between their embeddings (shared weights)."""
    shape = tuple(embedding.input_shape[1:])
    first, second = keras.Input(shape, name="images_1"), keras.Input(shape, name="images_2")
    distance = PairDistance(name="pair_distance")([embedding(first), embedding(second)])
    return keras.Model([first, second], distance, name=name or f"{embedding.name}_siamese")
