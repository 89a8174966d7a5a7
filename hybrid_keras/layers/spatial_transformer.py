"""The spatial transformer (Jaderberg, Simonyan, Zisserman & Kavukcuoglu, "Spatial Transformer
Networks", NeurIPS 2015): an affine grid generator and a bilinear sampler, differentiable in the
transform and in the image.

``SpatialTransformer(output_size)`` is called on ``(images [B, H, W, C], theta [B, 6])``. ``theta``
is the 2x3 affine matrix ``A_theta``, row-major, in normalised coordinates: for each output pixel
at ``(x_t, y_t)`` the layer reads the input at

    x_s = theta[0] * x_t + theta[1] * y_t + theta[2]
    y_s = theta[3] * x_t + theta[4] * y_t + theta[5]

(the paper's equation 1; identity ``[1, 0, 0, 0, 1, 0]``). ``x`` runs along the width, ``y``
down the height, both from -1 to 1 over the image, whatever its size; the output grid is spread
over ``[-1, 1]`` in the same way, so ``theta`` means the same at every input and output size.

Conventions (stated once, here):

- ``align_corners=False`` (the default): -1 and 1 are the outer *edges* of the first and last
  pixels, so pixel ``i`` of an axis of ``n`` pixels has its centre at ``(2 i + 1) / n - 1``
  (TensorFlow's and PyTorch's half-pixel rule; ``torch.nn.functional.affine_grid`` and
  ``grid_sample`` with ``align_corners=False`` read the same points). ``align_corners=True``:
  -1 and 1 are the *centres* of the first and last pixels, pixel ``i`` at
  ``2 i / (n - 1) - 1`` (``linspace(-1, 1, n)``, as the paper's early implementations do).
  Either way the identity reproduces the input exactly when the output has the input's size.
- Outside the input: the sampler is bilinear over the input padded with ``fill_value``
  (default 0) on every side, so a sample point reads ``fill_value`` more than one pixel outside
  the image and blends the edge pixel with ``fill_value`` within one pixel of it (PyTorch's
  ``padding_mode="zeros"`` when ``fill_value=0``). Give the normalised value of the background
  when sampling normalised images (the zoo's ST-CNN passes -1, black under "tf" preprocessing).
- Gradients: the output is linear in the image (its gradient scatters back to the four pixels
  each sample read) and piecewise bilinear in ``theta``; across a pixel boundary the gradient
  in ``theta`` jumps, as in the paper (its "sub-gradients").

The sampler gathers four neighbours per output pixel from the flattened batch of images with
``keras.ops.take``, so it runs on every Keras backend.
"""

from __future__ import annotations

import keras
from keras import ops

IDENTITY_THETA = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def _output_size(output_size) -> tuple[int, int]:
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        output_size = (output_size, output_size)
    try:
        size = tuple(output_size)
    except TypeError:
        size = ()
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size):
        raise ValueError(f"output_size must be a positive int or (height, width) of positive ints. "
                         f"Received: output_size={output_size!r}")
    return size


def _grid(n: int, align_corners: bool, dtype):
    """Normalised coordinates of ``n`` output pixel centres along one axis."""
    index = ops.arange(n, dtype=dtype)
    if align_corners:
        return index * (2.0 / (n - 1)) - 1.0 if n > 1 else ops.zeros((1,), dtype=dtype)
    return (2.0 * index + 1.0) / n - 1.0


def _to_pixels(coordinate, size, align_corners: bool):
    """Normalised coordinates -> pixel indices (pixel ``i`` centred at ``i``) along an axis of ``size``."""
    if align_corners:
        return (coordinate + 1.0) * 0.5 * (size - 1.0)
    return ((coordinate + 1.0) * size - 1.0) * 0.5


