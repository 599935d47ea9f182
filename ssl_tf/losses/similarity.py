"""Negative-free similarity losses (BYOL, SimSiam) as pure functions of tensors."""
from __future__ import annotations

import tensorflow as tf


def normalized_mse(p, z):
    """BYOL's regression loss (Grill et al. 2020, eq. 2), mean over the batch:
    ||p/||p|| - z/||z||||² = 2 - 2·cos(p, z). ``z`` is the target projection (no gradient
    flows into it: the caller passes ``stop_gradient`` or a target-network output)."""
    p, z = tf.math.l2_normalize(p, -1), tf.math.l2_normalize(tf.stop_gradient(z), -1)
    return tf.reduce_mean(2.0 - 2.0 * tf.reduce_sum(p * z, -1))


def byol_loss(p1, p2, z1_target, z2_target):
    """The symmetrised BYOL loss L + L~: view 1's prediction regresses view 2's target projection
    and vice versa."""
    return normalized_mse(p1, z2_target) + normalized_mse(p2, z1_target)


def negative_cosine(p, z):
    """SimSiam's D(p, z) = -cos(p, stopgrad(z)) (Chen & He 2021, eq. 1-3), mean over the batch."""
    p, z = tf.math.l2_normalize(p, -1), tf.math.l2_normalize(tf.stop_gradient(z), -1)
    return -tf.reduce_mean(tf.reduce_sum(p * z, -1))


def simsiam_loss(p1, p2, z1, z2):
    """L = D(p1, z2)/2 + D(p2, z1)/2, with the stop-gradient on z (eq. 4)."""
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)
