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
