"""Cross-entropy for pretext classification tasks, masked and class-rebalanced variants."""
from __future__ import annotations

import tensorflow as tf


def cross_entropy(labels, logits, mask=None):
    """(mean softmax cross-entropy, top-1 accuracy) over the examples where ``mask`` is 1."""
    labels = tf.cast(labels, tf.int64)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1), labels), logits.dtype)
    if mask is None:
        return tf.reduce_mean(per_example), tf.reduce_mean(correct)
    mask = tf.cast(mask, logits.dtype)
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    return tf.reduce_sum(per_example * mask) / count, tf.reduce_sum(correct * mask) / count


def rebalancing_weights(prior, centres, lam: float = 0.5, sigma: float = 5.0):
    """Zhang et al. (2016) eq. 4: w ∝ ((1 - λ) p̃ + λ / Q)^-1 with E_p̃[w] = 1, where p̃ is the
    empirical bin distribution ``prior`` [Q] smoothed by a Gaussian of width ``sigma`` in ab space
    (bin ``centres`` [Q, 2])."""
    prior = tf.convert_to_tensor(prior, tf.float32)
    prior = prior / tf.maximum(tf.reduce_sum(prior), 1e-12)
    c = tf.convert_to_tensor(centres, tf.float32)
    sq = tf.reduce_sum(tf.square(c[:, None] - c[None]), -1)
    kernel = tf.exp(-sq / (2.0 * sigma ** 2))
    smooth = tf.linalg.matvec(kernel / tf.reduce_sum(kernel, 0, keepdims=True), prior)
    q = tf.cast(tf.shape(prior)[0], tf.float32)
    w = 1.0 / ((1.0 - lam) * smooth + lam / q)
    return w / tf.reduce_sum(smooth * w)


def rebalanced_cross_entropy(labels, logits, weights):
    """Zhang et al. (2016) eq. 2 with one-hot targets: mean_i w[y_i] · CE(y_i, logits_i)."""
    labels = tf.cast(labels, tf.int64)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    return tf.reduce_mean(tf.gather(weights, labels) * per_example)
