"""Training a character model by backpropagation through time, bits per character on held-out
text, and saving / loading a trained model with its vocabulary."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

import keras

from hybrid_keras.sequence.data import CharWindows
from hybrid_keras.sequence.vocabulary import CharVocabulary, check_token_ids

LN2 = math.log(2.0)


def _vocabulary_size(model) -> int:
    size = model.output_shape[-1]
    if len(model.output_shape) != 3 or size is None:
        raise ValueError(f"model must map token ids [B, T] to logits [B, T, V]. Received: a model with output shape "
                         f"{model.output_shape}")
    return int(size)


def evaluation_windows(length: int, context: int, warmup: int) -> list[tuple[int, int]]:
    """``(start, window length)`` of the windows :func:`bits_per_character` runs over a text of
    ``length`` characters: consecutive windows overlap by ``warmup - 1`` inputs, so every
    character from index ``warmup`` on is scored exactly once."""
    if not isinstance(context, int) or not isinstance(warmup, int) or not 1 <= warmup <= context:
        raise ValueError(f"warmup and context must be ints with 1 <= warmup <= context. Received: warmup={warmup!r}, "
                         f"context={context!r}")
    if length < warmup + 1:
        raise ValueError(f"the text must be longer than warmup={warmup} characters. Received: {length} characters")
    step = context - warmup + 1
    spans = []
    for start in range(0, length - warmup, step):  # this window scores targets start + warmup .. start + size
        spans.append((start, min(context, length - 1 - start)))
    return spans


def bits_per_character(model, token_ids, *, context: int = 100, warmup: int = 20, batch_size: int = 64) -> float:
    """Mean cross-entropy of the next character in bits, on the 1-D text ``token_ids``.

    Exactly: for every position ``j >= warmup`` of the text, the model reads the characters
    ``x[s], ..., x[j - 1]`` from a zero recurrent state (a window start ``s`` with ``warmup <=
    j - s <= context``) and gives ``p(x[j] | x[s:j])``; the result is
    ``-mean_j ln p(x[j] | x[s:j]) / ln 2`` over those ``len(token_ids) - warmup`` positions.
    The windows (:func:`evaluation_windows`) are ``context`` inputs long and overlap by
    ``warmup - 1``, so each character is scored once and never with less than ``warmup``
    characters of context; the first ``warmup`` characters are only context.
    """
    vocabulary_size = _vocabulary_size(model)
    token_ids = check_token_ids(token_ids, vocabulary_size, rank=1)
    spans = evaluation_windows(len(token_ids), context, warmup)
    # Every window padded to `context` inputs (the model is causal, so padding after a window's
    # end changes none of its logits; padded positions are not scored) and every batch to
    # `batch_size` rows: one input shape, so a compiled predict function is traced once.
    padded = np.concatenate([token_ids, np.zeros(context + 1, np.int32)])
    chunks = padded[np.asarray([start for start, _ in spans])[:, None] + np.arange(context + 1)[None, :]]
    scored = np.zeros(chunks[:, warmup:].shape, bool)  # target x[s + warmup + i] is scored in window s
    for row, (_, size) in enumerate(spans):
        scored[row, :size - warmup + 1] = True
    total = 0.0
    for first in range(0, len(chunks), batch_size):
        batch = chunks[first:first + batch_size]
        inputs = np.zeros((batch_size, context), np.int32)
        inputs[:len(batch)] = batch[:, :-1]
        logits = np.asarray(model.predict_on_batch(inputs), dtype=np.float64)[:len(batch), warmup - 1:]
        # position p predicts x[s + p + 1] from the p + 1 >= warmup characters x[s .. s + p]
        targets = batch[:, warmup:]
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(shifted).sum(axis=-1))
        picked = np.take_along_axis(shifted, targets[..., None], axis=-1)[..., 0]
        total += float(np.sum((log_norm - picked)[scored[first:first + batch_size]]))
    return total / (len(token_ids) - warmup) / LN2


class _Curve(keras.callbacks.Callback):
    """After every ``eval_every`` steps (one Keras epoch): the step, the mean training loss of
    those steps in bits, held-out bits per character, elapsed seconds."""

    def __init__(self, eval_every, validation_ids, context, warmup, history, log):
        super().__init__()
        self.eval_every, self.validation_ids = eval_every, validation_ids
        self.context, self.warmup, self.history, self.log = context, warmup, history, log

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        history = self.history
        history["step"].append((epoch + 1) * self.eval_every)
        history["train_bpc"].append(float(logs["loss"]) / LN2)
        if self.validation_ids is not None:
            history["validation_bpc"].append(bits_per_character(self.model, self.validation_ids, context=self.context,
                                                                warmup=self.warmup))
        history["seconds"].append(time.perf_counter() - self._start)
        if self.log:
            validation = f", validation {history['validation_bpc'][-1]:.3f}" if history["validation_bpc"] else ""
            print(f"  {self.model.name} step {history['step'][-1]}: train {history['train_bpc'][-1]:.3f} bpc"
                  f"{validation} ({history['seconds'][-1]:.0f} s)", flush=True)


def train_char_model(model, train_ids, *, steps: int, batch_size: int = 32, sequence_length: int = 100,
                     learning_rate: float = 2e-3, global_clipnorm: float = 1.0, validation_ids=None,
                     eval_every: int | None = None, context: int = 100, warmup: int = 20, seed: int = 0,
                     run_eagerly: bool = False, log: bool = False) -> dict:
    """Train ``model`` (token ids -> logits) on the 1-D text ``train_ids`` for ``steps`` batches.

    Backpropagation through time over stateless windows of ``sequence_length`` characters
    (:class:`CharWindows`: truncated BPTT, the state reset at each window), the loss the mean
    next-character cross-entropy over every position of every window, Adam with
    ``learning_rate`` and gradient clipping by the global norm of all gradients together
    (``global_clipnorm``: Keras rescales the whole gradient when its norm exceeds it).

    Every ``eval_every`` steps (default: once, at the end) records the step, the training loss
    over those steps in bits per character and, with ``validation_ids``, held-out bits per
    character (:func:`bits_per_character` with ``context`` and ``warmup``).
    ``run_eagerly``: Keras' compile option (no traced training step: for a few steps of a tiny
    model, where tracing would take longer than the training). ``log``: print each evaluation.
    Returns ``{"step", "train_bpc", "validation_bpc", "seconds"}`` lists.
    """
    vocabulary_size = _vocabulary_size(model)
    train_ids = check_token_ids(train_ids, vocabulary_size, rank=1, name="train_ids")
    if validation_ids is not None:
        validation_ids = check_token_ids(validation_ids, vocabulary_size, rank=1, name="validation_ids")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int. Received: steps={steps!r}")
    eval_every = steps if eval_every is None else eval_every
    if not isinstance(eval_every, int) or eval_every < 1 or steps % eval_every:
        raise ValueError(f"eval_every must be a positive int that divides steps={steps}. Received: eval_every={eval_every!r}")
    if global_clipnorm is not None and global_clipnorm <= 0:
        raise ValueError(f"global_clipnorm must be None or > 0. Received: global_clipnorm={global_clipnorm!r}")
    data = CharWindows(train_ids, sequence_length, batch_size, batches=steps, seed=seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, global_clipnorm=global_clipnorm),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=run_eagerly)
    history = {"step": [], "train_bpc": [], "validation_bpc": [], "seconds": []}
    curve = _Curve(eval_every, validation_ids, context, warmup, history, log)
    model.fit(data, epochs=steps // eval_every, steps_per_epoch=eval_every, callbacks=[curve], verbose=0, shuffle=False)
    return history


def _description_path(path: Path) -> Path:
    return path.with_suffix("").with_suffix(".json")


def save_char_model(model, vocabulary: CharVocabulary, path) -> Path:
    """Save a zoo character model's weights to ``path`` (``.weights.h5``) and, beside it
    (``.json``, same name), its registered name, builder arguments and ``vocabulary``:
    ``zoo.load(name, weights=path)`` and :func:`load_char_model` rebuild it from them."""
    from zoo.architectures.char_rnn import describe

    path = Path(path)
    if not path.name.endswith(".weights.h5"):
        raise ValueError(f"path must end in .weights.h5. Received: {path}")
    if not isinstance(vocabulary, CharVocabulary):
        raise ValueError(f"vocabulary must be a CharVocabulary. Received: {type(vocabulary).__name__}")
    description = describe(model)
    if description["vocabulary_size"] != len(vocabulary):
        raise ValueError(f"the model predicts {description['vocabulary_size']} ids but the vocabulary has "
                         f"{len(vocabulary)}. Received: {vocabulary!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_weights(path)
    payload = {"model": description["model"], "arguments": description["arguments"], "vocabulary": vocabulary.to_json()}
    _description_path(path).write_text(json.dumps(payload, ensure_ascii=True, indent=1))
    return path


def load_char_model(path):
    """``(model, vocabulary)`` from a ``.weights.h5`` saved by :func:`save_char_model`."""
    import zoo
    from zoo.architectures.char_rnn import saved_description

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such weights file: {path}")
    saved = saved_description(path)
    return zoo.load(saved["model"], weights=str(path)), CharVocabulary.from_json(saved["vocabulary"])
