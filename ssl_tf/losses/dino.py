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
    log_probs = [tf.nn.log_softmax(s / student_temperature, -1) for s in student]
    total, pairs = 0.0, 0
    for i, p_t in enumerate(targets):
        for v, log_p_s in enumerate(log_probs):
            if v == i:
                continue
            total += tf.reduce_mean(-tf.reduce_sum(p_t * log_p_s, -1))
            pairs += 1
    return total / pairs


def updated_center(center, teacher_batch_mean, momentum: float):
    """c <- m·c + (1 - m)·mean of the teacher's outputs over the global batch (DINO eq. 4)."""
    return momentum * center + (1.0 - momentum) * teacher_batch_mean
