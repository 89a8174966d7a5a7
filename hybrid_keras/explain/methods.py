"""Three ways of seeing what a classifier looks at, for any functional Keras model.

- :func:`deconvnet`: Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks",
  ECCV 2014. A layer's strongest activations (the top-k of one feature map, all others of the
  layer zeroed) projected back to the pixels: backpropagation through the model with the
  ReLUs' backward pass replaced by rectification (:mod:`hybrid_keras.explain.backward` says
  why that is the deconvnet), ``rule="guided"`` for guided backpropagation.
- :func:`occlusion`: the same paper's occlusion experiment. A grey square slid over the image;
  the probability of the class with the square at each place, as a map.
- :func:`grad_cam`: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017. A feature map's channels weighted by the spatial
  mean of the class score's gradient, rectified, upsampled to the input.

All take raw images ``[B, H, W, C]`` as the model takes them (the zoo's models: RGB in
[0, 255]) and return NumPy results in a small dataclass. Inference mode throughout (batch
normalisation is then affine, dropout the identity). Everything is ``keras.ops`` plus the
backend's own autodiff (:func:`~hybrid_keras.explain.gradients.gradient_function`).
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from hybrid_keras.explain.backward import ends_in_softmax, find_layer, functional, rewire
from hybrid_keras.explain.gradients import compiled, gradient_function


@dataclass(frozen=True)
class Projection:
    """:func:`deconvnet`'s result: ``pixels`` ``[B, H, W, C]`` (signed, in the model's input
    space), the feature map projected per image (``channels`` ``[B]``), the layer, the rule."""

    pixels: np.ndarray
    channels: np.ndarray
    layer: str
    rule: str


@dataclass(frozen=True)
class OcclusionMap:
    """:func:`occlusion`'s result.

    ``grid`` ``[B, rows, cols]``: the class probability with the square's top-left corner at
    ``(row * stride, col * stride)``; ``heatmap`` ``[B, H, W]``: per pixel, the mean of that
    probability over the square's positions covering the pixel (pixels no position covers get
    ``probability``); ``probability`` ``[B]``: the class probability of the unoccluded image;
    ``class_index`` ``[B]``; ``size``, ``stride``, ``fill`` (the square's pixel value per channel).
    """

    grid: np.ndarray
    heatmap: np.ndarray
    probability: np.ndarray
    class_index: np.ndarray
    size: int
    stride: int
    fill: np.ndarray


@dataclass(frozen=True)
class GradCAM:
    """:func:`grad_cam`'s result: ``heatmap`` ``[B, H, W]`` (non-negative, bilinearly upsampled
    ``cam``), ``cam`` ``[B, h, w]`` at the layer's resolution, ``class_index`` ``[B]``, ``layer``."""

    heatmap: np.ndarray
    cam: np.ndarray
    class_index: np.ndarray
    layer: str


def check_images(model, images) -> np.ndarray:
    """``images`` as float32 ``[B, H, W, C]`` matching the model's input, or a ValueError."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be a batch [B, H, W, C]. Received: shape {images.shape}")
    expected = tuple(functional(model).inputs[0].shape[1:])
    if len(expected) != 3:
        raise ValueError(f"model must take images [B, H, W, C]. Received: a model whose input is {expected}")
    for axis, (want, got) in enumerate(zip(expected, images.shape[1:])):
        if want is not None and want != got:
            raise ValueError(f"images must be [B, {', '.join(str(v) for v in expected)}] for {model.name!r} "
                             f"(axis {axis + 1} differs). Received: shape {images.shape}")
    return images.astype(np.float32)


def _batches(count: int, batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    return [slice(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]


def _chunk(count: int, batch_size: int) -> int:
    """The batch size that splits ``count`` rows into as few batches as ``batch_size`` allows,
    all (but for padding the last) equal: 82 rows at 64 go as 2 x 41, not 64 + 18 padded to 64."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    return -(-count // -(-count // batch_size))


def _padded(images, part: slice, chunk: int):
    """``images[part]`` padded with copies of its first image to ``chunk`` rows: every batch one
    shape, so that backends that compile per shape (JAX) compile once. Rows past
    ``part.stop - part.start`` are to be dropped from the results."""
    x = images[part]
    return x if len(x) == chunk else np.concatenate([x, np.repeat(x[:1], chunk - len(x), axis=0)])


