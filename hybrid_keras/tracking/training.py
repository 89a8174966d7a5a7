"""Training pairs for the SINT matching network, drawn from sequences with ground truth.

A SINT tracker compares the target as seen in the first frame with candidate boxes in any
later frame, so a training example is two frames of one sequence: the target's box in the
first (the query) and, in the second, a previous-box estimate (the truth jittered, as a
tracker's last answer is slightly off, which sets the search window) with ``candidates``
boxes labelled 1 (overlap with the truth >= 0.7) or 0 (<= 0.5), the thresholds of the
paper. Negatives are mostly hard ones: shifted by up to about one box size (most by less
than half: near misses are what a tracker drifts to), or the right place at the wrong size;
the rest are anywhere in the window.
"""

from __future__ import annotations

import math

import numpy as np

import keras

from hybrid_keras.callbacks import TimeBudget
from hybrid_keras.tracking.metrics import box_iou

POSITIVE_IOU, NEGATIVE_IOU = 0.7, 0.5


def _iou_with(boxes: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return box_iou(boxes, np.broadcast_to(truth, boxes.shape))


def _sample(truth, count, draw, accept, rounds: int = 50):
    """``count`` boxes from ``draw(n)`` whose overlap with ``truth`` passes ``accept``."""
    found = []
    for _ in range(rounds):
        if sum(len(f) for f in found) >= count:
            return np.concatenate(found)[:count]
        boxes = draw(4 * count)
        boxes = boxes[(boxes[:, 2] > 1) & (boxes[:, 3] > 1)]
        found.append(boxes[accept(_iou_with(boxes, truth))])
    raise ValueError(f"could not draw {count} candidate boxes of the wanted overlap around {np.round(truth, 1).tolist()} "
                     f"in {rounds} rounds; bring positive_iou and negative_iou nearer 0.5")


def _around(truth, n, shift, log_scale):
    """``n`` boxes around ``truth``: centre moved by ``shift`` (sizes, an [n, 2] array), size scaled by exp(log_scale)."""
    x, y, w, h = truth
    scale = np.exp(log_scale)
    cx, cy = x + w / 2 + shift[:, 0] * w, y + h / 2 + shift[:, 1] * h
    return np.stack([cx - w * scale / 2, cy - h * scale / 2, w * scale, h * scale], axis=1)


def sample_candidates(rng, truth, candidates: int = 32, positive_fraction: float = 0.25,
                      positive_iou: float = POSITIVE_IOU, negative_iou: float = NEGATIVE_IOU):
    """Candidate boxes ``[candidates, 4]`` around ``truth`` and their labels (1 = the target):
    positives overlap it by at least ``positive_iou``, negatives by at most ``negative_iou``."""
    positives = max(1, int(round(candidates * positive_fraction)))
    negatives = candidates - positives
    hard, rescaled = negatives // 2, negatives // 4
    anywhere = negatives - hard - rescaled
    pos = _sample(truth, positives, lambda n: _around(truth, n, rng.normal(0, 0.08, (n, 2)),
                                                      rng.normal(0, 0.06, n)), lambda iou: iou >= positive_iou)

    def shifted(n):  # near misses first: what a tracker drifts to
        angle, radius = rng.uniform(0, 2 * np.pi, n), rng.uniform(0.1, 1.2, n) ** 1.5
        return _around(truth, n, np.stack([np.cos(angle), np.sin(angle)], 1) * radius[:, None],
                       rng.normal(0, 0.15, n))

    def resized(n):
        return _around(truth, n, rng.normal(0, 0.05, (n, 2)),
                       rng.choice([-1, 1], n) * rng.uniform(np.log(1.15), np.log(2.2), n))

    def spread(n):
        return _around(truth, n, rng.uniform(-1.5, 1.5, (n, 2)), rng.normal(0, 0.3, n))

    negative = lambda iou: iou <= negative_iou  # noqa: E731
    boxes = np.concatenate([pos, _sample(truth, hard, shifted, negative),
                            _sample(truth, rescaled, resized, negative),
                            _sample(truth, anywhere, spread, negative)])
    labels = np.concatenate([np.ones(positives), np.zeros(negatives)])
    order = rng.permutation(candidates)
    return boxes[order].astype(np.float32), labels[order].astype(np.float32)


class PairBatches(keras.utils.PyDataset):
    """Batches of SINT training pairs from ``sequences`` (equal frame sizes) for
    :func:`hybrid_keras.tracking.sint.pair_model`: inputs ``(first_frames, target_boxes, frames,
    previous_boxes, candidates)``, labels ``[B, candidates]``.

    ``pairs``: examples per epoch. ``previous_jitter``: the spread of the previous-box
    estimate, in box sizes. Each epoch draws new pairs from ``seed`` and the epoch number,
    so runs are reproducible.
    """

    def __init__(self, sequences, *, batch_size: int = 16, pairs: int = 1024, candidates: int = 32,
                 positive_iou: float = POSITIVE_IOU, negative_iou: float = NEGATIVE_IOU, previous_jitter: float = 0.15,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not sequences:
            raise ValueError("PairBatches needs at least one sequence")
        sizes = {tuple(s.frames.shape[1:]) for s in sequences}
        if len(sizes) != 1:
            raise ValueError(f"all sequences must have one frame size to batch together. Received: {sorted(sizes)}")
        if any(len(s.frames) < 2 for s in sequences):
            raise ValueError("every training sequence needs at least two frames")
        self.sequences, self.batch_size, self.pairs = list(sequences), int(batch_size), int(pairs)
        if not 0.0 <= negative_iou < positive_iou <= 1.0:
            raise ValueError(f"need 0 <= negative_iou < positive_iou <= 1. Received: {negative_iou}, {positive_iou}")
        self.candidates, self.previous_jitter, self.seed = int(candidates), float(previous_jitter), int(seed)
        self.positive_iou, self.negative_iou = float(positive_iou), float(negative_iou)
        self.epoch = 0

    def __len__(self):
        return math.ceil(self.pairs / self.batch_size)

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        count = min(self.batch_size, self.pairs - index * self.batch_size)
        first, targets, frames, previous, candidates, labels = [], [], [], [], [], []
        for _ in range(count):
            sequence = self.sequences[rng.integers(len(self.sequences))]
            a, b = rng.choice(len(sequence.frames), 2, replace=False)
            truth = sequence.boxes[b]
            first.append(sequence.frames[a])
            targets.append(sequence.boxes[a])
            frames.append(sequence.frames[b])
            size = np.sqrt(truth[2] * truth[3])
            shift = rng.normal(0, self.previous_jitter, 2) * size
            previous.append([truth[0] + shift[0], truth[1] + shift[1], truth[2], truth[3]])
            boxes, box_labels = sample_candidates(rng, truth, self.candidates, positive_iou=self.positive_iou,
                                                  negative_iou=self.negative_iou)
            candidates.append(boxes)
            labels.append(box_labels)
        inputs = (np.stack(first).astype(np.float32), np.asarray(targets, np.float32),
                  np.stack(frames).astype(np.float32), np.asarray(previous, np.float32), np.stack(candidates))
        return inputs, np.stack(labels)


def train_matching_network(step, sequences, *, seconds: float | None = None, epochs: int | None = None,
                           pairs_per_epoch: int = 1024, batch_size: int = 16, candidates: int = 32,
                           positive_iou: float = POSITIVE_IOU,
                           negative_iou: float = NEGATIVE_IOU, margin: float = 1.0, learning_rate: float = 1e-3,
                           batch_norm_momentum: float | None = 0.9, seed: int = 0, verbose: int = 0):
    """Train ``step``'s SINT network on pairs from ``sequences`` with the contrastive loss.

    ``seconds``: stop after this long; ``epochs``: after this many epochs of
    ``pairs_per_epoch`` pairs (default: 1 without ``seconds``, none with it). ``margin``: on
    squared distances of unit embeddings (which lie in [0, 4]). ``batch_norm_momentum``: the
    zoo backbones keep batch-norm statistics with momentum 0.999 (ImageNet's long training);
    over a few hundred steps those averages would stay near their initial values and the
    tracker, which runs in inference mode, would see other features than training did, so
    training uses a shorter memory (None keeps the backbone's). Returns the Keras History.
    """
    from hybrid_keras.metric_learning import ContrastiveLoss
    from hybrid_keras.tracking.sint import pair_model

    if batch_norm_momentum is not None:
        for layer in step.network.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(batch_norm_momentum)
    model = pair_model(step, candidates=candidates)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=ContrastiveLoss(margin))
    data = PairBatches(sequences, batch_size=batch_size, pairs=pairs_per_epoch, candidates=candidates,
                       positive_iou=positive_iou, negative_iou=negative_iou, seed=seed)
    callbacks = [TimeBudget(seconds)] if seconds is not None else []
    if epochs is None:
        epochs = 1 if seconds is None else 1_000_000  # the time budget ends it
    return model.fit(data, epochs=epochs, callbacks=callbacks, verbose=verbose)
