"""Gradients with the running backend's own autodiff: ``tf.GradientTape``, ``jax.value_and_grad``
or ``torch.autograd.grad``.

Keras 3 has no backend-neutral "gradient of this function" call (``model.fit`` hides one per
backend), so the explanation methods use this one: ``fn(*args)`` returns ``(scalar, aux)``;
:func:`gradient_function` makes a callable returning ``aux`` and the gradients of the scalar
with respect to the chosen arguments, all as NumPy arrays. It is traced once per input shape:
``tf.function`` under TensorFlow; ``jax.jit`` under JAX, with the Keras variables ``fn`` reads
passed in as arguments (through ``keras.StatelessScope``) rather than baked into the program
(op-by-op dispatch would compile every operation separately); PyTorch runs eagerly.
:func:`compiled` does the same for a plain forward function.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np
from keras import ops

BACKENDS = ("tensorflow", "jax", "torch")


def _numpy(value):
    return keras.tree.map_structure(lambda v: None if v is None else np.asarray(ops.convert_to_numpy(v)), value)


def _backend() -> str:
    backend = keras.backend.backend()
    if backend not in BACKENDS:
        raise ValueError(f"gradients need one of the backends {BACKENDS}. Received: keras backend {backend!r}")
    return backend


def _stateless(fn, variables):
    """``fn`` as a function of ``(variable values, *args)`` (JAX: traced values, not constants)."""
    variables = list(variables)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(*args)

    return pure, variables


def compiled(fn: Callable, variables: Sequence = ()) -> Callable:
    """``fn(*args)`` returning NumPy; compiled once per input shape under JAX (``variables``: the
    Keras variables ``fn`` reads, e.g. ``model.variables``)."""
    backend = _backend()
    if backend == "tensorflow":
        import tensorflow as tf

        traced = tf.function(fn)
        return lambda *args: _numpy(traced(*args))
    if backend == "torch":
        return lambda *args: _numpy(fn(*args))
    import jax

    pure, variables = _stateless(fn, variables)
    jitted = jax.jit(pure)
    return lambda *args: _numpy(jitted([v.value for v in variables], *args))


def gradient_function(fn: Callable, wrt: Sequence[int] = (0,), variables: Sequence = ()) -> Callable:
    """A callable ``(*args) -> (aux, [d scalar / d args[i] for i in wrt])`` where
    ``fn(*args) -> (scalar, aux)``; ``aux`` any nest of tensors. Everything comes back as NumPy;
    an argument the scalar does not depend on gets a zero gradient. ``variables``: the Keras
    variables ``fn`` reads (JAX compiles with them as arguments)."""
    backend = _backend()
    wrt = tuple(int(i) for i in wrt)
    if not wrt or min(wrt) < 0:
        raise ValueError(f"wrt must name at least one argument by its index. Received: wrt={wrt}")
    if backend == "jax":
        import jax

        pure, variables = _stateless(fn, variables)
        grad = jax.jit(jax.value_and_grad(pure, argnums=tuple(i + 1 for i in wrt), has_aux=True))

        def jax_gradients(*args):
            (_, aux), grads = grad([v.value for v in variables], *args)
            return _numpy(aux), [np.asarray(g) for g in grads]

        return jax_gradients
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function
        def tf_gradients(*tensors):
            with tf.GradientTape() as tape:
                for i in wrt:
                    tape.watch(tensors[i])
                value, aux = fn(*tensors)
            grads = tape.gradient(value, [tensors[i] for i in wrt], unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return aux, grads

        def traced_gradients(*args):
            aux, grads = tf_gradients(*[tf.convert_to_tensor(a) for a in args])
            return _numpy(aux), [g.numpy() for g in grads]

        return traced_gradients
    import torch

    def torch_gradients(*args):
        tensors = [ops.convert_to_tensor(a) for a in args]
        for i in wrt:
            tensors[i] = tensors[i].detach().requires_grad_(True)
        value, aux = fn(*tensors)
        grads = torch.autograd.grad(value, [tensors[i] for i in wrt], allow_unused=True)
        grads = [torch.zeros_like(tensors[i]) if g is None else g for i, g in zip(wrt, grads)]
        return _numpy(aux), [np.asarray(ops.convert_to_numpy(g)) for g in grads]

    return torch_gradients


def value_and_gradients(fn: Callable, args: Sequence, wrt: Sequence[int] = (0,), variables: Sequence = ()):
    """``(aux, [d scalar / d args[i] for i in wrt])`` for ``fn(*args) -> (scalar, aux)``, once
    (see :func:`gradient_function`)."""
    if any(i >= len(args) for i in wrt):
        raise ValueError(f"wrt must name arguments among the {len(args)} given. Received: wrt={tuple(wrt)}")
    return gradient_function(fn, wrt, variables)(*args)