def select_activations(activations, channel: int | None = None, top_k: int | None = 1):
    """``(mask, channels)``: which activations a deconvnet projects.

    ``activations``: ``[B, ..., C]``. Per image, the feature map ``channel`` (default: the one
    holding the image's largest activation) and in it the ``top_k`` largest activations
    (``None``: the whole map). ``mask`` has the activations' shape, 1 at the chosen ones.
    """
    values = np.asarray(activations)
    if values.ndim < 2:
        raise ValueError(f"activations must be [B, ..., C]. Received: shape {values.shape}")
    batch, maps = values.shape[0], values.shape[-1]
    flat = values.reshape(batch, -1, maps)
    if channel is None:
        channels = flat.max(axis=1).argmax(axis=1)
    else:
        if not 0 <= int(channel) < maps:
            raise ValueError(f"channel must be in [0, {maps}) for this layer. Received: channel={channel}")
        channels = np.full(batch, int(channel))
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None (the whole map). Received: top_k={top_k}")
    mask = np.zeros_like(flat, dtype=np.float32)
    for b, c in enumerate(channels):
        order = np.argsort(-flat[b, :, c], kind="stable")
        mask[b, order[: (len(order) if top_k is None else top_k)], c] = 1.0
    return mask.reshape(values.shape), channels.astype(np.int64)


def deconvnet(model, images, layer: str, *, channel: int | None = None, top_k: int | None = 1,
              rule: str = "deconvnet", batch_size: int = 16) -> Projection:
    """Project ``layer``'s strongest activations back to the pixels (Zeiler & Fergus 2014).

    Per image, the activations :func:`select_activations` picks (``channel``, ``top_k``) keep
    their values, every other activation of the layer is zeroed, and that signal goes back
    to the input through the switches of max pooling, the transposed filters and rectified
    ReLUs (``rule="guided"``: guided backpropagation; ``"gradient"``: the plain gradient).
    ``hybrid_keras.layers.Preprocessing`` passes the signal through unscaled (only its channel
    order undone), so ``pixels`` is the reconstruction in the normalised space the first layer
    sees, laid out as the model's input (RGB for the zoo).
    """
    images = check_images(model, images)
    net = rewire(model, rule, layer=layer)
    tap = keras.Model(net.inputs[0], net.outputs[0])
    forward = compiled(lambda x: tap(x, training=False), tap.variables)
    backward = gradient_function(lambda x, signal: (ops.sum(tap(x, training=False) * signal), ()), (0,), tap.variables)
    pixels, channels = [], []
    chunk = _chunk(len(images), batch_size)
    for part in _batches(len(images), chunk):
        x, count = _padded(images, part, chunk), part.stop - part.start
        activations = forward(x)
        mask, chosen = select_activations(activations, channel, top_k)
        _, (gradient,) = backward(x, (activations * mask).astype(np.float32))
        pixels.append(gradient[:count])
        channels.append(chosen[:count])
    return Projection(np.concatenate(pixels), np.concatenate(channels), layer, rule)


def mean_pixel(model) -> np.ndarray:
    """The raw pixel the model's ``Preprocessing`` layer maps to zero (its mean pixel, RGB), or
    128 in every channel when the model has none (or one that subtracts nothing)."""
    from hybrid_keras.layers import find_preprocessing

    channels = functional(model).inputs[0].shape[-1] or 3
    layer = find_preprocessing(model)
    if layer is None or not any(layer.mean):
        return np.full(channels, 128.0, np.float32)
    pixel = np.broadcast_to(np.asarray(layer.mean, np.float64) / layer.scale, (channels,))
    return (pixel[::-1] if layer.channel_order == "bgr" else pixel).astype(np.float32)


def _class_scores(outputs):
    """``[B, classes]`` from a classifier's output, or a segmentation output's spatial mean."""
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    rank = len(outputs.shape)
    if rank == 2:
        return outputs
    if rank >= 3:
        return ops.mean(outputs, axis=tuple(range(1, rank - 1)))
    raise ValueError(f"the model's output must be [B, classes] or [B, ..., classes]. Received: shape {outputs.shape}")


