"""DINO's self-distillation loss and centre update (Caron et al. 2021, Alg. 1)."""
from __future__ import annotations

import tensorflow as tf


def dino_loss(student, teacher, center, student_temperature: float, teacher_temperature):
    """Cross-entropy between the teacher's centred, sharpened distribution of each global view and
    the student's distribution of every *other* view.

    ``student``: list of [b, K] logits, the 2 global views first, then the local ones;
    ``teacher``: list of [b, K] logits of the global views; ``center``: [K].
        P_t = softmax((t - c) / T_t) (no gradient),  log P_s = log_softmax(s / T_s)
        L = mean over pairs (t_i, s_v), v != i, of mean_b [ -sum_K P_t log P_s ].
    """
    targets = [tf.stop_gradient(tf.nn.softmax((t - center) / teacher_temperature, -1)) for t in teacher]
    # Σ over pairs (i, v), v ≠ i, of P_t,i · log P_s,v = Σ_v (Σ_{i ≠ v} P_t,i) · log P_s,v: one product
    # per student view instead of one per pair (8 instead of 14 [b, K] products at 2 + 6 crops).
    total_target = tf.add_n(targets)
    total, pairs = 0.0, 0
    for v, s in enumerate(student):
        others = [t for i, t in enumerate(targets) if i != v]
        if not others:
            continue
        weight = total_target if len(others) == len(targets) else tf.add_n(others)
        log_p_s = tf.nn.log_softmax(s / student_temperature, -1)
        total += tf.reduce_mean(-tf.reduce_sum(weight * log_p_s, -1))
        pairs += len(others)
    return total / pairs


def updated_center(center, teacher_batch_mean, momentum: float):
    """c <- m·c + (1 - m)·mean of the teacher's outputs over the global batch (DINO eq. 4)."""
    return momentum * center + (1.0 - momentum) * teacher_batch_mean
