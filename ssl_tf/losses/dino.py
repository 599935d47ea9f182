"""DINO's self-distillation loss and centre update (Caron et al. 2021, Alg. 1)."""
from __future__ import annotations

import tensorflow as tf


def dino_loss(student, kernel, teacher, center, student_temperature: float, teacher_temperature,
              matmul_dtype: str = "float32"):
    """Cross-entropy between the teacher's centred, sharpened distribution of each global view and
    the student's distribution of every *other* view.

    ``student``: list of [b, d] L2-normalised bottleneck features, the 2 global views first, then
    the local ones; ``kernel``: [d, K], the head's (weight-normalised) last layer, so the
    student's logits are ``s = student[v] @ kernel`` (the product runs in ``matmul_dtype``);
    ``teacher``: list of [b, K] float32 logits of the global views; ``center``: [K].
        P_t = softmax((t - c) / T_t) (no gradient),  log P_s = log_softmax(s / T_s)
        L = mean over pairs (t_i, s_v), v != i, of mean_b [ -sum_K P_t log P_s ].
    """
    targets = [tf.stop_gradient(tf.nn.softmax((t - center) / teacher_temperature, -1)) for t in teacher]
    # Σ over pairs (i, v), v ≠ i, of P_t,i · log P_s,v = Σ_v (Σ_{i ≠ v} P_t,i) · log P_s,v: one product
    # per student view instead of one per pair (8 instead of 14 [b, K] products at 2 + 6 crops).
    total_target = tf.add_n(targets)
    views, weights, counts = [], [], []
    for v, s in enumerate(student):
        others = [t for i, t in enumerate(targets) if i != v]
        if others:
            views.append(s)
            weights.append(total_target if len(others) == len(targets) else tf.add_n(others))
            counts.append(len(others))
    return linear_soft_cross_entropy(views, kernel, weights, counts, student_temperature, matmul_dtype) / sum(counts)


def linear_soft_cross_entropy(features, kernel, weights, counts, temperature: float, matmul_dtype: str = "float32"):
    """Σ_v mean_b [ -Σ_K w_v · log softmax(features_v @ kernel / T) ] for [b, K] weights w_v ≥ 0
    whose rows sum to ``counts[v]`` (a sum of that many distributions); softmax math in float32.

    Fused with the linear layer: each view's [b, K] logits live only while that view is processed
    — one view at a time — because the gradients are formed in the same pass, with
    g = (n · softmax(s / T) − w) / (T · b):  d/dfeatures_v = g · kernelᵀ,  d/dkernel = Σ_v featuresᵀ_v · g.
    Nothing of size K per example is kept for the backward pass (at 2 + 6 crops, batch 256,
    K = 65536 that was 2,048 × 65,536 logits plus their softmax and gradient)."""
    weights = [tf.stop_gradient(tf.cast(w, tf.float32)) for w in weights]
    features = [tf.convert_to_tensor(x) for x in features]

    @tf.custom_gradient
    def fused(kernel, *features):
        k = tf.cast(kernel, matmul_dtype)
        loss = tf.constant(0.0)
        d_kernel = tf.zeros_like(kernel, tf.float32)
        d_features = []
        for x, w, n in zip(features, weights, counts):
            with tf.control_dependencies([d_kernel]):   # the views in sequence: one [b, K] at a time
                xm = tf.cast(x, matmul_dtype)
                z = tf.cast(tf.matmul(xm, k), tf.float32) / temperature
            lse = tf.reduce_logsumexp(z, -1, keepdims=True)
            loss += tf.reduce_mean(n * lse[:, 0] - tf.reduce_sum(w * z, -1))
            # n·softmax − w lies in [−n, n]: cast to the product's type before the 1 / (T·b) factor,
            # which is applied to the float32 products
            g = tf.cast(n * tf.exp(z - lse) - w, matmul_dtype)
            unscale = 1.0 / (temperature * tf.cast(tf.shape(x)[0], tf.float32))
            d_features.append(tf.cast(tf.matmul(g, k, transpose_b=True), tf.float32) * unscale)
            d_kernel += tf.cast(tf.matmul(xm, g, transpose_a=True), tf.float32) * unscale

        def grad(upstream):
            return [tf.cast(upstream * d_kernel, kernel.dtype)] + [
                tf.cast(upstream * d, x.dtype) for d, x in zip(d_features, features)]
        return loss, grad
    return fused(tf.convert_to_tensor(kernel), *features)


def updated_center(center, teacher_batch_mean, momentum: float):
    """c <- m·c + (1 - m)·mean of the teacher's outputs over the global batch (DINO eq. 4)."""
    return momentum * center + (1.0 - momentum) * teacher_batch_mean


def teacher_entropy(teacher, center, teacher_temperature):
    """Mean entropy (nats) of the teacher's centred, sharpened distributions over the batch and its
    views — DINO's collapse diagnostic (Caron et al. 2021, Fig. 7): ln K when every image gets the
    uniform distribution (centring won), 0 when every image gets one prototype (sharpening won)."""
    logp = [tf.nn.log_softmax((tf.cast(t, tf.float32) - center) / teacher_temperature, -1) for t in teacher]
    return tf.add_n([tf.reduce_mean(-tf.reduce_sum(tf.exp(lp) * lp, -1)) for lp in logp]) / len(logp)
