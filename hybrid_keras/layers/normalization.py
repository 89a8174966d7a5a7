"""Local response normalisation (Krizhevsky et al. 2012), channels last; L2 normalisation of embeddings."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="hybrid_keras")
class LocalResponseNormalization(keras.layers.Layer):
    """Normalise each activation by the energy of its neighbouring channels.

    ``b_c = a_c / (k + alpha / size * sum_{c' in window(c)} a_c'^2) ** beta``, the window
    being ``size`` channels around ``c`` (``size // 2`` before, ``(size - 1) // 2`` after),
    zero-padded at the ends. This is torch.nn.LocalResponseNorm's convention (alpha is
    divided by ``size``, as Caffe does); the 2012 paper's ``alpha = 1e-4`` with ``n = 5``
    corresponds to ``alpha = 5e-4`` here.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if alpha < 0 or beta < 0 or k <= 0:
            raise ValueError(f"need alpha >= 0, beta >= 0 and k > 0, got alpha={alpha}, beta={beta}, k={k}")
        self.size, self.alpha, self.beta, self.k = size, float(alpha), float(beta), float(k)

    def call(self, inputs):
        squared = ops.square(inputs)
        # Sum over the channel window as a difference of cumulative sums (any size, one pass).
        padded = ops.pad(squared, [[0, 0]] * (len(inputs.shape) - 1) + [[self.size // 2 + 1, (self.size - 1) // 2]])
        cumulative = ops.cumsum(padded, axis=-1)
        window_sum = cumulative[..., self.size:] - cumulative[..., : -self.size]
        return inputs / ops.power(self.k + (self.alpha / self.size) * window_sum, self.beta)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "size": self.size, "alpha": self.alpha, "beta": self.beta, "k": self.k}


def l2_normalize(x, axis: int = -1):
    """``x`` scaled to unit L2 length along ``axis``; zero vectors stay zero.

    Dividing by the largest magnitude first keeps the sum of squares in range: it neither
    overflows (values beyond about 1e19 in float32) nor underflows (the tiny embeddings of
    untrained nets or low-activation inputs; keras.ops.normalize floors the squared norm
    at 1e-7, which leaves those far from unit length). The result does not depend on that
    divisor, so no gradient flows through it.
    """
    x = ops.convert_to_tensor(x)
    largest = ops.stop_gradient(ops.max(ops.abs(x), axis=axis, keepdims=True))
    # Two steps by its square root: XLA divides by multiplying with the reciprocal, and
    # the reciprocal of a value above 2**126 is subnormal, which it flushes to 0.
    root = ops.sqrt(ops.where(largest > 0, largest, ops.ones_like(largest)))
    x = x / root / root
    # The sum of squares is now about 1 or more, except for a zero vector, which stays 0.
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 0.5))


@keras.saving.register_keras_serializable(package="hybrid_keras")
class L2Normalize(keras.layers.Layer):
    """Scales each vector (last axis) to unit length, so squared L2 distance is 2 - 2 cos."""

    def call(self, inputs):
        return l2_normalize(inputs, axis=-1)
