"""The mutual-information (InfoMax) objectives as pure functions of tensors: CPC's InfoNCE."""
from __future__ import annotations

import tensorflow as tf

from ssl_tf.losses.contrastive import ContrastiveOutput


def cpc_info_nce(predictions, targets, positive) -> ContrastiveOutput:
    """CPC's InfoNCE (van den Oord et al. 2018, eq. 4; Hénaff et al. 2020, eq. 1).

    ``predictions``: [N, D] predicted patch vectors ẑ; ``targets``: [M, D] every patch vector z of
    the batch (every position of every image, on every replica); ``positive``: [N] the row of each
    prediction's own z. Each prediction is scored against every target by a dot product, and

        l(n) = −log( exp(ẑ_n·z_pos(n)) / Σ_m exp(ẑ_n·z_m) )

    — the negatives are the other M − 1 patches, "other locations in the image and other images in
    the mini-batch". Mean over the N predictions, and the fraction whose positive scores highest."""
    positive = tf.cast(positive, tf.int32)
    logits = tf.matmul(predictions, targets, transpose_b=True)
    loss = tf.nn.sparse_softmax_cross_entropy_with_logits(positive, logits)
    correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), positive)
    return ContrastiveOutput(tf.reduce_mean(loss), tf.reduce_mean(tf.cast(correct, tf.float32)))
