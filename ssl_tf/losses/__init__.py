"""Losses: pure functions of tensors, each with its formula and paper in the docstring."""
from ssl_tf.losses.classification import cross_entropy, rebalanced_cross_entropy, rebalancing_weights  # noqa: F401
from ssl_tf.losses.contrastive import ContrastiveOutput, nt_xent  # noqa: F401
from ssl_tf.losses.triplet import pairwise_distances, triplet_semihard_loss  # noqa: F401
