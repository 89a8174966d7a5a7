"""SINT: the Siamese INstance search Tracker's matching network.

Reference: R. Tao, E. Gavves, A. W. M. Smeulders, "Siamese Instance Search for Tracking",
CVPR 2016. One network embeds boxes of an image: a zoo backbone computes a shared feature
map once, RoIAlign pools every box from its stride-8 and stride-16 maps, each pooled
feature is L2-normalised (the paper's layer-wise normalisation, so neither map dominates),
the two are concatenated, and a fully connected layer maps them to a unit-length embedding.
Matching is the inner product of embeddings, m(x1, x2) = f(x1) · f(x2), learnt with the
marginal contrastive loss (``hybrid_keras.metric_learning.ContrastiveLoss``). The tracker
that uses it is :class:`hybrid_keras.tracking.SiameseTracker`.

Differences from the paper, and why:

- RoIAlign (bilinear, Mask R-CNN) instead of RoI max pooling: candidate boxes in tracking
  differ by a few pixels, and quantised pooling would give them identical features.
- The paper's VGG16 taps are conv4_3 and conv5_3 with pool4 removed; here the taps are the
  zoo backbone's stride-8 and stride-16 maps (``zoo.architectures.fcn.BACKBONES``), so any
  zoo backbone (and its pretrained weights) works unchanged, MobileNetV2 included.
- A learnt projection (``embedding_dim``) replaces the paper's fc6 on the pooled conv5 map.

Inputs: ``images`` (raw RGB in [0, 255], any size >= 32) and ``boxes`` ``[B, N, 4]``, rows
``[x, y, w, h]`` in pixels of that image. Output: ``[B, N, embedding_dim]`` unit vectors.
"""

from __future__ import annotations

from zoo import common
from zoo.architectures.fcn import BACKBONES
from zoo.lazy import hk_layers, keras, layers
from zoo.registry import load, register_model

REFERENCE = "Tao, Gavves & Smeulders, Siamese Instance Search for Tracking, CVPR 2016"
TAP_STRIDES = (8, 16)  # the paper pools conv4_3 and conv5_3, at strides 8 and 16 of its VGG16
MIN_SIZE = 32


def box_shift(backbone_model, spec, stride: int) -> float:
    """Pixels to subtract from box coordinates so that RoIAlign's cell centres (``(i + 1/2) stride``)
    match where the backbone centres cell ``i`` (pixel ``centre + i stride``, whose middle is at
    ``centre + 1/2``)."""
    return spec.centre(backbone_model, stride) + 0.5 - stride / 2


@register_model(
    "sint", task="tracking", family="siamese", input_shape=(224, 224, 3), reference=REFERENCE, preprocessing="caffe",
    description=("SINT matching network: RoIAlign embeddings of boxes from a backbone's stride-8 and stride-16 "
                 "maps; inputs images + boxes [B, N, 4]; backbone= a VGG (the paper's) or mobilenet_v2"),
    parameters=17_269_312,
    reference_implementation="the paper's VGG16 Siamese network with RoI pooling on conv4_3 and conv5_3",
    weights_hint="The backbone's classification weights go in backbone_weights= (e.g. backbone_weights='imagenet')",
)
def sint(card, backbone="vgg16", weights=None, backbone_weights=None, embedding_dim=256, roi_size=7, input_shape=None,
         include_preprocessing=True, name=None, **backbone_kwargs):
    """Build the SINT matching network: ``(images, boxes [B, N, 4])`` -> unit embeddings ``[B, N, embedding_dim]``.

    ``backbone``: a name in ``zoo.architectures.fcn.BACKBONES`` ("vgg16" is the paper's;
    "mobilenet_v2" with ``alpha=0.35`` trains on a CPU); further keyword arguments go to it.
    ``backbone_weights``: None or any weights the backbone takes. ``weights``: None or a
    ``.weights.h5`` saved from a SINT network built with the same arguments.
    ``roi_size``: RoIAlign's output bins per side (the paper's RoI pooling is 7x7).
    ``input_shape``: ``(H, W, 3)``, default any size.
    """
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}. Received: backbone={backbone!r}")
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim must be a positive int. Received: embedding_dim={embedding_dim!r}")
    taken = sorted(set(backbone_kwargs) & {"include_top", "pooling", "input_tensor", "classes", "classifier_activation"})
    if taken:
        raise TypeError(f"sint sets {taken} of its backbone itself; other keyword arguments go to the backbone")
    spec = BACKBONES[backbone]
    images = common.model_input(None, input_shape, default_shape=card.input_shape, fixed_size=False,
                                min_size=MIN_SIZE, name=card.name)
    boxes = keras.Input(shape=(None, 4), name="boxes")
    checked = hk_layers.MinimumSize(MIN_SIZE, name="input_size_check")(images)
    features = load(backbone, include_top=False, weights=backbone_weights, input_tensor=checked,
                    include_preprocessing=include_preprocessing, **backbone_kwargs)
    maps = {stride: (features.get_layer(spec.taps[stride]).output, box_shift(features, spec, stride))
            for stride in TAP_STRIDES}
    model = matching_network(images, boxes, maps, embedding_dim=embedding_dim, roi_size=roi_size,
                             name=name or f"sint_{backbone}")
    return common.load_weights(model, card, weights, converters={})


