"""Metric-learning losses as Keras losses in ``keras.ops`` (every backend).

- :class:`ContrastiveLoss`: SINT's marginal contrastive loss on pairs (Tao, Gavves &
  Smeulders, CVPR 2016), ``L = 1/2 y d^2 + 1/2 (1 - y) max(0, margin - d^2)`` with ``d`` the
  Euclidean distance between the two embeddings of a pair and ``y = 1`` for a matching pair.
- :class:`TripletSemiHardLoss`: FaceNet's triplet loss with in-batch semi-hard mining, the
  rule of the deprecated ``tfa.losses.TripletSemiHardLoss``: for every anchor-positive pair
  in the batch, the negative is the closest one *farther* than the positive; where there is
  none, the farthest negative. The loss averages ``max(d_ap - d_an + margin, 0)`` over all
  anchor-positive pairs.
- :class:`TripletHardLoss`: batch-hard mining (Hermans, Beyer & Leibe 2017), as
  ``tfa.losses.TripletHardLoss``: per anchor, the farthest positive and the closest negative.

The triplet losses take integer class labels as ``y_true`` and embeddings ``[batch, D]`` as
``y_pred``, so an embedding model trains with ``model.fit(images, labels)``. Their pairwise
distances are ``distance="l2"`` (Euclidean, TFA's default), ``"squared_l2"`` or
``"cosine"`` (1 - cosine similarity, TFA's "angular").
"""

from __future__ import annotations

import keras
from keras import ops

DISTANCES = ("l2", "squared_l2", "cosine")


def pairwise_distances(embeddings, distance: str = "l2"):
    """``[B, B]`` distances between the rows of ``embeddings`` [B, D].

    Squared Euclidean distances come from the Gram matrix, clamped at 0 against rounding;
    the Euclidean distance's gradient at 0 (a row with itself) is taken as 0, not NaN.
    """
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {DISTANCES}. Received: distance={distance!r}")
    x = ops.cast(embeddings, "float32")
    if distance == "cosine":
        unit = x / ops.maximum(ops.norm(x, axis=1, keepdims=True), 1e-12)
        return 1.0 - ops.matmul(unit, ops.transpose(unit))
    squares = ops.sum(ops.square(x), axis=1)
    squared = ops.maximum(ops.expand_dims(squares, 1) - 2.0 * ops.matmul(x, ops.transpose(x))
                          + ops.expand_dims(squares, 0), 0.0)
    # The diagonal is exactly 0 however the rounding went.
    squared = squared * (1.0 - ops.eye(ops.shape(x)[0], dtype=squared.dtype))
    if distance == "squared_l2":
        return squared
    positive = ops.greater(squared, 0.0)
    return ops.where(positive, ops.sqrt(ops.where(positive, squared, 1.0)), 0.0)


def _label_masks(labels):
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    same = ops.equal(ops.expand_dims(labels, 1), ops.expand_dims(labels, 0))
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(labels)[0]), "bool"))
    return ops.logical_and(same, not_self), ops.logical_not(same)


def _check_margin(margin):
    margin = float(margin)
    if not margin >= 0.0:
        raise ValueError(f"margin must be >= 0. Received: margin={margin!r}")
    return margin


@keras.saving.register_keras_serializable(package="hybrid_keras")
class ContrastiveLoss(keras.losses.Loss):
    """SINT's contrastive loss. ``y_true``: 1 for a matching pair, 0 otherwise; ``y_pred``: the
    pair's squared Euclidean distance ``d^2`` (what :class:`hybrid_keras.metric_learning.PairDistance`
    outputs), shape ``[batch]`` or ``[batch, 1]``, or ``[batch, K]`` for K pairs per example
    (a target against K candidate boxes); sample weights of that shape weigh each pair.
    ``margin`` is on ``d^2``, as in the paper."""

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.margin = _check_margin(margin)

    def call(self, y_true, y_pred):
        squared = ops.cast(y_pred, "float32")
        if len(squared.shape) == 2 and squared.shape[1] == 1:
            squared = squared[:, 0]
        match = ops.reshape(ops.cast(y_true, "float32"), ops.shape(squared))
        return 0.5 * match * squared + 0.5 * (1.0 - match) * ops.maximum(self.margin - squared, 0.0)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


