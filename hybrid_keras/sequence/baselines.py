"""Count-based reference models for bits per character: character frequencies (unigram) and
n-grams with add-k smoothing, scored on the same positions as :func:`bits_per_character`."""

from __future__ import annotations

import math

import numpy as np

from hybrid_keras.sequence.vocabulary import check_token_ids


def _keys(token_ids: np.ndarray, order: int, vocabulary_size: int) -> np.ndarray:
    """For each j >= order - 1, ``x[j - order + 1 .. j]`` as one int64 (base ``vocabulary_size``)."""
    keys = np.zeros(len(token_ids) - order + 1, np.int64)
    for i in range(order):
        keys = keys * vocabulary_size + token_ids[i:len(token_ids) - order + 1 + i]
    return keys


def _counts(keys: np.ndarray, table_keys: np.ndarray, table_counts: np.ndarray) -> np.ndarray:
    position = np.clip(np.searchsorted(table_keys, keys), 0, max(len(table_keys) - 1, 0))
    found = table_keys[position] == keys if len(table_keys) else np.zeros(len(keys), bool)
    return np.where(found, table_counts[position] if len(table_keys) else 0, 0)


def ngram_bits_per_character(train_ids, test_ids, vocabulary_size: int, *, order: int, k: float = 1.0,
                             warmup: int = 20) -> float:
    """Bits per character of an order-``order`` character model with add-``k`` smoothing,
    counted on ``train_ids``, on every position ``j >= warmup`` of ``test_ids`` (the positions
    :func:`bits_per_character` scores):
    ``p(x_j | x_{j-n+1..j-1}) = (count(context, x_j) + k) / (count(context) + k V)``.
    ``order`` 1 is the unigram (character frequency) model."""
    if not isinstance(order, int) or order < 1:
        raise ValueError(f"order must be a positive int. Received: order={order!r}")
    if not k > 0:
        raise ValueError(f"k must be > 0 (add-k smoothing). Received: k={k!r}")
    if vocabulary_size ** order >= 2 ** 62:
        raise ValueError(f"order={order} is too large for vocabulary_size={vocabulary_size} (keys overflow int64)")
    if not isinstance(warmup, int) or warmup < order - 1:
        raise ValueError(f"warmup must be an int >= order - 1 = {order - 1}. Received: warmup={warmup!r}")
    train_ids = check_token_ids(train_ids, vocabulary_size, rank=1, name="train_ids")
    test_ids = check_token_ids(test_ids, vocabulary_size, rank=1, name="test_ids")
    if len(test_ids) <= warmup:
        raise ValueError(f"test_ids must be longer than warmup={warmup}. Received: {len(test_ids)} characters")
    joint_keys, joint_counts = np.unique(_keys(train_ids, order, vocabulary_size), return_counts=True)
    test_joint = _keys(test_ids, order, vocabulary_size)[warmup - order + 1:]
    joint = _counts(test_joint, joint_keys, joint_counts)
    if order == 1:
        context = np.full(len(test_joint), len(train_ids))
    else:
        # A context's count: its occurrences followed by any character, so the probabilities sum to one.
        context_keys = np.unique(joint_keys // vocabulary_size)
        context_counts = np.zeros(len(context_keys), np.int64)
        np.add.at(context_counts, np.searchsorted(context_keys, joint_keys // vocabulary_size), joint_counts)
        context = _counts(test_joint // vocabulary_size, context_keys, context_counts)
    probabilities = (joint + k) / (context + k * vocabulary_size)
    return float(-np.mean(np.log(probabilities)) / math.log(2.0))
