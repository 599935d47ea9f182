"""Semi-supervised losses: SimCLRv2 distillation, FixMatch's thresholded pseudo-labels,
MixMatch's sharpening, MixUp and its two loss terms."""
from __future__ import annotations

import tensorflow as tf


def distillation_loss(teacher_logits, student_logits, temperature: float = 1.0):
    """SimCLRv2 (Chen et al. 2020b, eq. 2): mean over examples of
    −Σ_y P_T(y|x; τ) log P_S(y|x; τ), with P(y|x; τ) = softmax(logits / τ) and the teacher's
    distribution held fixed (no gradient)."""
    target = tf.stop_gradient(tf.nn.softmax(teacher_logits / temperature, -1))
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(target, student_logits / temperature))


def fixmatch_unlabelled_loss(weak_logits, strong_logits, threshold: float = 0.95):
    """FixMatch (Sohn et al. 2020, eq. 4): (1/μB) Σ_b 1[max q_b ≥ τ] · H(argmax q_b, p(y|strong_b)),
    q_b = softmax(weak logits) with no gradient. Returns (loss, mask [μB] float)."""
    q = tf.stop_gradient(tf.nn.softmax(weak_logits, -1))
    mask = tf.cast(tf.reduce_max(q, -1) >= threshold, strong_logits.dtype)
    pseudo = tf.argmax(q, -1)
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(pseudo, strong_logits)
    return tf.reduce_mean(per_example * mask), mask


def sharpen(p, temperature: float = 0.5):
    """MixMatch (Berthelot et al. 2019, eq. 7): p_i^{1/T} / Σ_j p_j^{1/T}."""
    powered = tf.pow(p, 1.0 / temperature)
    return powered / tf.reduce_sum(powered, -1, keepdims=True)


def mixup_lambda(seed, n, alpha: float = 0.75):
    """MixMatch's MixUp weights: λ ~ Beta(α, α), λ' = max(λ, 1 − λ) (eq. 8-9), one per example [n]
    (Beta as G1 / (G1 + G2) of two stateless Gamma(α) draws)."""
    g = tf.random.stateless_gamma([2, n], seed, alpha)
    lam = g[0] / (g[0] + g[1])
    return tf.maximum(lam, 1.0 - lam)


def mixup(x1, p1, x2, p2, lam):
    """MixUp (Zhang et al. 2018; MixMatch eq. 10-11): (λx1 + (1−λ)x2, λp1 + (1−λ)p2), λ per example."""
    lx = tf.reshape(lam, [-1] + [1] * (len(x1.shape) - 1))
    lp = tf.reshape(lam, [-1, 1])
    return lx * x1 + (1.0 - lx) * x2, lp * p1 + (1.0 - lp) * p2


def mixmatch_losses(labelled_targets, labelled_logits, unlabelled_targets, unlabelled_logits):
    """MixMatch eq. 3-5: L_X = mean cross-entropy of the mixed labelled targets; L_U = mean squared
    L2 distance between the mixed guessed targets and the predicted probabilities, divided by the
    number of classes L. Returns (L_X, L_U)."""
    lx = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labelled_targets, labelled_logits))
    num_classes = tf.cast(tf.shape(unlabelled_targets)[-1], unlabelled_logits.dtype)
    lu = tf.reduce_mean(tf.reduce_sum(tf.square(unlabelled_targets - tf.nn.softmax(unlabelled_logits, -1)), -1))
    return lx, lu / num_classes
