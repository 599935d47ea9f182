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
    Computed by ``queue_cross_entropy`` a slice of the queue at a time; the queue is a constant
    (no gradient), as in MoCo.
    """
    q, k = tf.math.l2_normalize(tf.cast(q, tf.float32), -1), tf.math.l2_normalize(tf.cast(k, tf.float32), -1)
    per_example, correct = queue_cross_entropy(q, k, tf.stop_gradient(negatives), temperature)
    return ContrastiveOutput(tf.reduce_mean(per_example), tf.reduce_mean(correct))


def queue_cross_entropy(q, k, negatives, temperature: float, chunk: int = 4096):
    """Per-query cross-entropy of the logits [q·k, q·n̂ᵀ]/T against class 0, and whether the
    positive has the largest logit, for unit rows ``q``, ``k`` [b, d] and constant ``negatives``
    [K, d] (n̂: its rows L2-normalised here). With p = softmax of those logits, the gradients

        ∂l_i/∂q_i = (p_i0·k_i + Σ_j p_ij·n̂_j − k_i) / T        ∂l_i/∂k_i = (p_i0 − 1)·q_i / T

    are formed in the forward pass, which walks the negatives ``chunk`` rows at a time with a
    running maximum (the online softmax): the largest transient is [b, chunk], not [b, K]. The
    loss is computed when the encoder's activations are all alive, so its transients add to the
    step's peak memory."""
    negatives = tf.convert_to_tensor(negatives, tf.float32)
    size = negatives.shape[0]

    @tf.custom_gradient
    def fused(q, k):
        qs = q / temperature
        l_pos = tf.reduce_sum(qs * k, -1, keepdims=True)               # [b, 1]
        top = l_pos                                                    # running max of every logit
        top_neg = tf.fill(tf.shape(l_pos), float("-inf"))
        total = tf.ones_like(l_pos)                                    # Σ exp(logit − top)
        weighted = tf.zeros_like(q)                                    # Σ_j exp(l_j − top)·n̂_j
        for start in range(0, size, chunk):
            with tf.control_dependencies([weighted]):                  # one chunk at a time
                n = tf.math.l2_normalize(negatives[start:start + chunk], -1)
                logits = tf.matmul(qs, n, transpose_b=True)            # [b, chunk]
            top_chunk = tf.reduce_max(logits, -1, keepdims=True)
            top_neg = tf.maximum(top_neg, top_chunk)
            new_top = tf.maximum(top, top_chunk)
            rescale = tf.exp(top - new_top)
            e = tf.exp(logits - new_top)
            total = total * rescale + tf.reduce_sum(e, -1, keepdims=True)
            weighted = weighted * rescale + tf.matmul(e, n)
            top = new_top
        loss = (top + tf.math.log(total) - l_pos)[:, 0]
        p_pos = tf.exp(l_pos - top) / total
        d_q = ((p_pos - 1.0) * k + weighted / total) / temperature
        d_k = (p_pos - 1.0) * qs
        correct = tf.cast(l_pos[:, 0] >= top_neg[:, 0], tf.float32)   # argmax = 0 (ties go to the first)

        def grad(d_loss, d_correct):
            del d_correct   # a count: no gradient
            return d_loss[:, None] * d_q, d_loss[:, None] * d_k
        return (loss, correct), grad
    return fused(tf.convert_to_tensor(q), tf.convert_to_tensor(k))


def batch_info_nce(q, k_all, temperature: float, offset=0) -> ContrastiveOutput:
    """InfoNCE with the other images of the (gathered) batch as negatives: each L2-normalised
    ``q_i`` against every key of ``k_all``, its own image's key (row ``i + offset``) the positive,

        L = mean_i CE( [q_i·k_j / T]_j , i + offset )

    (CMC's batch variant between two views; MoCo v3's ``ctr`` is this times 2T)."""
    q, k_all = tf.math.l2_normalize(q, -1), tf.math.l2_normalize(k_all, -1)
    logits = tf.matmul(q, k_all, transpose_b=True) / temperature
    labels = tf.range(tf.shape(q)[0]) + tf.cast(offset, tf.int32)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int32), labels), tf.float32))
    return ContrastiveOutput(loss, acc)


def multiview_pairs(num_views: int, graph: str = "core") -> list[tuple[int, int]]:
    """The pairs of views CMC contrasts (Tian et al. 2020 §3.3): "core" — the first view with each
    other one, L = Σ_j L(V1, Vj); "full" — every pair, L = Σ_{i<j} L(Vi, Vj). Two views: one pair."""
    if graph == "core":
        return [(0, j) for j in range(1, num_views)]
    if graph == "full":
        return [(i, j) for i in range(num_views) for j in range(i + 1, num_views)]
    raise ValueError(f"graph={graph!r}: accepted core, full")


def batch_contrastive(q, k_all, temperature: float, offset=0) -> ContrastiveOutput:
    """MoCo v3's ``ctr(q, k)`` (Chen, Xie & He 2021, Alg. 1): the keys of the whole (gathered) batch
    are the negatives, the key of the same image the positive:

        ctr(q, k) = 2T · mean_i CE( [q_i·k_j / T]_j , i + offset )

    (the 2T factor is the official code's, making the gradient scale independent of T).
    """
    out = batch_info_nce(q, k_all, temperature, offset)
    return ContrastiveOutput(out.loss * 2.0 * temperature, out.accuracy)


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
