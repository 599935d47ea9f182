"""Triplet loss with semi-hard negative mining (Schroff et al. 2015, FaceNet).

For every anchor a and positive p (same label, a != p) with distance d_ap, the negative is
the *semi-hard* one: the closest n of another label that is still farther than p,

    n* = argmin { d_an : y_n != y_a, d_an > d_ap },

or, when no negative is farther than p, the farthest negative. The loss is the mean over
all anchor-positive pairs of  max(d_ap - d_an* + margin, 0).  Distances are squared
Euclidean, as in the TF-contrib ``triplet_semihard_loss`` that the revisiting code used
(tensorflow-addons' default is the non-squared distance; pass ``squared=False`` for it).
Cost O(B² log B): negatives are sorted once per anchor and searched per positive.
"""
from __future__ import annotations

import tensorflow as tf


def pairwise_distances(x, squared: bool = True):
    sq = tf.reduce_sum(tf.square(x), -1)
    d = tf.maximum(sq[:, None] + sq[None, :] - 2.0 * tf.matmul(x, x, transpose_b=True), 0.0)
    d = tf.linalg.set_diag(d, tf.zeros_like(sq))
    return d if squared else tf.sqrt(d + 1e-16) * tf.cast(d > 0, d.dtype)


def triplet_semihard_loss(labels, embeddings, margin: float = 1.0, squared: bool = True):
    """``labels`` [B] int, ``embeddings`` [B, D] -> scalar loss (0 when there is no positive pair)."""
    labels = tf.reshape(labels, [-1])
    d = pairwise_distances(embeddings, squared)
    same = tf.equal(labels[:, None], labels[None, :])
    b = tf.shape(labels)[0]
    positive = tf.logical_and(same, tf.logical_not(tf.eye(b, dtype=tf.bool)))
    big = tf.reduce_max(d) + 1.0
    neg_sorted = tf.sort(tf.where(same, big, d), axis=-1)           # [B, B]: negatives first, ascending
    num_neg = tf.reduce_sum(tf.cast(tf.logical_not(same), tf.int32), -1)
    # First negative strictly farther than each positive: searchsorted per anchor row.
    idx = tf.searchsorted(neg_sorted, d, side="right")               # [B(anchor), B(candidate positive)]
    semi_hard = tf.gather(neg_sorted, tf.minimum(idx, b - 1), batch_dims=1)
    farthest = tf.gather(neg_sorted, tf.maximum(num_neg - 1, 0), batch_dims=1)[:, None]
    d_an = tf.where(idx < num_neg[:, None], semi_hard, farthest)
    mask = tf.cast(tf.logical_and(positive, (num_neg > 0)[:, None]), d.dtype)
    per_pair = tf.maximum(d - d_an + margin, 0.0) * mask
    return tf.math.divide_no_nan(tf.reduce_sum(per_pair), tf.reduce_sum(mask))