def _chosen_classes(class_index, batch: int):
    if class_index is None:
        return None
    chosen = np.broadcast_to(np.asarray(class_index, np.int64), (batch,))
    return chosen.copy()


def occlusion(model, images, *, size: int | None = None, stride: int | None = None, fill=None,
              class_index=None, batch_size: int = 64) -> OcclusionMap:
    """Occlusion sensitivity (Zeiler & Fergus 2014, section 4.2): the class probability with a
    ``size`` x ``size`` square of ``fill`` pixels over each part of the image.

    ``size`` (default: a seventh of the shorter side), ``stride`` (default ``size // 2``): the
    square's top-left corners are ``0, stride, 2 * stride, ...`` up to ``side - size``.
    ``fill``: a pixel value, one per channel, or default :func:`mean_pixel` (the model's mean
    pixel; 128 without one). ``class_index``: an int or one per image (default: each image's
    top class, unoccluded). Probabilities are the model's softmax output, or the softmax of
    its output when it ends in none; a segmentation model's are averaged over its pixels.
    An image and its occluded copies go through the model ``batch_size`` at a time.
    """
    images = check_images(model, images)
    height, width, channels = images.shape[1:]
    size = max(1, min(height, width) // 7) if size is None else int(size)
    if not 1 <= size <= min(height, width):
        raise ValueError(f"size must be in [1, {min(height, width)}] for {height}x{width} images. Received: size={size}")
    stride = max(1, size // 2) if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"stride must be >= 1. Received: stride={stride}")
    fill = mean_pixel(model) if fill is None else np.asarray(fill, np.float32)
    fill = np.broadcast_to(fill.astype(np.float32), (channels,))
    softmax = not ends_in_softmax(functional(model))

    rows = np.arange(0, height - size + 1, stride)
    cols = np.arange(0, width - size + 1, stride)
    corners = [None] + [(r, c) for r in rows for c in cols]  # None: the image unoccluded
    chunk = _chunk(len(corners), batch_size)

    def class_probabilities(x):
        outputs = model(x, training=False)
        outputs = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
        return _class_scores(ops.softmax(outputs, axis=-1) if softmax else outputs)

    forward = compiled(class_probabilities, model.variables)

    def probabilities(image):
        """[1 + positions, classes], in batches of one shape (the last one padded), so that
        backends that compile per shape (JAX) compile once."""
        scores = []
        for part in _batches(len(corners), chunk):
            copies = np.repeat(image[None], chunk, axis=0)
            for copy, corner in zip(copies, corners[part]):
                if corner is not None:
                    copy[corner[0]:corner[0] + size, corner[1]:corner[1] + size] = fill
            scores.append(forward(copies)[: part.stop - part.start])
        return np.concatenate(scores)

    requested = _chosen_classes(class_index, len(images))
    grid = np.zeros((len(images), len(corners) - 1), np.float32)
    chosen, probability = np.zeros(len(images), np.int64), np.zeros(len(images), np.float32)
    for index, image in enumerate(images):
        scores = probabilities(image)
        chosen[index] = scores[0].argmax() if requested is None else requested[index]
        if not 0 <= chosen[index] < scores.shape[-1]:
            raise ValueError(f"class_index must be in [0, {scores.shape[-1]}). Received: class_index={class_index}")
        probability[index] = scores[0, chosen[index]]
        grid[index] = scores[1:, chosen[index]]
    grid = grid.reshape(len(images), len(rows), len(cols))
    total = np.zeros((len(images), height, width), np.float64)
    count = np.zeros((height, width), np.float64)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            total[:, r:r + size, c:c + size] += grid[:, i, j, None, None]
            count[r:r + size, c:c + size] += 1
    heatmap = np.where(count > 0, total / np.maximum(count, 1), probability[:, None, None]).astype(np.float32)
    return OcclusionMap(grid, heatmap, probability, chosen, size, stride, fill.copy())


_NOT_FEATURES = (keras.layers.InputLayer, keras.layers.ZeroPadding2D, keras.layers.Cropping2D, keras.layers.UpSampling2D,
                 keras.layers.Resizing, keras.layers.Dropout, keras.layers.SpatialDropout2D)


def default_cam_layer(model) -> str:
    """Grad-CAM's default layer: the last top-level layer with a 4-D output larger than 1x1
    (the last convolutional feature map), other than the model's output and layers that only
    pad, crop, resize or drop out."""
    model = functional(model)
    outputs = {id(t._keras_history.operation) for t in model.outputs}
    found = None
    for layer in model.layers:
        if isinstance(layer, _NOT_FEATURES) or id(layer) in outputs:
            continue
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):
            continue
        if len(shape) == 4 and not (shape[1] == 1 and shape[2] == 1):
            found = layer.name
    if found is None:
        raise ValueError(f"{model.name!r} has no 4-D feature map for Grad-CAM; pass layer=")
    return found


def grad_cam(model, images, *, layer: str | None = None, class_index=None, batch_size: int = 16) -> GradCAM:
    """Grad-CAM (Selvaraju et al. 2017) at ``layer`` (default :func:`default_cam_layer`).

    For the class ``c`` (``class_index``: an int or one per image; default each image's top
    class), ``cam = relu(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of
    ``d y_c / d A_k``, ``y_c`` the class score before the softmax (a softmax at the output is
    dropped; a segmentation model's score is its mean over the pixels); ``heatmap`` is ``cam``
    bilinearly resized to the input.
    """
    images = check_images(model, images)
    layer = default_cam_layer(model) if layer is None else layer
    net = rewire(model, "gradient", layer=layer, probe=True, logits=True)
    probe_layer = find_layer(net, f"{layer}_probe")
    feature_shape = tuple(probe_layer.input[0].shape[1:])
    if len(feature_shape) != 3:
        raise ValueError(f"layer must output a feature map [B, h, w, channels] for Grad-CAM. Received: layer={layer!r} "
                         f"with output shape {probe_layer.input[0].shape}")
    before = keras.Model(net.inputs[0], probe_layer.input[0]) if None in feature_shape else None
    requested = _chosen_classes(class_index, len(images))
    classes_out = int(_class_scores(net.outputs[1]).shape[-1])
    if requested is not None and np.any((requested < 0) | (requested >= classes_out)):
        raise ValueError(f"class_index must be in [0, {classes_out}). Received: class_index={class_index}")
    requested = np.full(len(images), -1, np.int64) if requested is None else requested  # -1: the top class

    def class_score(x, probe, given):
        features, outputs = net([x, probe], training=False)
        scores = _class_scores(outputs)
        # The top class is the first maximum (cheaper than argmax on every backend).
        top = ops.cast(ops.stop_gradient(scores) >= ops.max(ops.stop_gradient(scores), -1, keepdims=True), "int32")
        top = ops.cast(top * ops.cast(ops.cumsum(top, axis=-1) == 1, "int32"), scores.dtype)
        named = ops.one_hot(ops.maximum(given, 0), ops.shape(scores)[-1], dtype=scores.dtype)
        one_hot = ops.where(ops.expand_dims(given, -1) >= 0, named, top)
        return ops.sum(scores * one_hot), (features, one_hot)

    gradients = gradient_function(class_score, (1,), net.variables)
    cams, classes = [], []
    chunk = _chunk(len(images), batch_size)
    for part in _batches(len(images), chunk):
        x, count = _padded(images, part, chunk), part.stop - part.start
        shape = (len(x),) + (feature_shape if before is None else tuple(ops.shape(before(x, training=False))[1:]))
        (features, one_hot), (gradient,) = gradients(x, np.zeros(shape, np.float32),
                                                     _padded(requested, part, chunk).astype(np.int32))
        weights = gradient.mean(axis=(1, 2))
        cams.append(np.maximum((features * weights[:, None, None, :]).sum(axis=-1), 0.0)[:count])
        classes.append(one_hot.argmax(axis=-1)[:count])
    cam = np.concatenate(cams).astype(np.float32)
    heatmap = ops.convert_to_numpy(ops.image.resize(cam[..., None], images.shape[1:3], interpolation="bilinear"))[..., 0]
    return GradCAM(np.maximum(heatmap, 0.0).astype(np.float32), cam, np.concatenate(classes), layer)
