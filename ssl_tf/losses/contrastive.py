"""Contrastive losses as pure functions of tensors."""
from __future__ import annotations

import typing

import tensorflow as tf

LARGE_NUM = 1e9


class ContrastiveOutput(typing.NamedTuple):
    loss: tf.Tensor       # scalar, mean over this replica's anchors
    accuracy: tf.Tensor   # fraction of anchors whose positive has the largest logit


def nt_xent(z1, z2, temperature: float, z1_all=None, z2_all=None, offset=0) -> ContrastiveOutput:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) for the local anchors of a (possibly gathered) batch.

    ``z1``, ``z2``: [b, d] projections of the two views of this replica's b images.
    ``z1_all``, ``z2_all``: [B, d] the same over every replica (default: the local ones);
    ``offset``: index of this replica's first row in the gathered batch.
    With u = z/||z||, anchor i of view 1 has the positive u2_i and 2B-2 negatives
    {u1_j, u2_j : j != i}:

        l(i) = -log( exp(u1_i·u2_i / T) / sum_{k != i in [u1_all; u2_all]} exp(u1_i·k / T) )

    and symmetrically for view 2. The loss is the mean of l over the 2b local anchors, the
    paper's 1/(2N) normalisation; SimCLR's code returns the sum of the two view means,
    twice this.
    """
    u1, u2 = tf.math.l2_normalize(z1, -1), tf.math.l2_normalize(z2, -1)
    u1_all = u1 if z1_all is None else tf.math.l2_normalize(z1_all, -1)
    u2_all = u2 if z2_all is None else tf.math.l2_normalize(z2_all, -1)
    b = tf.shape(u1)[0]
    big_b = tf.shape(u1_all)[0]
    positive = tf.range(b) + tf.cast(offset, tf.int32)
    self_mask = tf.one_hot(positive, big_b, dtype=u1.dtype) * LARGE_NUM

    def side(anchor, same_all, other_all):
        same = tf.matmul(anchor, same_all, transpose_b=True) / temperature - self_mask
        cross = tf.matmul(anchor, other_all, transpose_b=True) / temperature
        logits = tf.concat([cross, same], axis=1)            # positive at column ``positive``
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(positive, logits)
        correct = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), positive)
        return loss, tf.cast(correct, tf.float32)
    loss_a, acc_a = side(u1, u1_all, u2_all)
    loss_b, acc_b = side(u2, u2_all, u1_all)
    loss = 0.5 * (tf.reduce_mean(loss_a) + tf.reduce_mean(loss_b))
    accuracy = 0.5 * (tf.reduce_mean(acc_a) + tf.reduce_mean(acc_b))
    return ContrastiveOutput(loss, accuracy)


def info_nce(q, k, negatives, temperature: float) -> ContrastiveOutput:
    """MoCo's InfoNCE (He et al. 2020, eq. 1) with a queue of negative keys.

    ``q``, ``k``: [b, d] queries and their positive keys; ``negatives``: [K, d] queued keys.
    With u = z/||z||:  l(i) = -log( exp(q_i·k_i/T) / (exp(q_i·k_i/T) + sum_j exp(q_i·n_j/T)) ),
    i.e. cross-entropy of the logits [q·k, q·N^T]/T against class 0. Mean over the b queries.
    """
    q, k = tf.math.l2_normalize(q, -1), tf.math.l2_normalize(k, -1)
    negatives = tf.math.l2_normalize(negatives, -1)
    l_pos = tf.reduce_sum(q * k, -1, keepdims=True)                  # [b, 1]
    l_neg = tf.matmul(q, negatives, transpose_b=True)                # [b, K]
    logits = tf.concat([l_pos, l_neg], 1) / temperature
    labels = tf.zeros([tf.shape(q)[0]], tf.int32)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), labels), tf.float32))
    return ContrastiveOutput(loss, acc)


def batch_contrastive(q, k_all, temperature: float, offset=0) -> ContrastiveOutput:
    """MoCo v3's ``ctr(q, k)`` (Chen, Xie & He 2021, Alg. 1): the keys of the whole (gathered) batch
    are the negatives, the key of the same image the positive:

        ctr(q, k) = 2T · mean_i CE( [q_i·k_j / T]_j , i + offset )

    (the 2T factor is the official code's, making the gradient scale independent of T).
    """
    q, k_all = tf.math.l2_normalize(q, -1), tf.math.l2_normalize(k_all, -1)
    logits = tf.matmul(q, k_all, transpose_b=True) / temperature
    labels = tf.range(tf.shape(q)[0]) + tf.cast(offset, tf.int32)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)) * 2.0 * temperature
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), labels), tf.float32))
    return ContrastiveOutput(loss, acc)


def memory_bank_logits(f, positive, negatives, temperature: float):
    """NPID's scores v·f / T against the bank: ``f`` [b, d] L2-normalised features, ``positive``
    [b, d] the bank rows of the same images, ``negatives`` [b, K, d] drawn rows. -> [b, 1 + K]."""
    return tf.concat([tf.reduce_sum(f * positive, -1, keepdims=True),
                      tf.einsum("bd,bkd->bk", f, negatives)], 1) / temperature


def nce_normaliser(logits, num_data: int):
    """NPID's Monte-Carlo estimate of the partition function, Z ≈ n · mean(exp(v·f / T)) (the
    authors' code estimates it once, on the first batch, and keeps it fixed)."""
    return tf.stop_gradient(tf.reduce_mean(tf.exp(logits)) * float(num_data))


def memory_bank_nce(logits, num_data: int, z=None, kind: str = "nce"):
    """NPID's instance-discrimination loss (Wu et al. 2018) on ``memory_bank_logits`` [b, 1 + K]
    (positive first, K negatives drawn uniformly: noise P_n = 1/n, n = ``num_data``).

    ``kind='nce'`` (eq. 6-7): with P(i|v) = exp(v·f/T) / Z and h = P / (P + K·P_n),
        L = -mean_b [ log h(pos) + sum_K log(1 - h(neg)) ].
    ``kind='softmax'``: cross-entropy of the logits against the positive (a softmax over the
    positive and the K sampled negatives; ``z`` unused).
    """
    if kind == "softmax":
        labels = tf.zeros([tf.shape(logits)[0]], tf.int32)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    noise = tf.cast(tf.shape(logits)[1] - 1, logits.dtype) / float(num_data)
    p = tf.exp(logits) / z
    log_h_pos = tf.math.log(p[:, 0] / (p[:, 0] + noise))
    log_1m_h_neg = tf.math.log(noise / (p[:, 1:] + noise))
    return -tf.reduce_mean(log_h_pos + tf.reduce_sum(log_1m_h_neg, 1))