@keras.saving.register_keras_serializable(package="hybrid_keras")
class SpatialTransformer(keras.layers.Layer):
    """``SpatialTransformer(output_size, align_corners=False, fill_value=0.0)`` on ``(images, theta)``.

    ``images``: ``[B, H, W, C]`` (any height, width and channels); ``theta``: ``[B, 6]``, the affine
    matrix row-major (``[[t0, t1, t2], [t3, t4, t5]]``) mapping output to input coordinates in
    ``[-1, 1]`` (see the module docstring). Returns ``[B, out_h, out_w, C]``, the input sampled
    bilinearly on the transformed grid.

    ``output_size``: an int or ``(height, width)``; it need not be the input's (a smaller output
    with a zooming ``theta`` is the paper's attention crop).
    """

    def __init__(self, output_size, align_corners: bool = False, fill_value: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.output_size = _output_size(output_size)
        if not isinstance(align_corners, bool):
            raise ValueError(f"align_corners must be True or False. Received: align_corners={align_corners!r}")
        try:
            self.fill_value = float(fill_value)
        except (TypeError, ValueError):
            raise ValueError(f"fill_value must be a number. Received: fill_value={fill_value!r}") from None
        self.align_corners = align_corners

    @staticmethod
    def _check_shapes(images_shape, theta_shape):
        if len(images_shape) != 4:
            raise ValueError("SpatialTransformer expects images of rank 4, [batch, height, width, channels]. "
                             f"Received: images of shape {tuple(images_shape)}")
        if len(theta_shape) != 2 or theta_shape[-1] not in (None, 6):
            raise ValueError("SpatialTransformer expects theta of shape [batch, 6] (the 2x3 affine matrix, row-major). "
                             f"Received: theta of shape {tuple(theta_shape)}")
        if images_shape[0] is not None and theta_shape[0] is not None and images_shape[0] != theta_shape[0]:
            raise ValueError("SpatialTransformer expects one theta per image. "
                             f"Received: images of shape {tuple(images_shape)} and theta of shape {tuple(theta_shape)}")

    @staticmethod
    def _split(inputs, *, shapes: bool = False):
        single = not isinstance(inputs, (list, tuple)) or (
            shapes and all(dim is None or isinstance(dim, int) for dim in inputs))
        if single or len(inputs) != 2:
            what = (f"a single tensor of shape {tuple(inputs) if shapes else tuple(getattr(inputs, 'shape', ()))}"
                    if single else f"{len(inputs)} inputs")
            raise ValueError(f"SpatialTransformer is called on (images, theta). Received: {what}")
        return inputs

    def build(self, input_shape):
        images_shape, theta_shape = self._split(input_shape, shapes=True)
        self._check_shapes(tuple(images_shape), tuple(theta_shape))
        self.built = True

    def call(self, inputs):
        images, theta = self._split(inputs)
        images = ops.convert_to_tensor(images)
        if "float" not in keras.backend.standardize_dtype(images.dtype):  # e.g. uint8 pixels
            images = ops.cast(images, self.compute_dtype)
        theta = ops.convert_to_tensor(theta)
        self._check_shapes(tuple(images.shape), tuple(theta.shape))
        dtype = images.dtype
        theta = ops.cast(theta, dtype)
        out_h, out_w = self.output_size
        shape = ops.shape(images)
        batch, height, width = shape[0], shape[1], shape[2]
        channels = images.shape[-1] if images.shape[-1] is not None else shape[3]

        # Grid generator: the homogeneous output grid [N, 3] (x_t, y_t, 1), N = out_h * out_w, row-major.
        ys, xs = ops.meshgrid(_grid(out_h, self.align_corners, dtype), _grid(out_w, self.align_corners, dtype),
                              indexing="ij")
        grid = ops.stack([ops.reshape(xs, (-1,)), ops.reshape(ys, (-1,)), ops.ones((out_h * out_w,), dtype=dtype)],
                         axis=1)
        source = ops.einsum("bij,nj->bni", ops.reshape(theta, (-1, 2, 3)), grid)  # [B, N, 2]: (x_s, y_s)
        height_f, width_f = ops.cast(height, dtype), ops.cast(width, dtype)
        x = _to_pixels(source[..., 0], width_f, self.align_corners)
        y = _to_pixels(source[..., 1], height_f, self.align_corners)

        # Bilinear sampler: the four neighbours of each sample point (last axis: top-left, top-right,
        # bottom-left, bottom-right) and their weights, written linearly in the fractional parts so
        # that the gradient in theta is exact on each piece (also at integer coordinates).
        x0, y0 = ops.floor(x), ops.floor(y)
        right = ops.convert_to_tensor([0.0, 1.0, 0.0, 1.0], dtype=dtype)
        below = ops.convert_to_tensor([0.0, 0.0, 1.0, 1.0], dtype=dtype)
        fx, fy = (x - x0)[..., None], (y - y0)[..., None]
        weight = (right * fx + (1.0 - right) * (1.0 - fx)) * (below * fy + (1.0 - below) * (1.0 - fy))  # [B, N, 4]
        xs, ys = x0[..., None] + right, y0[..., None] + below
        inside = (xs >= 0.0) & (xs <= width_f - 1.0) & (ys >= 0.0) & (ys <= height_f - 1.0)
        inside_weight = ops.where(inside, weight, ops.zeros_like(weight))
        xi = ops.cast(ops.clip(xs, 0.0, width_f - 1.0), "int32")
        yi = ops.cast(ops.clip(ys, 0.0, height_f - 1.0), "int32")
        first = ops.arange(batch, dtype="int32")[:, None, None] * (height * width)  # each image's first row
        flat = ops.reshape(images, (-1, channels))  # [B * H * W, C]
        values = ops.take(flat, first + yi * width + xi, axis=0)  # [B, N, 4, C]
        output = ops.sum(inside_weight[..., None] * values, axis=2)
        if self.fill_value != 0.0:  # the padding's share: the weights of the neighbours outside the image
            output = output + (self.fill_value * ops.sum(weight - inside_weight, axis=-1))[..., None]
        return ops.reshape(output, (-1, out_h, out_w, channels))

    def compute_output_shape(self, input_shape):
        images_shape, theta_shape = self._split(input_shape, shapes=True)
        batch = images_shape[0] if images_shape[0] is not None else theta_shape[0]
        return (batch, *self.output_size, images_shape[-1])

    def get_config(self):
        return {**super().get_config(), "output_size": self.output_size, "align_corners": self.align_corners,
                "fill_value": self.fill_value}


def affine_regression(name: str | None = None, **kwargs) -> keras.layers.Dense:
    """The localisation network's last layer: ``Dense(6)`` that starts out predicting the identity
    (zero kernel, bias ``[1, 0, 0, 0, 1, 0]``), as the paper initialises it, so a spatial
    transformer network starts as its plain twin and learns to move away from the identity.
    Other keyword arguments go to ``keras.layers.Dense``."""
    taken = sorted(set(kwargs) & {"units", "kernel_initializer", "bias_initializer", "use_bias", "activation"})
    if taken:
        raise ValueError(f"affine_regression sets {taken} itself (6 outputs, zero kernel, identity bias, "
                         f"no activation). Received: {', '.join(f'{k}={kwargs[k]!r}' for k in taken)}")
    return keras.layers.Dense(6, kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant(list(IDENTITY_THETA)), name=name, **kwargs)
