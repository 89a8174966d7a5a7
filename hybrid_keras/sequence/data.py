"""Training windows over a text: stateless windows of ``sequence_length`` characters, each with
the next character as the target of every position (targets = inputs shifted by one)."""

from __future__ import annotations

import numpy as np

import keras

from hybrid_keras.sequence.vocabulary import check_token_ids


def windows(token_ids, sequence_length: int, starts) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``ids[s : s + T]`` and targets ``ids[s + 1 : s + T + 1]`` for each start ``s``, as
    int32 ``[len(starts), T]`` arrays."""
    token_ids = check_token_ids(token_ids, rank=1)
    starts = np.asarray(starts, dtype=np.int64)
    if starts.size and (starts.min() < 0 or starts.max() + sequence_length + 1 > len(token_ids)):
        raise ValueError(f"starts must leave {sequence_length} + 1 characters in a text of {len(token_ids)}. "
                         f"Received: starts from {starts.min()} to {starts.max()}")
    index = starts[:, None] + np.arange(sequence_length + 1)[None, :]
    chunks = token_ids[index]
    return chunks[:, :-1], chunks[:, 1:]


class CharWindows(keras.utils.PyDataset):
    """Batches ``(inputs, targets)`` of int32 ``[batch_size, sequence_length]`` windows of a text,
    for ``model.fit`` on every backend (no tf.data).

    The windows are stateless: each starts from a zero recurrent state, so backpropagation
    through time is truncated to ``sequence_length`` steps. One pass over the text takes the
    windows starting at ``offset + k * sequence_length`` (``offset`` drawn per pass in
    ``[0, sequence_length)``, so passes cut the text at different places), in a shuffled
    order; batch ``i`` depends only on ``(seed, i)``. ``batches``: how many batches the
    dataset holds (default one pass; more runs further passes).
    """

    def __init__(self, token_ids, sequence_length: int, batch_size: int, *, batches: int | None = None, seed: int = 0,
                 **kwargs):
        super().__init__(**kwargs)
        self.token_ids = check_token_ids(token_ids, rank=1)
        for key, value in (("sequence_length", sequence_length), ("batch_size", batch_size)):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{key} must be a positive int. Received: {key}={value!r}")
        self.sequence_length, self.batch_size, self.seed = int(sequence_length), int(batch_size), int(seed)
        # Windows per pass: every offset in [0, T) leaves this many whole windows with their targets.
        self.windows_per_pass = (len(self.token_ids) - self.sequence_length) // self.sequence_length
        self.batches_per_pass = self.windows_per_pass // self.batch_size
        if self.batches_per_pass < 1:
            raise ValueError(f"token_ids of length {len(self.token_ids)} hold fewer than batch_size={batch_size} "
                             f"windows of sequence_length={sequence_length} (+1 for the targets)")
        self.batches = self.batches_per_pass if batches is None else int(batches)
        if self.batches < 1:
            raise ValueError(f"batches must be a positive int. Received: batches={batches!r}")
        self._pass, self._starts = None, None

    def __len__(self) -> int:
        return self.batches

    def pass_starts(self, number: int) -> np.ndarray:
        """The shuffled window starts of pass ``number``."""
        rng = np.random.default_rng([self.seed, number])
        offset = rng.integers(self.sequence_length)
        starts = offset + self.sequence_length * np.arange(self.windows_per_pass)
        return starts[rng.permutation(self.windows_per_pass)]

    def __getitem__(self, index: int):
        if not 0 <= index < self.batches:
            raise IndexError(f"batch index {index} out of range [0, {self.batches})")
        number, within = divmod(index, self.batches_per_pass)
        if number != self._pass:
            self._pass, self._starts = number, self.pass_starts(number)
        starts = self._starts[within * self.batch_size:(within + 1) * self.batch_size]
        return windows(self.token_ids, self.sequence_length, starts)
