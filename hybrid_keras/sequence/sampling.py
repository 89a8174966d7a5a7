"""Sampling text from a character model, one character at a time with the recurrent state
carried between steps (the prefix is never re-run), and next-character probabilities."""

from __future__ import annotations

import numpy as np

import keras
from keras import ops

from hybrid_keras.sequence.vocabulary import CharVocabulary, check_token_ids


def _recurrent_layers(model) -> list:
    found = []
    while any(layer.name == f"rnn_{len(found) + 1}" for layer in model.layers):
        found.append(model.get_layer(f"rnn_{len(found) + 1}"))
    return found


class CharStepper:
    """A zoo character model (``embedding``, ``rnn_1`` .. ``rnn_L``, ``logits``) run one step at a
    time: its recurrent layers' own cells (same weights) are called on one character and the
    states of the previous step, which is what the layers do inside over a whole window
    (dropout is off: inference). ``step`` gives the same logits as the full model at that
    position, without re-running the prefix."""

    def __init__(self, model):
        try:
            self.embedding, self.logits = model.get_layer("embedding"), model.get_layer("logits")
        except ValueError:
            raise ValueError(f"model must be a zoo character model (layers 'embedding', 'rnn_1', ..., 'logits'). "
                             f"Received: a model named {model.name!r}") from None
        self.cells = [layer.cell for layer in _recurrent_layers(model)]
        if not self.cells:
            raise ValueError(f"model has no recurrent layer named 'rnn_1'. Received: a model named {model.name!r}")
        self.vocabulary_size = int(self.logits.units)

    def initial_states(self, batch: int) -> list[list]:
        """Zero states: per recurrent layer, a list of ``[batch, units]`` tensors (LSTM: h and c)."""
        states = []
        for cell in self.cells:
            sizes = cell.state_size if isinstance(cell.state_size, (list, tuple)) else [cell.state_size]
            states.append([ops.zeros((batch, size)) for size in sizes])
        return states

    def step(self, token_ids, states):
        """``token_ids`` ``[B]`` and the previous states -> logits ``[B, V]`` and the new states."""
        x = self.embedding(ops.convert_to_tensor(np.asarray(token_ids, dtype=np.int32)))
        new_states = []
        for cell, state in zip(self.cells, states):
            x, state = cell(x, list(state), training=False)
            new_states.append(list(state) if isinstance(state, (list, tuple)) else [state])
        return self.logits(x), new_states


def _choose(logits: np.ndarray, temperature: float, rng: np.random.Generator) -> np.ndarray:
    """One id per row of ``logits`` ``[B, V]``: the argmax at temperature 0, else a draw from
    ``softmax(logits / temperature)`` (inverse CDF of one uniform per row)."""
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int32)
    scaled = logits.astype(np.float64) / temperature
    probabilities = np.exp(scaled - scaled.max(axis=-1, keepdims=True))
    cumulative = np.cumsum(probabilities, axis=-1)
    draws = rng.random(len(logits))[:, None] * cumulative[:, -1:]
    return np.minimum((cumulative <= draws).sum(axis=-1), logits.shape[-1] - 1).astype(np.int32)


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature >= 0:
        raise ValueError(f"temperature must be a number >= 0 (0: always the most probable character). "
                         f"Received: temperature={temperature!r}")
    return float(temperature)


def sample_ids(model, prime_ids, length: int, *, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """``length`` ids generated after ``prime_ids`` (``[B, P]``, P >= 1), ``[B, length]`` int32.

    The prime is read one character at a time through :class:`CharStepper`, then each
    generated character is fed back with the carried states. ``temperature``: 0 takes the
    most probable character (greedy); otherwise characters are drawn from
    ``softmax(logits / temperature)`` with a NumPy generator seeded by ``seed``, so a seed
    gives the same text on every run (and every backend, up to ties in float rounding).
    """
    stepper = CharStepper(model)
    prime_ids = check_token_ids(prime_ids, stepper.vocabulary_size, name="prime_ids")
    if prime_ids.shape[1] < 1:
        raise ValueError(f"prime_ids must hold at least one character per row. Received: shape {prime_ids.shape}")
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an int >= 0. Received: length={length!r}")
    temperature = _check_temperature(temperature)
    rng = np.random.default_rng(seed)
    states = stepper.initial_states(len(prime_ids))
    for t in range(prime_ids.shape[1]):
        logits, states = stepper.step(prime_ids[:, t], states)
    generated = np.zeros((len(prime_ids), length), np.int32)
    for t in range(length):
        generated[:, t] = _choose(ops.convert_to_numpy(logits), temperature, rng)
        if t + 1 < length:
            logits, states = stepper.step(generated[:, t], states)
    return generated


def sample(model, vocabulary: CharVocabulary, *, prime: str = "\n", length: int = 400, temperature: float = 1.0,
           seed: int = 0) -> str:
    """``length`` characters sampled after the text ``prime`` (see :func:`sample_ids`); returns
    only the generated text. Characters of ``prime`` outside the vocabulary read as unknown."""
    if not isinstance(prime, str) or not prime:
        raise ValueError(f"prime must be a non-empty str (the text to continue). Received: prime={prime!r}")
    if len(vocabulary) != int(model.output_shape[-1]):
        raise ValueError(f"vocabulary has {len(vocabulary)} ids but the model predicts {model.output_shape[-1]}. "
                         f"Received: {vocabulary!r}")
    ids = sample_ids(model, vocabulary.encode(prime)[None, :], length, temperature=temperature, seed=seed)
    return vocabulary.decode(ids[0])


def next_char_probabilities(model, token_ids, *, temperature: float = 1.0) -> np.ndarray:
    """``softmax(logits / temperature)`` of the character after each row of ``token_ids``
    ``[B, T]`` (the model's output at the last position), float32 ``[B, V]``; what the
    exported SavedModel's ``next_char_probabilities`` signature serves (at temperature 1)."""
    vocabulary_size = int(model.output_shape[-1])
    token_ids = check_token_ids(token_ids, vocabulary_size)
    if token_ids.shape[1] < 1:
        raise ValueError(f"token_ids must hold at least one character per row. Received: shape {token_ids.shape}")
    temperature = _check_temperature(temperature)
    if temperature == 0:
        raise ValueError("temperature must be > 0 for probabilities (0 is greedy sampling). Received: temperature=0")
    logits = model(token_ids, training=False)[:, -1, :]
    return keras.ops.convert_to_numpy(ops.softmax(logits / temperature, axis=-1))
