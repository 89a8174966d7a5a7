"""Offline hard-negative mining: each example's nearest neighbours of another class.

In-batch mining only sees the negatives a random batch happens to hold; with many
classes the hard ones are rarely there. Here the whole training set is embedded, each
example's nearest other-class neighbours are found (exactly, or with a FANNG index, which
keeps this fast for large sets), and :class:`HardNegativeBatches` builds batches that put
every anchor beside a positive and its mined negatives, so the in-batch losses
(:class:`~hybrid_keras.metric_learning.TripletSemiHardLoss`, ...) see them.
:class:`HardNegativeMining` re-mines with the current model every few epochs.

``search="fanng"`` needs TensorFlow (the FANNG op); ``search="exact"`` is NumPy.
"""

from __future__ import annotations

import math

import keras
import numpy as np

SEARCHES = ("exact", "fanng")


def _check(embeddings, labels):
    embeddings = np.asarray(embeddings, np.float32)
    labels = np.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"embeddings must be [N, D] and labels [N]. Received: {embeddings.shape} and {labels.shape}")
    if not np.all(np.isfinite(embeddings)):
        raise ValueError("embeddings contain NaN or infinite values")
    return embeddings, labels


def _exact_other_class(embeddings, labels, k, chunk=1024):
    squares = np.einsum("ij,ij->i", embeddings, embeddings)
    found = np.full((len(labels), k), -1, np.int64)
    for start in range(0, len(labels), chunk):
        rows = slice(start, start + chunk)
        d = squares[rows, None] - 2.0 * embeddings[rows] @ embeddings.T + squares[None, :]
        d[labels[rows, None] == labels[None, :]] = np.inf
        take = min(k, d.shape[1])
        nearest = np.argpartition(d, take - 1, axis=1)[:, :take]
        order = np.argsort(np.take_along_axis(d, nearest, 1), axis=1, kind="stable")
        nearest = np.take_along_axis(nearest, order, 1)
        nearest[~np.isfinite(np.take_along_axis(d, nearest, 1))] = -1  # fewer than k other-class examples
        found[rows, :take] = nearest
    return found


def _fanng_other_class(embeddings, labels, k, ef):
    from hybrid_keras.fanng import FanngIndex

    index = FanngIndex(embeddings.shape[1], metric="l2", verbose=False)
    index.add(embeddings)
    index.build()
    n = len(labels)
    found = np.full((n, k), -1, np.int64)
    pending = np.arange(n)
    # Ask for more neighbours than k, since some are of the example's own class; ask again,
    # twice as many, for the examples that did not get k of another class.
    width = min(n, 2 * k + 8)
    while len(pending):
        ids, _ = index.search(embeddings[pending], k=width, ef=max(ef, width))
        other = (ids >= 0) & (labels[np.maximum(ids, 0)] != labels[pending, None])
        enough = (other.sum(1) >= k) | (width == n)
        for row in np.flatnonzero(enough):
            hits = ids[row][other[row]][:k]
            found[pending[row], :len(hits)] = hits
        pending = pending[~enough]
        width = min(n, 2 * width)
    return found


def nearest_other_class(embeddings, labels, k: int = 1, *, search: str = "exact", ef: int = 64) -> np.ndarray:
    """``[N, k]`` indices of each example's ``k`` nearest examples (squared Euclidean) of another
    class, nearest first; -1 where fewer than ``k`` exist. ``search="fanng"`` uses a FANNG
    index (approximate: ``ef`` trades speed for recall); ``"exact"`` compares all pairs."""
    embeddings, labels = _check(embeddings, labels)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer. Received: k={k!r}")
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}. Received: search={search!r}")
    if search == "fanng":
        return _fanng_other_class(embeddings, labels, k, ef)
    return _exact_other_class(embeddings, labels, k)


class HardNegativeBatches(keras.utils.PyDataset):
    """``(images, labels)`` batches built around mined hard negatives, for ``model.fit``.

    Each batch holds ``batch_size // (2 + negatives)`` anchors, each with a random example of
    its own class and its ``negatives`` nearest other-class examples (from the last
    :meth:`remine`); the rest of the batch is random examples. Until the first
    ``remine`` the negatives are random. Every example is an anchor once per epoch.
    """

    def __init__(self, images, labels, *, batch_size: int = 96, negatives: int = 1, search: str = "fanng",
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.images, self.labels = images, np.asarray(labels)
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if batch_size < 2 + negatives:
            raise ValueError(f"batch_size must hold an anchor, a positive and {negatives} negatives. "
                             f"Received: batch_size={batch_size}")
        self.batch_size, self.negatives, self.search = batch_size, negatives, search
        self.rng = np.random.default_rng(seed)
        self._by_class = {c: np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        self.mined = self.rng.integers(0, len(self.labels), (len(self.labels), negatives))
        self.remines = 0
        self._shuffle()

    @property
    def anchors_per_batch(self) -> int:
        return self.batch_size // (2 + self.negatives)

    def __len__(self):
        return math.ceil(len(self.labels) / self.anchors_per_batch)

    def _shuffle(self):
        self.order = self.rng.permutation(len(self.labels))

    def on_epoch_end(self):
        self._shuffle()

    def remine(self, embedding_model: keras.Model, batch_size: int = 256) -> None:
        """Embed every image with the current model and mine each one's nearest other-class examples."""
        embeddings = np.asarray(embedding_model.predict(self.images, batch_size=batch_size, verbose=0))
        mined = nearest_other_class(embeddings, self.labels, self.negatives, search=self.search)
        # An example with too few other-class examples keeps random ones in those slots.
        self.mined = np.where(mined >= 0, mined, self.rng.integers(0, len(self.labels), mined.shape))
        self.remines += 1

    def __getitem__(self, index):
        anchors = self.order[index * self.anchors_per_batch:(index + 1) * self.anchors_per_batch]
        positives = np.array([self.rng.choice(self._by_class[self.labels[a]]) for a in anchors], np.int64)
        rows = np.concatenate([anchors, positives, self.mined[anchors].reshape(-1)])
        fill = self.batch_size - len(rows)
        if fill > 0:
            rows = np.concatenate([rows, self.rng.integers(0, len(self.labels), fill)])
        return self.images[rows], self.labels[rows]


class HardNegativeMining(keras.callbacks.Callback):
    """Re-mines :class:`HardNegativeBatches` with the model being trained (which must output
    the embeddings) before the first epoch and then every ``every`` epochs."""

    def __init__(self, batches: HardNegativeBatches, every: int = 1):
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1. Received: every={every!r}")
        self.batches, self.every = batches, every

    def on_train_begin(self, logs=None):
        self.batches.remine(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self.batches.remine(self.model)
