"""What fully convolutional networks need around their backbone (Long, Shelhamer & Darrell, CVPR 2015):
learnt upsampling back to the image, and a check that the image is large enough.

A score map at stride ``s`` goes back to a finer grid through a transposed convolution
(kernel ``2s``, stride ``s``) whose kernel starts as bilinear interpolation
(:class:`BilinearUpsampling`, the closed form of the FCN reference code), then is cropped to
the finer map's size (:class:`CropToReference`). Together they work for any input size:

- The valid transposed convolution puts input cell ``i`` at output ``i s + s - 1/2``. Where
  a cell stands for the pixels ``[i s, (i + 1) s)`` (max pooling), centred on
  ``i s + (s - 1) / 2``, output ``o`` then lies over pixel ``o - s/2``: the crop offset is
  ``s / 2``. Backbones that centre their cells elsewhere need other offsets
  (``zoo.architectures.fcn.crop_offset``); FCN's Caffe models, padded by 100, had theirs.
- The output has ``(n + 1) s`` rows for ``n`` input rows, which can fall short of the finer
  map when the backbone rounds sizes down (a 60-pixel image gives a 1-row stride-32 map),
  and its first and last ``s / 2`` rows get a single input cell's share (bilinear weights
  below 1). :class:`ReplicatePadding` before the upsampling fixes both: one copy of the
  first row and column, and two of the last (a map rounded down leaves up to ``s - 1``
  pixels past its last cell's centre), so the border is interpolated as if the scores were
  constant beyond it, as clamped bilinear resizing does; the crop, offset by one more cell
  (``s``), then always fits.
- :class:`MinimumSize` refuses images smaller than the network's output stride with a
  clear error, before a backbone layer fails on a map of size 0.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def bilinear_kernel(size: int) -> np.ndarray:
    """The ``size x size`` bilinear interpolation kernel (FCN's ``upsample_filt``).

    For an upsampling factor ``f``, ``size = 2 f``: weight ``(1 - |i - c| / f)(1 - |j - c| / f)``
    with centre ``c = f - 1/2`` (``f - 1`` for odd sizes).
    """
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int. Received: size={size!r}")
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(size) - centre) / factor
    return np.outer(ramp, ramp)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class BilinearUpsampling(keras.initializers.Initializer):
    """Initialises a ``Conv2DTranspose`` kernel ``[k, k, C, C]`` to bilinear upsampling of each channel.

    Channel ``c`` of the output reads only channel ``c`` of the input, through
    :func:`bilinear_kernel`; every other entry is 0. With ``strides = k / 2`` the layer is
    then exact bilinear interpolation by a factor ``k / 2``.
    """

    def __call__(self, shape, dtype=None):
        if len(shape) != 4 or shape[0] != shape[1] or shape[2] != shape[3]:
            raise ValueError("BilinearUpsampling initialises square Conv2DTranspose kernels [k, k, C, C] with as many "
                             f"output as input channels. Received: shape={tuple(shape)}")
        size, _, channels, _ = shape
        kernel = np.zeros(shape, np.float32)
        kernel[:, :, np.arange(channels), np.arange(channels)] = bilinear_kernel(int(size))[:, :, None]
        return ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class ReplicatePadding(keras.layers.Layer):
    """Pads ``[B, H, W, C]`` maps by repeating their edge rows and columns (``padding=((top, bottom), (left, right))``)."""

    def __init__(self, padding=((1, 2), (1, 2)), **kwargs):
        super().__init__(**kwargs)
        try:
            (top, bottom), (left, right) = padding
            self.padding = tuple((int(a), int(b)) for a, b in ((top, bottom), (left, right)))
        except (TypeError, ValueError):
            raise ValueError(f"padding must be ((top, bottom), (left, right)). Received: padding={padding!r}") from None
        if min(min(pair) for pair in self.padding) < 0:
            raise ValueError(f"padding must not be negative. Received: padding={padding!r}")

    def call(self, inputs):
        x = inputs
        for axis, (before, after) in zip((1, 2), self.padding):
            if before or after:
                x = ops.concatenate([_edge(x, axis, last=False)] * before + [x] + [_edge(x, axis, last=True)] * after,
                                    axis=axis)
        return x

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        (top, bottom), (left, right) = self.padding
        return (batch, None if height is None else height + top + bottom,
                None if width is None else width + left + right, channels)

    def get_config(self):
        return {**super().get_config(), "padding": [list(pair) for pair in self.padding]}


def _edge(x, axis: int, *, last: bool):
    """The first or last row (axis 1) or column (axis 2) as a size-1 axis; works for unknown sizes."""
    index = slice(-1, None) if last else slice(0, 1)
    return x[:, index] if axis == 1 else x[:, :, index]


@keras.saving.register_keras_serializable(package="hybrid_keras")
class CropToReference(keras.layers.Layer):
    """Crops ``inputs[0]`` (``[B, h, w, C]``) to the height and width of ``inputs[1]``, from ``offset``.

    Output ``[B, H, W, C]`` is ``x[:, offset:offset + H, offset:offset + W]`` with ``H, W`` the
    reference's size, which may be unknown until the model runs (any input size). The map
    must reach ``offset + H`` rows and ``offset + W`` columns.
    """

    def __init__(self, offset: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(offset, (int, np.integer)) or isinstance(offset, bool) or offset < 0:
            raise ValueError(f"offset must be a non-negative int. Received: offset={offset!r}")
        self.offset = int(offset)

    def call(self, inputs):
        x, reference = inputs
        self._check(x.shape, reference.shape)
        reference_shape = ops.shape(reference)
        height, width = reference_shape[1], reference_shape[2]
        return x[:, self.offset:self.offset + height, self.offset:self.offset + width]

    def _check(self, shape, reference_shape):
        for axis, side in ((1, "height"), (2, "width")):
            have, want = shape[axis], reference_shape[axis]
            if have is not None and want is not None and have < self.offset + want:
                raise ValueError(
                    f"{self.name}: the map to crop is too small: {side} {have} cannot cover the reference's {want} "
                    f"from offset {self.offset} (is the input smaller than the network's output stride?). "
                    f"Received: shapes {tuple(shape)} and {tuple(reference_shape)}")

    def compute_output_shape(self, input_shapes):
        shape, reference_shape = input_shapes
        self._check(shape, reference_shape)
        return (shape[0], reference_shape[1], reference_shape[2], shape[3])

    def get_config(self):
        return {**super().get_config(), "offset": self.offset}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class MinimumSize(keras.layers.Layer):
    """Passes images ``[B, H, W, C]`` through unchanged; raises if ``H`` or ``W`` is below ``min_size``.

    The check runs where the size is known: when the model is built for a fixed size, and
    on every call (shapes are static under ``jax.jit`` and in each ``tf.function`` trace).
    """

    def __init__(self, min_size: int, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(min_size, (int, np.integer)) or isinstance(min_size, bool) or min_size < 1:
            raise ValueError(f"min_size must be a positive int. Received: min_size={min_size!r}")
        self.min_size = int(min_size)

    def build(self, input_shape):
        self._check(input_shape)
        self.built = True

    def call(self, inputs):
        self._check(inputs.shape)
        return inputs

    def _check(self, shape):
        sides = [side for side in tuple(shape)[1:3] if side is not None]
        if any(side < self.min_size for side in sides):
            raise ValueError(f"{self.name}: images must be at least {self.min_size}x{self.min_size} pixels, the "
                             f"network's output stride. Received: images of shape {tuple(shape)}")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "min_size": self.min_size}
