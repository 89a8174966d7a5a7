"""How far back a loss reaches: the norm of d loss_T / d h_t for every step t of a recurrent
cell unrolled by hand (the vanishing-gradient picture, Bengio, Simard & Frasconi 1994;
Hochreiter & Schmidhuber 1997)."""

from __future__ import annotations

import numpy as np

import keras
from keras import ops


def _gradients(function, zeros: list):
    """d function(perturbations) / d perturbations at ``zeros``, with the backend's own autodiff."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        perturbations = [tf.convert_to_tensor(z) for z in zeros]
        with tf.GradientTape() as tape:
            tape.watch(perturbations)
            value = function(perturbations)
        return tape.gradient(value, perturbations)
    if backend == "jax":
        import jax

        return jax.grad(function)(list(zeros))
    if backend == "torch":
        import torch

        perturbations = [z.detach().clone().requires_grad_(True) for z in zeros]
        return list(torch.autograd.grad(function(perturbations), perturbations))
    raise NotImplementedError(f"gradient_norms_through_time supports the tensorflow, jax and torch backends. "
                              f"Received: {backend}")


def gradient_norms_through_time(cell, inputs, loss_fn, *, initial_states=None, state: int = 0) -> np.ndarray:
    """``||d loss / d h_t||`` for t = 1 .. T, per sequence: float ``[B, T]``.

    ``cell``: a Keras RNN cell (``SimpleRNNCell``, ``LSTMCell``, ``GRUCell``, a layer's
    ``.cell``), built or not. ``inputs``: ``[B, T, D]``, the cell's inputs at each step.
    ``loss_fn``: the output at the last step ``h_T`` ``[B, units]`` -> per-sequence losses
    ``[B]`` (summed, so each sequence's gradients are its own: sequences never mix).
    ``state``: which of the cell's states ``h_t`` is (0: its output, for every cell; 1: an
    LSTM's cell state ``c_t``). ``initial_states``: default zeros.

    The cell is stepped in a Python loop over T steps; a zero perturbation ``e_t`` is added
    to the chosen state after step t, and d loss / d e_t (= d loss / d h_t, the total
    derivative through every later step) comes from the backend's autodiff. With ``state`` > 0
    the last column is NaN: inside step T the cell already read c_T to make h_T, which the loss
    sees, so a perturbation of c_T after the step reaches nothing; lags of 1 and more are exact.
    """
    inputs = ops.convert_to_tensor(inputs, dtype="float32")
    if len(inputs.shape) != 3:
        raise ValueError(f"inputs must be [batch, time, features]. Received: shape {tuple(inputs.shape)}")
    batch, steps = int(inputs.shape[0]), int(inputs.shape[1])
    sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
    if not isinstance(state, int) or not 0 <= state < len(sizes):
        raise ValueError(f"state must be an index into the cell's {len(sizes)} states. Received: state={state!r}")
    if initial_states is None:
        initial_states = [ops.zeros((batch, size)) for size in sizes]
    if not getattr(cell, "built", True):
        cell.build(tuple(inputs.shape[:1]) + tuple(inputs.shape[2:]))

    def loss(perturbations):
        states = list(initial_states)
        output = None
        for t in range(steps):
            output, states = cell(inputs[:, t, :], states, training=False)
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            states[state] = states[state] + perturbations[t]
            if state == 0:
                output = states[0]  # the output is the hidden state for all of Keras' cells
        return ops.sum(loss_fn(output))

    zeros = [ops.zeros((batch, sizes[state])) for _ in range(steps)]
    gradients = _gradients(loss, zeros)
    if state != 0:  # the step computed h_T from c_T before the perturbation: see the docstring
        gradients = gradients[:-1]
    norms = [np.linalg.norm(ops.convert_to_numpy(g), axis=-1) for g in gradients]
    return np.stack(norms + [np.full(batch, np.nan)] * (steps - len(norms)), axis=1)
