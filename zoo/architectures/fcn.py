"""Fully convolutional networks for semantic segmentation: FCN-32s, FCN-16s and FCN-8s.

Reference: J. Long, E. Shelhamer, T. Darrell, "Fully Convolutional Networks for Semantic
Segmentation", CVPR 2015. A zoo classifier becomes the backbone; a 1x1 convolution scores
every class on its stride-32 features; transposed convolutions bring the scores back to the
image, fused on the way with scores from the stride-16 (FCN-16s) and stride-8 (FCN-8s) maps.
As in the paper:

- VGG's fully connected layers become convolutions, ``fc6`` (7x7, 4096) and ``fc7`` (1x1,
  4096), each followed by dropout; with backbone weights, they take the classifier's
  ``fc1`` / ``fc2`` weights, reshaped (:func:`convolutionize`).
- The score layers start at zero; each transposed convolution has kernel ``2f`` and stride
  ``f`` and starts as bilinear upsampling. The 2x ones learn; the last one, to the image,
  stays bilinear.
- The model takes any input size of at least 32 pixels (odd ones too): each upsampled map
  is cropped to the finer map (:class:`hybrid_keras.layers.CropToReference`), at an
  offset that puts each cell over its pixels' centre. The backbones pad "same" instead of
  the paper's 100 pixels, so offsets follow from where each backbone centres its cells.

A backbone is any zoo classifier listed in :data:`BACKBONES`: the names of its layers at
strides 8, 16 and 32, its classifier layers that become convolutions, and where a cell at
stride ``s`` is centred. The backbone comes from ``zoo.load(backbone, include_top=False,
weights=backbone_weights, ...)``, so its preprocessing layer is inside (right after the
input size check: the model takes raw RGB in [0, 255]) and its classification weight tags
apply; ``weights`` is for a whole FCN's ``.weights.h5``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from zoo import common
from zoo.lazy import hk_layers, layers
from zoo.registry import load, register_model

REFERENCE = "Long, Shelhamer & Darrell, Fully Convolutional Networks for Semantic Segmentation, CVPR 2015"
FC_UNITS = 4096
OUTPUT_STRIDE = 32  # of every backbone's last tap


@dataclasses.dataclass(frozen=True)
class Backbone:
    """How an FCN reads a zoo classifier.

    ``taps``: the layer at each stride (8, 16, 32). ``fully_connected``: ``(classifier
    layer, convolution name, kernel size)`` for the classifier layers that become
    convolutions on the stride-32 map. ``centre(model, stride)``: the input pixel (row or
    column, possibly half-way) that cell 0 of the stride-``stride`` map is centred on.
    """

    taps: dict[int, str]
    centre: Callable[[object, int], float]
    fully_connected: tuple[tuple[str, str, int], ...] = ()


def _pooling_centre(model, stride: int) -> float:
    # 2x2 max pooling: cell i covers pixels [i s, (i + 1) s).
    return (stride - 1) / 2


def _mobilenet_v2_centre(model, stride: int) -> float:
    # Stride-2 3x3 convolutions: keras.applications pads bottom/right, so cell i reads
    # pixels 2i..2i+2 (centre 2i + 1, compounding to s - 1); torchvision pads both sides
    # (centre 2i, compounding to 0).
    padding = tuple(tuple(side) for side in model.get_layer("Conv1_pad").padding)
    return stride - 1.0 if padding == ((0, 1), (0, 1)) else 0.0


_VGG = Backbone(taps={8: "block3_pool", 16: "block4_pool", 32: "block5_pool"}, centre=_pooling_centre,
                fully_connected=(("fc1", "fc6", 7), ("fc2", "fc7", 1)))
BACKBONES: dict[str, Backbone] = {
    **{name: _VGG for name in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")},
    "mobilenet_v2": Backbone(taps={8: "block_5_add", 16: "block_12_add", 32: "out_relu"},
                             centre=_mobilenet_v2_centre),
}
# Parameters of the paper's configuration (VGG16 backbone, 21 PASCAL VOC classes), counting the fixed
# bilinear upsampling to the image (the paper's 134M leaves it out).
_PARAMETERS = {"fcn32s": 136_152_917, "fcn16s": 134_815_994, "fcn8s": 134_489_759}


def crop_offset(centre_coarse: float, centre_fine: float, factor: int, fine_stride: int) -> int:
    """Where a ``2 factor`` x ``2 factor`` transposed convolution's output lines up with the finer map.

    Coarse cell ``i`` sits at ``factor i + factor - 1/2`` in the output; the finer map's
    cell ``j`` is centred on pixel ``fine_stride j + centre_fine`` and the coarse cell on
    ``factor fine_stride i + centre_coarse``. Output row ``j + offset`` is over fine row ``j``.
    """
    offset = factor - 0.5 - (centre_coarse - centre_fine) / fine_stride
    return int(math.floor(offset + 0.5))


def convolutionize(dense_kernel: np.ndarray, kernel_size: int) -> np.ndarray:
    """A Dense kernel ``[k k C, units]`` over a flattened ``k x k x C`` map as a ``k x k`` convolution kernel.

    Keras flattens channels-last maps row by row, so the rows of the Dense kernel are in
    (row, column, channel) order: a reshape gives the ``[k, k, C, units]`` kernel whose
    valid convolution over that map equals the Dense layer.
    """
    inputs, units = dense_kernel.shape
    channels, remainder = divmod(inputs, kernel_size * kernel_size)
    if remainder:
        raise ValueError(f"dense_kernel has {inputs} inputs, not a multiple of kernel_size^2={kernel_size ** 2}. "
                         f"Received: dense_kernel shape {dense_kernel.shape}, kernel_size={kernel_size}")
    return dense_kernel.reshape(kernel_size, kernel_size, channels, units)


def _upsample(x, reference, *, factor: int, offset: int, classes: int, trainable: bool, name: str,
              crop_name: str | None = None):
    """Scores at a coarse stride -> the finer map ``reference``'s grid (transposed convolution, then crop).

    Replicated cells around the map first (one before, two after): border pixels are then
    interpolated between equal scores, not faded towards 0, and the crop always fits; the
    cell before shifts the output by ``factor`` rows and columns.
    """
    x = hk_layers.ReplicatePadding(((1, 2), (1, 2)), name=f"{name}_pad")(x)
    x = layers.Conv2DTranspose(classes, 2 * factor, strides=factor, use_bias=False,
                               kernel_initializer=hk_layers.BilinearUpsampling(), trainable=trainable, name=name)(x)
    return hk_layers.CropToReference(offset + factor, name=crop_name or f"{name}_crop")([x, reference])


def _score(x, classes: int, name: str):
    return layers.Conv2D(classes, 1, kernel_initializer="zeros", name=name)(x)


def _fcn(card, *, strides: tuple[int, ...], backbone, classes, weights, backbone_weights, input_tensor, input_shape,
         classifier_activation, include_preprocessing, dropout, crf, name, backbone_kwargs):
    if not isinstance(backbone, str) or backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}. Received: backbone={backbone!r}")
    common.check_arguments(card.name, include_top=True, classes=classes, pooling=None,
                           classifier_activation=classifier_activation)
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")
    taken = sorted(set(backbone_kwargs) & {"include_top", "pooling", "input_tensor", "weights", "input_shape",
                                             "include_preprocessing", "classes", "classifier_activation"})
    if taken:
        raise TypeError(f"{card.name} sets {taken} of its backbone itself; the other keyword arguments go to the "
                        f"backbone (alpha=..., layout=...). Received: {', '.join(f'{k}={backbone_kwargs[k]!r}' for k in taken)}")
    spec = BACKBONES[backbone]
    if spec.fully_connected and backbone_weights == "imagenet":
        # fc6/fc7 come from the classifier, so take the backbone's default file, which has it.
        from zoo.registry import get_card

        backbone_weights = get_card(backbone).default_weights or backbone_weights

    img_input = common.model_input(input_tensor, input_shape, default_shape=card.input_shape, fixed_size=False,
                                   min_size=OUTPUT_STRIDE, name=card.name)
    # For images of any size: a clear error for one smaller than the output stride, before
    # the backbone's layers fail on empty maps (the backbone's preprocessing follows it).
    checked = hk_layers.MinimumSize(OUTPUT_STRIDE, name="input_size_check")(img_input)
    features = load(backbone, include_top=False, weights=backbone_weights, input_tensor=checked,
                    include_preprocessing=include_preprocessing, **backbone_kwargs)
    x = features.get_layer(spec.taps[32]).output
    for index, (_, conv_name, size) in enumerate(spec.fully_connected):
        x = layers.Conv2D(FC_UNITS, size, padding="same", activation="relu", name=conv_name)(x)
        x = layers.Dropout(dropout, name=f"drop{conv_name.removeprefix('fc')}")(x)

    # Scores at stride 32, then for FCN-16s / 8s: 2x up, add the next finer map's scores.
    scores = _score(x, classes, "score_stride32")
    for coarse, fine in zip(strides, strides[1:]):
        fine_scores = _score(features.get_layer(spec.taps[fine]).output, classes, f"score_stride{fine}")
        offset = crop_offset(spec.centre(features, coarse), spec.centre(features, fine), coarse // fine, fine)
        upsampled = _upsample(scores, fine_scores, factor=coarse // fine, offset=offset, classes=classes,
                              trainable=True, name=f"up_to_stride{fine}")
        scores = layers.Add(name=f"fuse_stride{fine}")([upsampled, fine_scores])
    last = strides[-1]
    logits = _upsample(scores, img_input, factor=last, offset=crop_offset(spec.centre(features, last), 0.0, last, 1),
                       classes=classes, trainable=False, name="up_to_image", crop_name="logits")
    if crf:
        outputs = hk_layers.DenseCRF(classes, name="crf", **({} if crf is True else dict(crf)))([logits, img_input])
    elif classifier_activation is not None:
        outputs = layers.Activation(classifier_activation, name="predictions")(logits)
    else:
        outputs = logits

    model = common.functional_model(input_tensor, img_input, outputs,
                                    name or f"{card.name}_{backbone}")
    if spec.fully_connected and backbone_weights is not None and weights is None:
        _fully_connected_from_classifier(model, backbone, backbone_weights, spec, backbone_kwargs)
    return common.load_weights(model, card, weights, converters={})


def _fully_connected_from_classifier(model, backbone, backbone_weights, spec: Backbone, backbone_kwargs):
    """fc6/fc7 from the classifier's fc1/fc2, as the paper initialises them (the zoo's loader
    warns when the file has no classifier; they are then freshly initialised)."""
    classifier = load(backbone, weights=backbone_weights, **backbone_kwargs)
    for dense_name, conv_name, size in spec.fully_connected:
        kernel, bias = classifier.get_layer(dense_name).get_weights()
        model.get_layer(conv_name).set_weights([convolutionize(kernel, size), bias])
    del classifier


def _check_crf(crf):
    if crf is not None and not isinstance(crf, (bool, dict)):
        raise TypeError(f"crf must be None, True or a dict of DenseCRF arguments. Received: crf={crf!r}")


def _register(name: str, strides: tuple[int, ...]):
    kind = {1: "32x upsampling of the stride-32 scores",
            2: "stride-16 scores fused, 16x upsampling",
            3: "stride-16 and stride-8 scores fused, 8x upsampling"}[len(strides)]

    @register_model(
        name, task="segmentation", family="fcn", input_shape=(224, 224, 3), reference=REFERENCE,
        preprocessing="caffe",
        description=(f"FCN-{name[3:]}: fully convolutional network, {kind}; any input size >= 32; backbone= a VGG "
                     "(the paper's) or mobilenet_v2, backbone_weights= its classification weight tags"),
        parameters=_PARAMETERS[name],
        reference_implementation="the paper's VGG16 net (fcn.berkeleyvision.org), fc6/fc7 as convolutions",
        weights_hint="The backbone's classification weights go in backbone_weights= (e.g. backbone_weights='imagenet')",
    )
    def builder(card, backbone="vgg16", classes=21, weights=None, backbone_weights=None, input_tensor=None,
                input_shape=None, classifier_activation="softmax", include_preprocessing=True, dropout=0.5, crf=None,
                name=None, **backbone_kwargs):
        _check_crf(crf)
        return _fcn(card, strides=strides, backbone=backbone, classes=classes, weights=weights,
                    backbone_weights=backbone_weights, input_tensor=input_tensor, input_shape=input_shape,
                    classifier_activation=classifier_activation, include_preprocessing=include_preprocessing,
                    dropout=dropout, crf=crf, name=name, backbone_kwargs=backbone_kwargs)

    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"""Build {name}: per-pixel class scores ``[B, H, W, classes]`` for images of any size >= 32.

    ``backbone``: a name in ``zoo.architectures.fcn.BACKBONES`` ("vgg16" is the paper's;
    "mobilenet_v2" trains on a CPU); further keyword arguments go to the backbone
    (``alpha=0.5``, ``layout=...``). ``backbone_weights``: None or any weights the backbone
    takes (a tag such as "imagenet", or a file); VGG's fc6/fc7 then start from its fc1/fc2.
    ``weights``: None or a ``.weights.h5`` saved from this FCN (same arguments).
    ``classifier_activation``: "softmax" (default) or None for the logits (layer "logits").
    ``crf``: True or a dict of :class:`hybrid_keras.layers.DenseCRF` arguments appends a dense CRF
    on the logits and the input image; its probabilities are then the output.
    ``dropout``: after fc6 and fc7 (VGG backbones), as in the paper."""
    return builder


fcn32s = _register("fcn32s", (32,))
fcn16s = _register("fcn16s", (32, 16))
fcn8s = _register("fcn8s", (32, 16, 8))


def backbone_of(model) -> str:
    """The name of the :data:`BACKBONES` entry whose layers ``model`` (an FCN of this module) holds."""
    names = {layer.name for layer in model.layers}
    for backbone, spec in BACKBONES.items():
        if set(spec.taps.values()) <= names:
            return backbone
    raise ValueError(f"{model.name!r} holds no backbone of {sorted(set(BACKBONES))} (an FCN from zoo.load is needed)")


# Each FCN's own class scores at its finest stride (FCN-8s, FCN-16s, FCN-32s).
_SCORE_MAPS = (("fuse_stride8", 8), ("fuse_stride16", 16), ("score_stride32", 32))


def _onto_grid(x, reference, *, factor: int, offset: int, name: str):
    """A coarse map bilinearly upsampled onto the finer map ``reference``'s grid: one replicated
    cell around it (so borders interpolate between real values and the crop always fits),
    ``factor``x upsampling, then a crop from ``offset`` that puts each value over its pixels."""
    if factor == 1:
        return x
    x = hk_layers.ReplicatePadding(((1, 1), (1, 1)), name=f"{name}_pad")(x)
    x = layers.UpSampling2D(factor, interpolation="bilinear", name=f"{name}_up")(x)
    return hk_layers.CropToReference(offset, name=name)([x, reference])


def _grid_offset(centre_coarse: float, centre_fine: float, factor: int, fine_stride: int) -> int:
    # Upsampled row u (after the padding cell) samples coarse row (u + 1/2) / factor - 3/2,
    # centred on pixel fine_stride (u + 1/2 - 3 factor / 2) + centre_coarse; solve for the
    # u over fine row 0 (centred on centre_fine) and round.
    return math.floor((centre_fine - centre_coarse) / fine_stride + 1.5 * factor)


def _hypercolumn_tensors(model, stride: int, scores: bool):
    spec = BACKBONES[backbone_of(model)]
    if stride not in spec.taps:
        raise ValueError(f"stride must be one of {sorted(spec.taps)}. Received: stride={stride!r}")
    reference = model.get_layer(spec.taps[stride]).output

    def onto_grid(x, coarse, name):
        offset = _grid_offset(spec.centre(model, coarse), spec.centre(model, stride), coarse // stride, stride)
        return _onto_grid(x, reference, factor=coarse // stride, offset=offset, name=name)

    columns = [reference] + [onto_grid(model.get_layer(spec.taps[coarse]).output, coarse,
                                       f"stride{coarse}_to_stride{stride}")
                             for coarse in sorted(s for s in spec.taps if s > stride)]
    class_scores = None
    if scores:
        names = {layer.name for layer in model.layers}
        layer_name, score_stride = next(entry for entry in _SCORE_MAPS if entry[0] in names)
        if score_stride < stride:
            raise ValueError(f"{model.name!r} scores at stride {score_stride}, finer than stride={stride}")
        class_scores = onto_grid(model.get_layer(layer_name).output, score_stride, f"scores_to_stride{stride}")
    return layers.Concatenate(name="hypercolumn")(columns + [class_scores] * scores), class_scores


def hypercolumn(model, *, stride: int = 8, scores: bool = False, name: str | None = None):
    """A feature model of an FCN's backbone: raw images -> ``[B, h, w, F]`` on the grid of its stride-``stride`` map.

    The backbone's maps at ``stride`` and every coarser tap (8, 16, 32) are stacked per cell,
    the coarser ones upsampled bilinearly onto the finer grid. These are the maps FCN-8s
    scores linearly; a per-pixel solver such as a forest (:func:`forest_head`) reads them
    all. ``scores=True`` appends the FCN's own class scores (its finest fused map) as the
    last ``classes`` channels. Takes any image size the FCN takes.
    """
    import keras

    features, _ = _hypercolumn_tensors(model, stride, scores)
    return keras.Model(model.input, features, name=name or f"{model.name}_hypercolumn")


def forest_head(model, forest, *, stride: int = 8, scores: bool = False, residual: bool = False,
                name: str | None = None):
    """An FCN's backbone with a per-pixel forest as its solver: raw images -> class probabilities
    ``[B, H, W, classes]`` (output layer "probabilities").

    ``forest``: a classification :class:`hybrid_keras.forest.ForestLayer` trained on
    ``hypercolumn(model, stride=stride, scores=scores or residual)`` features, e.g. by
    :func:`hybrid_keras.forest.train_residual_forest`. ``residual=True``: the forest corrects
    the FCN's own scores (probabilities ``softmax(scores + forest log-likelihoods)``, see
    :class:`hybrid_keras.forest.ResidualSoftmax`), as FCN-8s corrects FCN-32s's with finer
    maps; otherwise the forest alone decides. The probabilities are brought to the image by
    the same fixed bilinear upsampling as FCN-8s's last step, which keeps each pixel's a
    distribution. Any image size the FCN takes; exports like the FCN.
    """
    import keras

    from hybrid_keras.forest.residual import ResidualSoftmax

    features, class_scores = _hypercolumn_tensors(model, stride, scores or residual)
    if forest.num_features != features.shape[-1]:
        raise ValueError(f"the forest reads {forest.num_features} features but the hypercolumn has "
                         f"{features.shape[-1]}; train it on hypercolumn(model, stride={stride}, "
                         f"scores={scores or residual}) features")
    probabilities = forest(features)
    if residual:
        probabilities = ResidualSoftmax(name="residual_softmax")([class_scores, probabilities])
    spec = BACKBONES[backbone_of(model)]
    probabilities = _upsample(probabilities, model.input, factor=stride,
                              offset=crop_offset(spec.centre(model, stride), 0.0, stride, 1),
                              classes=forest.output_width, trainable=False, name="forest_up_to_image",
                              crop_name="probabilities")
    return keras.Model(model.input, probabilities, name=name or f"{model.name}_forest")
