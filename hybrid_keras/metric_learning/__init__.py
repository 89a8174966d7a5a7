"""Metric learning: embeddings whose nearest neighbours share a class.

Losses (every backend): SINT's contrastive loss on pairs, triplet losses with in-batch
semi-hard or hard mining (the rules of the deprecated ``tfa.losses`` ones). Models: an
embedding network on any zoo backbone, and the Siamese pair model. Mining: each example's
nearest other-class neighbours, exactly or with the FANNG index, fed back as batches.
Classify with the embeddings through :class:`hybrid_keras.fanng.KNNClassifier`.
"""

from hybrid_keras.metric_learning.losses import (
    ContrastiveLoss,
    TripletHardLoss,
    TripletSemiHardLoss,
    pairwise_distances,
)
from hybrid_keras.metric_learning.mining import HardNegativeBatches, HardNegativeMining, nearest_other_class
from hybrid_keras.metric_learning.models import PairDistance, embedding_model, siamese

__all__ = ["ContrastiveLoss", "HardNegativeBatches", "HardNegativeMining", "PairDistance", "TripletHardLoss",
           "TripletSemiHardLoss", "embedding_model", "nearest_other_class", "pairwise_distances", "siamese"]
