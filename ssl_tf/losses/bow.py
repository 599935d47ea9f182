"""Bag-of-visual-words targets and their prediction loss (OBoW: Gidaris et al. 2021, §3.1–3.2).

A teacher's local feature map is quantised against a vocabulary of K visual words; the image's
target is the distribution of words over its locations, which a student predicts from a
perturbed view.
"""
from __future__ import annotations

import tensorflow as tf


def word_distances(features, words):
    """Squared Euclidean distances ||f − w||² = ||f||² + ||w||² − 2 f·w between every local feature
    ``features`` [b, n, c] and every word ``words`` [K, c]: [b, n, K]."""
    f2 = tf.reduce_sum(tf.square(features), -1, keepdims=True)
    w2 = tf.reduce_sum(tf.square(words), -1)
    return tf.maximum(f2 + w2 - 2.0 * tf.einsum("bnc,kc->bnk", features, words), 0.0)


def soft_bow(distances, inv_delta: float, mean_min_distance):
    """OBoW §3.1's soft assignment and bag of words. Each location's codes are
    softmax_k(−d_k / δ) with δ = μ / inv_delta, μ the running mean of the distance to the nearest
    word (so the softness follows the scale of the distances); the image's bag is the maximum of
    each word's code over the locations, L1-normalised: [b, K] from ``distances`` [b, n, K]."""
    codes = tf.nn.softmax(-distances * (inv_delta / mean_min_distance), axis=-1)
    bag = tf.reduce_max(codes, axis=1)
    return bag / tf.maximum(tf.reduce_sum(bag, -1, keepdims=True), 1e-12)


def bow_prediction_loss(targets, logits):
    """The student's loss (OBoW §3.2): the cross-entropy −Σ_k t_k log softmax(z)_k between the
    teacher's bag of words ``targets`` [b, K] and the student's scores ``logits`` [b, K], averaged
    over the batch (the KL divergence the paper minimises, up to the targets' constant entropy)."""
    return -tf.reduce_mean(tf.reduce_sum(tf.stop_gradient(targets) * tf.nn.log_softmax(logits, -1), -1))


def local_average_pick(feature_map, where, kernel: int = 3):
    """OBoW's vocabulary update (§3.1): the map ``feature_map`` [b, h, w, c] averaged over
    ``kernel`` × ``kernel`` windows (stride 1, no padding), then one window per image, ``where`` [b]
    (index into the pooled map's locations, row-major): [b, c]."""
    pooled = tf.nn.avg_pool2d(feature_map, kernel, 1, "VALID") if kernel > 1 else feature_map
    flat = tf.reshape(pooled, [tf.shape(pooled)[0], -1, pooled.shape[-1]])
    return tf.gather(flat, where, axis=1, batch_dims=1)
