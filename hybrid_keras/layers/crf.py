"""A fully connected CRF over per-pixel class scores, refined by mean-field inference.

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge
Potentials" (NIPS 2011): every pair of pixels ``i, j`` is linked by

    k(i, j) = w_s exp(-|p_i - p_j|^2 / 2 theta_gamma^2)                                  (spatial)
            + w_b exp(-|p_i - p_j|^2 / 2 theta_alpha^2 - |I_i - I_j|^2 / 2 theta_beta^2)   (bilateral)

and a label compatibility ``mu`` (Potts: 1 between different labels, 0 for equal ones). A
mean-field step computes, for every pixel and label, the message ``m = sum_j k(i, j) Q_j``
(a Gaussian filtering of the current marginals ``Q``), the pairwise energy
``E_l = sum_l' mu[l, l'] m_l'``, and ``Q = softmax(logits - E)``. As in CRF-as-RNN (Zheng et
al., ICCV 2015) every step is tensor operations, so the kernel weights and the compatibility
train end to end.

How the bilateral filtering is done, and why
--------------------------------------------
Exact filtering is a product with an N x N matrix (N pixels; 30 billion entries at 360x480).
The options were the permutohedral lattice (the DenseCRF and CRF-as-RNN choice: a hash
table of lattice points, so data-dependent sizes and a custom op in practice), a local
window (ConvCRF: cuts the long-range bilateral kernel, whose spatial reach is 80 pixels,
to a few pixels) and filtering on a downsampled image (loses the edges the CRF is for).
This layer uses a **bilateral grid** (Paris & Durand 2006; Chen, Paris & Durand 2007) with
the permutohedral lattice's cheaper interpolation: each pixel's marginals are splatted onto
the d + 1 corners of the simplex that holds its feature vector in the Kuhn triangulation of a
regular grid over (y, x, colour) (6 corners for RGB instead of a cube's 32, at about the
same error), blurred with [1, 2, 1] / 4 along each axis, and read back with the same
barycentric weights. Splatting and slicing have variance 1/6 cell^2 along each axis and the
blur 1/2, so cells ``sqrt(6/5)`` standard deviations wide give the grid kernel the
Gaussian's variance. Its shapes are fixed by the image size and the standard deviations,
never by the pixel values, so it runs under XLA / jit, on GPU and in a SavedModel with stock
operations (a segment sum, a gather, depthwise convolutions). The grid kernel is ``S B S^T`` with ``B``
positive semidefinite, so it is positive semidefinite like the exact one: with the Potts
model each mean-field step cannot raise the mean-field free energy (the concave-convex
argument of Krähenbühl & Koltun, ICML 2013), for this kernel as for the exact one. The spatial kernel is filtered exactly (a separable Gaussian convolution
over all pixels within 4 standard deviations).

``normalization="symmetric"`` (the default, as in pydensecrf) uses ``D^-1/2 K D^-1/2``
with ``D`` the kernel's row sums, so messages are weighted averages and weights of a few
units are meaningful at any image size; it also cancels most of the grid's approximation
error. ``"none"`` is the 2011 paper's formula. ``filtering="exact"`` builds the N x N
matrices (small images only); it is the reference the grid is measured against.
The self term ``k(i, i)`` is kept, as pydensecrf keeps it: it makes the kernel matrix
positive definite, which is what the convergence argument needs.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

COMPATIBILITIES = ("potts", "learned")
NORMALIZATIONS = ("symmetric", "none")
FILTERINGS = ("grid", "exact")
COLOR_MAX = 255.0  # images are raw pixel values in [0, 255] (clipped to it)
# Grid cell width in standard deviations: splatting and slicing (variance 1/6 cell^2 each)
# and the [1, 2, 1] / 4 blur (1/2) give the grid kernel the Gaussian's variance.
CELL_PER_SIGMA = math.sqrt(6 / 5)
SPATIAL_RADIUS_PER_SIGMA = 4  # the spatial kernel's support; beyond it exp(-8) < 3.4e-4
MAX_GRID_VALUES = 2 ** 28  # grid cells x classes per image (1 GiB in float32)
MAX_EXACT_PIXELS = 2 ** 14  # filtering="exact" holds B x N x N floats


@keras.saving.register_keras_serializable(package="hybrid_keras")
class DenseCRF(keras.layers.Layer):
    """Mean-field inference in a fully connected CRF: ``[logits, images] -> class probabilities``.

    Inputs: ``logits`` ``[B, H, W, num_classes]`` (unary potentials are ``-logits``) and
    ``images`` ``[B, H, W, channels]``, raw pixel values in [0, 255] (the model's input).
    Output: ``[B, H, W, num_classes]`` probabilities after ``iterations`` mean-field steps
    (``iterations=0`` is the softmax of the logits).

    Arguments: ``spatial_weight`` / ``spatial_sigma`` (``w_s``, ``theta_gamma`` in pixels),
    ``bilateral_weight`` / ``bilateral_spatial_sigma`` / ``bilateral_color_sigma`` (``w_b``,
    ``theta_alpha`` in pixels, ``theta_beta`` in pixel values); the two weights are trainable.
    ``compatibility``: "potts" (fixed) or "learned" (a trainable ``[C, C]`` matrix that starts
    as Potts). ``normalization``: "symmetric" or "none". ``filtering``: "grid" or "exact"
    (see the module docstring).
    """

    def __init__(self, num_classes: int, iterations: int = 5, *, spatial_weight: float = 3.0,
                 spatial_sigma: float = 3.0, bilateral_weight: float = 5.0, bilateral_spatial_sigma: float = 80.0,
                 bilateral_color_sigma: float = 13.0, compatibility: str = "potts",
                 normalization: str = "symmetric", filtering: str = "grid", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2. Received: num_classes={num_classes!r}")
        if not isinstance(iterations, (int, np.integer)) or isinstance(iterations, bool) or iterations < 0:
            raise ValueError(f"iterations must be a non-negative int. Received: iterations={iterations!r}")
        for name, value in (("spatial_sigma", spatial_sigma), ("bilateral_spatial_sigma", bilateral_spatial_sigma),
                            ("bilateral_color_sigma", bilateral_color_sigma)):
            if not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} must be a positive number. Received: {name}={value!r}")
        for name, value in (("spatial_weight", spatial_weight), ("bilateral_weight", bilateral_weight)):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number. Received: {name}={value!r}")
        for name, value, allowed in (("compatibility", compatibility, COMPATIBILITIES),
                                     ("normalization", normalization, NORMALIZATIONS),
                                     ("filtering", filtering, FILTERINGS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}. Received: {name}={value!r}")
        self.num_classes = int(num_classes)
        self.iterations = int(iterations)
        self.initial_spatial_weight = float(spatial_weight)
        self.initial_bilateral_weight = float(bilateral_weight)
        self.spatial_sigma = float(spatial_sigma)
        self.bilateral_spatial_sigma = float(bilateral_spatial_sigma)
        self.bilateral_color_sigma = float(bilateral_color_sigma)
        self.compatibility_mode = compatibility
        self.normalization = normalization
        self.filtering = filtering

    # ------------------------------------------------------------------ Keras

    def build(self, input_shapes):
        logits_shape, image_shape = _pair_of_shapes(input_shapes)
        self._check_shapes(logits_shape, image_shape)
        self.spatial_weight = self.add_weight(
            name="spatial_weight", shape=(), initializer=keras.initializers.Constant(self.initial_spatial_weight))
        self.bilateral_weight = self.add_weight(
            name="bilateral_weight", shape=(), initializer=keras.initializers.Constant(self.initial_bilateral_weight))
        potts = 1.0 - np.eye(self.num_classes, dtype=np.float32)
        self.compatibility = self.add_weight(
            name="compatibility", shape=(self.num_classes, self.num_classes),
            initializer=keras.initializers.Constant(potts), trainable=self.compatibility_mode == "learned")
        self.built = True

    def call(self, inputs):
        logits, images = inputs
        self._check_shapes(logits.shape, images.shape)
        logits = ops.cast(logits, "float32")
        messages = self._message_function(ops.cast(images, "float32"))
        # E_l = sum_l' mu[l, l'] m_l': the cost of label l given the neighbours' marginals.
        compatibility = ops.transpose(ops.cast(self.compatibility, "float32"))
        q = ops.softmax(logits, axis=-1)
        for _ in range(self.iterations):
            q = ops.softmax(logits - ops.matmul(messages(q), compatibility), axis=-1)
        return q

    def pairwise_messages(self, marginals, images):
        """``w_s K_s Q + w_b K_b Q`` (normalised as configured) for ``marginals`` ``[B, H, W, any channels]``.

        The filtering one mean-field step does; with ``marginals`` the identity it gives
        the layer's kernel matrix (what the energy tests use).
        """
        return self._message_function(ops.cast(images, "float32"))(ops.cast(marginals, "float32"))

    def compute_output_shape(self, input_shapes):
        logits_shape, _ = _pair_of_shapes(input_shapes)
        return tuple(logits_shape)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "iterations": self.iterations,
                "spatial_weight": self.initial_spatial_weight, "spatial_sigma": self.spatial_sigma,
                "bilateral_weight": self.initial_bilateral_weight,
                "bilateral_spatial_sigma": self.bilateral_spatial_sigma,
                "bilateral_color_sigma": self.bilateral_color_sigma, "compatibility": self.compatibility_mode,
                "normalization": self.normalization, "filtering": self.filtering}

    # ------------------------------------------------------------------ filtering

    def _message_function(self, images):
        """``Q -> w_s K_s Q + w_b K_b Q``, with everything that depends only on the image computed once."""
        if self.filtering == "exact":
            positions, colours = _pixel_features(images)
            spatial = _dense_gaussian(positions / self.spatial_sigma)
            bilateral = _dense_gaussian(ops.concatenate(
                [positions / self.bilateral_spatial_sigma, colours / self.bilateral_color_sigma], axis=-1))
            spatial, bilateral = _flat(spatial), _flat(bilateral)
        else:
            spatial = _SeparableGaussian(self.spatial_sigma)
            bilateral = _BilateralGrid(images, self.bilateral_spatial_sigma, self.bilateral_color_sigma,
                                       num_classes=self.num_classes, layer=self.name)
        if self.normalization == "symmetric":
            ones = ops.ones_like(images[..., :1])
            spatial, bilateral = _symmetric(spatial, ones), _symmetric(bilateral, ones)
        spatial_weight = ops.cast(self.spatial_weight, "float32")
        bilateral_weight = ops.cast(self.bilateral_weight, "float32")
        return lambda q: spatial_weight * spatial(q) + bilateral_weight * bilateral(q)

    def _check_shapes(self, logits_shape, image_shape):
        if len(logits_shape) != 4 or len(image_shape) != 4:
            raise ValueError(f"{self.name}: expected logits [B, H, W, C] and images [B, H, W, channels]. "
                             f"Received: logits shape {tuple(logits_shape)}, images shape {tuple(image_shape)}")
        if logits_shape[-1] is not None and logits_shape[-1] != self.num_classes:
            raise ValueError(f"{self.name}: logits must have num_classes={self.num_classes} channels. "
                             f"Received: logits shape {tuple(logits_shape)}")
        for axis in (0, 1, 2):
            if None not in (logits_shape[axis], image_shape[axis]) and logits_shape[axis] != image_shape[axis]:
                raise ValueError(f"{self.name}: logits and images must have the same batch size, height and width. "
                                 f"Received: logits shape {tuple(logits_shape)}, images shape {tuple(image_shape)}")
        if self.filtering == "exact" and None not in logits_shape[1:3]:
            pixels = logits_shape[1] * logits_shape[2]
            if pixels > MAX_EXACT_PIXELS:
                raise ValueError(f"{self.name}: filtering='exact' holds an N x N matrix per image, meant for at most "
                                 f"{MAX_EXACT_PIXELS} pixels; use filtering='grid'. Received: {pixels} pixels "
                                 f"(images of {logits_shape[1]}x{logits_shape[2]})")


# ---------------------------------------------------------------------- kernels

def _pair_of_shapes(input_shapes):
    if not isinstance(input_shapes, (list, tuple)) or len(input_shapes) != 2:
        raise ValueError(f"DenseCRF takes [logits, images]. Received: input shapes {input_shapes!r}")
    return tuple(input_shapes[0]), tuple(input_shapes[1])


def _size(x, axis):
    """A static size where Keras knows it, else the runtime one (images of any size)."""
    return x.shape[axis] if x.shape[axis] is not None else ops.shape(x)[axis]


def _pixel_features(images):
    """Positions ``[B, N, 2]`` (row, column) and colours ``[B, N, channels]``, N = H W in row-major order."""
    batch, height, width, channels = (_size(images, a) for a in range(4))
    rows = ops.repeat(ops.arange(height, dtype="float32"), width)
    columns = ops.tile(ops.arange(width, dtype="float32"), [height])
    positions = ops.broadcast_to(ops.stack([rows, columns], axis=-1)[None], (batch, height * width, 2))
    colours = ops.reshape(ops.clip(images, 0.0, COLOR_MAX), (batch, height * width, channels))
    return positions, colours


def _dense_gaussian(features):
    """``Q [B, N, C] -> K Q`` with ``K_ij = exp(-|f_i - f_j|^2 / 2)``, built as a dense matrix."""
    centred = features - ops.mean(features, axis=1, keepdims=True)  # small values: less cancellation below
    squared = ops.sum(ops.square(centred), axis=-1)
    distances = squared[:, :, None] + squared[:, None, :] - 2.0 * ops.matmul(centred, ops.transpose(centred, (0, 2, 1)))
    kernel = ops.exp(-0.5 * ops.maximum(distances, 0.0))
    return lambda q: ops.matmul(kernel, q)


def _flat(filter_on_pixels):
    """A ``[B, N, C]`` filter applied to ``[B, H, W, C]`` maps."""
    def apply(q):
        batch, height, width, channels = (_size(q, a) for a in range(4))
        out = filter_on_pixels(ops.reshape(q, (batch, height * width, channels)))
        return ops.reshape(out, (batch, height, width, channels))
    return apply


def _symmetric(filter_, ones):
    """``D^-1/2 K D^-1/2`` with ``D = K 1``, the kernel's row sums (at least the self term, 1)."""
    scale = ops.rsqrt(filter_(ones))
    return lambda q: scale * filter_(scale * q)


class _SeparableGaussian:
    """``K Q`` for ``K_ij = exp(-|p_i - p_j|^2 / 2 sigma^2)`` over pixel positions: a row then a
    column convolution with zero padding (pixels outside the image do not exist), exact up to
    the kernel's cut at ``SPATIAL_RADIUS_PER_SIGMA`` standard deviations."""

    def __init__(self, sigma: float):
        radius = max(1, math.ceil(SPATIAL_RADIUS_PER_SIGMA * sigma))
        offsets = np.arange(-radius, radius + 1, dtype=np.float64)
        self.taps = np.exp(-0.5 * (offsets / sigma) ** 2).astype(np.float32)

    def __call__(self, q):
        channels = q.shape[-1]
        column = np.tile(self.taps.reshape(-1, 1, 1, 1), (1, 1, channels, 1))
        q = ops.depthwise_conv(q, column, strides=1, padding="same")
        return ops.depthwise_conv(q, column.transpose(1, 0, 2, 3), strides=1, padding="same")


class _BilateralGrid:
    """``K Q`` for the bilateral kernel, on a grid over (row, column, colour channels).

    The grid holds the cells that splatting can touch, ``floor(extent / cell) + 2`` per
    axis; it is stored flat per image, ``[B, cells, C]``, rows outermost and colour
    channels innermost. Each blur is a depthwise convolution with zero padding over a
    reshaped view: what it spreads past the grid's edge would land in cells that no pixel
    reads, so dropping it changes nothing.
    """

    def __init__(self, images, spatial_sigma: float, color_sigma: float, *, num_classes: int, layer: str):
        batch, height, width, channels = (_size(images, a) for a in range(4))
        spatial_cell = CELL_PER_SIGMA * spatial_sigma
        color_cell = CELL_PER_SIGMA * color_sigma
        self.dims = [_cells(height - 1, spatial_cell), _cells(width - 1, spatial_cell)] + \
            [_cells(COLOR_MAX, color_cell)] * channels
        strides = [1]
        for size in reversed(self.dims[1:]):
            strides.insert(0, strides[0] * size)
        self.cells = self.dims[0] * strides[0]
        if isinstance(self.cells, int) and self.cells * num_classes > MAX_GRID_VALUES:
            raise ValueError(
                f"{layer}: the bilateral grid for {height}x{width} images would hold {self.cells:,} cells x "
                f"{num_classes} classes (at most {MAX_GRID_VALUES:,} values); raise bilateral_color_sigma or "
                f"bilateral_spatial_sigma. Received: bilateral_spatial_sigma={spatial_sigma}, "
                f"bilateral_color_sigma={color_sigma}")
        # The grid kernel integrates to 1 cell per axis, the Gaussian to sqrt(2 pi) sigma.
        self.normalizer = (math.sqrt(2 * math.pi) / CELL_PER_SIGMA) ** len(self.dims)

        positions, colours = _pixel_features(images)
        coordinates = ops.concatenate([positions / spatial_cell, colours / color_cell], axis=-1)
        base = ops.floor(coordinates)
        fraction = coordinates - base
        ids, weights = _simplex_vertices(ops.cast(base, "int32"), fraction, strides)  # [B, N, d + 1] each
        image_offset = ops.arange(batch, dtype="int32")[:, None, None] * self.cells
        self.ids = ops.reshape(ids + image_offset, (-1,))  # [B N corners] into [B cells]
        self.weights = weights[..., None]  # [B, N, corners, 1]

    def __call__(self, q):
        batch, height, width, channels = (_size(q, a) for a in range(4))
        values = ops.reshape(q, (batch, height * width, 1, channels)) * self.weights
        grid = ops.segment_sum(ops.reshape(values, (-1, channels)), self.ids, num_segments=batch * self.cells)
        grid = self._blur(grid, channels)
        values = ops.reshape(ops.take(grid, self.ids, axis=0), (batch, height * width, -1, channels))
        out = ops.sum(values * self.weights, axis=2) * self.normalizer
        return ops.reshape(out, (batch, height, width, channels))

    def _blur(self, grid, channels):
        """[1, 2, 1] / 4 along every axis of the flat grid ``[B cells, C]``: each colour axis
        as a column convolution over (that axis, the axes inside it), then rows and columns
        together as one 3x3 convolution over all colour cells' channels."""
        colour = self.dims[2:]
        for axis, size in enumerate(colour):
            inner = int(np.prod(colour[axis + 1:], dtype=np.int64))
            grid = _depthwise(ops.reshape(grid, (-1, size, inner, channels)), _BLUR[:, None])
        grid = _depthwise(ops.reshape(grid, (-1, self.dims[0], self.dims[1], int(np.prod(colour)) * channels)),
                          np.outer(_BLUR, _BLUR))
        return ops.reshape(grid, (-1, channels))


_BLUR = np.array([0.25, 0.5, 0.25], np.float32)


def _depthwise(x, kernel):
    """The same 2-D ``kernel`` over every channel of ``x`` ``[N, H, W, C]``, zero padding."""
    tiled = np.tile(kernel[:, :, None, None], (1, 1, x.shape[-1], 1)).astype(np.float32)
    return ops.depthwise_conv(x, tiled, strides=1, padding="same")


def _simplex_vertices(base, fraction, strides):
    """The d + 1 vertices of the simplex around each point in the grid's Kuhn triangulation, and
    the point's barycentric weights: walking from ``base`` along the axes in decreasing order
    of ``fraction``, vertex k gets weight ``f_(k) - f_(k+1)`` (sorted fractions, ``f_(0) = 1``,
    ``f_(d+1) = 0``). Linear interpolation on simplices, as the permutohedral lattice does it."""
    order = ops.argsort(-fraction, axis=-1)
    sorted_fraction = ops.take_along_axis(fraction, order, axis=-1)
    ones = ops.ones_like(sorted_fraction[..., :1])
    bounds = ops.concatenate([ones, sorted_fraction, 0.0 * ones], axis=-1)
    weights = bounds[..., :-1] - bounds[..., 1:]  # [..., d + 1]
    stride_values = ops.stack([ops.cast(stride, "int32") for stride in strides])
    steps = ops.cumsum(ops.take(stride_values, order), axis=-1)
    base_index = sum(base[..., axis] * stride for axis, stride in enumerate(strides))[..., None]
    ids = ops.concatenate([base_index, base_index + steps], axis=-1)
    return ids, weights


def _cells(extent, cell):
    """Grid cells along an axis of coordinates in [0, extent]: floor(extent / cell) + 2, the ones splatting touches."""
    if isinstance(extent, (int, float)):
        return int(math.floor(extent / cell)) + 2
    return ops.cast(ops.floor(ops.cast(extent, "float32") / cell), "int32") + 2