class _TripletLoss(keras.losses.Loss):
    def __init__(self, margin: float, distance: str, name: str, **kwargs):
        # The loss is one number per batch (it mines across the batch), not per sample.
        kwargs.setdefault("reduction", "sum")
        super().__init__(name=name, **kwargs)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}. Received: distance={distance!r}")
        self.margin, self.distance = _check_margin(margin), distance

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "distance": self.distance}


@keras.saving.register_keras_serializable(package="hybrid_keras")
class TripletSemiHardLoss(_TripletLoss):
    """Triplet loss with in-batch semi-hard negatives (see the module docstring).
    ``y_true``: integer labels ``[batch]``; ``y_pred``: embeddings ``[batch, D]``. Pairs
    whose anchor has no negative in the batch are left out; a batch with no triplet gives 0."""

    def __init__(self, margin: float = 1.0, distance: str = "l2", name: str = "triplet_semihard_loss", **kwargs):
        super().__init__(margin, distance, name, **kwargs)

    def call(self, y_true, y_pred):
        d = pairwise_distances(y_pred, self.distance)
        positive, negative = _label_masks(y_true)
        negative_f = ops.cast(negative, d.dtype)
        d_ap = ops.expand_dims(d, 2)  # [anchor, positive, 1]
        d_an = ops.expand_dims(d, 1)  # [anchor, 1, negative]
        semi_hard = ops.logical_and(ops.expand_dims(negative, 1), ops.greater(d_an, d_ap))  # [a, p, n]
        big = ops.max(d) + 1.0
        closest_farther = ops.min(ops.where(semi_hard, d_an, big), axis=2)  # [a, p]
        farthest = ops.max(d * negative_f - (1.0 - negative_f), axis=1, keepdims=True)  # [a, 1]
        chosen = ops.where(ops.any(semi_hard, axis=2), closest_farther, farthest)
        # A pair whose anchor has no negative in the batch forms no triplet.
        positive_f = ops.cast(ops.logical_and(positive, ops.any(negative, axis=1, keepdims=True)), d.dtype)
        losses = ops.maximum(d - chosen + self.margin, 0.0) * positive_f
        return ops.sum(losses) / ops.maximum(ops.sum(positive_f), 1.0)


@keras.saving.register_keras_serializable(package="hybrid_keras")
class TripletHardLoss(_TripletLoss):
    """Batch-hard triplet loss: per anchor, ``max(d(a, farthest positive) - d(a, closest
    negative) + margin, 0)``, or ``softplus`` of the difference with ``soft=True``; averaged
    over the anchors that have both a positive and a negative in the batch."""

    def __init__(self, margin: float = 1.0, distance: str = "l2", soft: bool = False,
                 name: str = "triplet_hard_loss", **kwargs):
        super().__init__(margin, distance, name, **kwargs)
        self.soft = bool(soft)

    def call(self, y_true, y_pred):
        d = pairwise_distances(y_pred, self.distance)
        positive, negative = _label_masks(y_true)
        positive_f, negative_f = ops.cast(positive, d.dtype), ops.cast(negative, d.dtype)
        hardest_positive = ops.max(d * positive_f, axis=1)
        hardest_negative = ops.min(ops.where(negative, d, ops.max(d) + 1.0), axis=1)
        gap = hardest_positive - hardest_negative
        losses = ops.softplus(gap) if self.soft else ops.maximum(gap + self.margin, 0.0)
        valid = ops.cast(ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1)), d.dtype)
        return ops.sum(losses * valid) / ops.maximum(ops.sum(valid), 1.0)

    def get_config(self):
        return {**super().get_config(), "soft": self.soft}