def matching_network(images, boxes, maps, *, embedding_dim: int, roi_size, name: str):
    """The SINT head on feature maps of ``images``: ``maps`` is ``{stride: (map, shift)}`` for each
    stride of :data:`TAP_STRIDES` (``shift``: see :func:`box_shift`). Returns the Keras model
    ``(images, boxes) -> embeddings`` whose layer names :func:`feature_model` and
    :func:`embed_boxes` rely on; any image features work, a zoo backbone's or others."""
    pooled = []
    for stride in TAP_STRIDES:
        feature_map, shift = maps[stride]
        rois = hk_layers.BoxesToRoIs(shift, name=f"rois_stride{stride}")(boxes)
        x = hk_layers.RoIAlign(roi_size, spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True,
                               name=f"roi_align_stride{stride}")([feature_map, rois])
        x = layers.Flatten(name=f"flatten_stride{stride}")(x)
        pooled.append(hk_layers.L2Normalize(name=f"normalize_stride{stride}")(x))
    x = layers.Concatenate(name="box_features")(pooled)
    x = layers.Dense(embedding_dim, name="projection")(x)
    x = hk_layers.L2Normalize(name="embedding")(x)
    embeddings = hk_layers.PerImage(name="embeddings")([x, boxes])
    return keras.Model([images, boxes], embeddings, name=name)


def feature_model(model):
    """The shared part of a SINT network: images -> its feature maps at :data:`TAP_STRIDES`, so a
    tracker computes them once per frame and embeds many sets of boxes on them
    (:func:`embed_boxes`)."""
    maps = [model.get_layer(f"roi_align_stride{stride}").input[0] for stride in TAP_STRIDES]
    return keras.Model(model.inputs[0], maps, name=f"{model.name}_features")


def embed_boxes(model, maps, boxes, *, box_features: bool = False):
    """The per-box part of a SINT network on ``maps`` from :func:`feature_model`: boxes
    ``[B, N, 4]`` -> embeddings ``[B, N, D]``, with the network's own layers (same weights).
    ``box_features``: also return the pooled features before the projection, ``[B, N, F]``."""
    pooled = []
    for stride, feature_map in zip(TAP_STRIDES, maps):
        rois = model.get_layer(f"rois_stride{stride}")(boxes)
        x = model.get_layer(f"roi_align_stride{stride}")([feature_map, rois])
        x = model.get_layer(f"flatten_stride{stride}")(x)
        pooled.append(model.get_layer(f"normalize_stride{stride}")(x))
    features = model.get_layer("box_features")(pooled)
    x = model.get_layer("embedding")(model.get_layer("projection")(features))
    embeddings = model.get_layer("embeddings")([x, boxes])
    if box_features:
        return embeddings, model.get_layer("embeddings")([features, boxes])
    return embeddings
