"""The mutual-information (InfoMax) objectives as pure functions of tensors: CPC's InfoNCE, Deep
InfoMax's three estimators and its prior matching, AMDIM's clipped NCE across scales."""
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


# ---------------------------------------------------------------- Deep InfoMax (Hjelm et al. 2019)
MI_ESTIMATORS = ("jsd", "infonce", "dv")


def pair_scores(globals_, locals_):
    """u[i, j, l] = ⟨G_i, L_{j,l}⟩: every global vector [n, D] against every local feature [N, M, D]
    of the (gathered) batch — DIM's encode-and-dot-product discriminator (§3.1, appendix A.2)."""
    return tf.einsum("id,jld->ijl", globals_, locals_)


def mi_lower_bound(scores, estimator: str, offset=0):
    """DIM's estimate of the mutual information between the globals and the locals of the same image
    (Hjelm et al. 2019, §3.1), from ``scores`` [n, N, M] (``pair_scores``): the positives are
    u[i, offset + i, :] (image i's own M locals), the negatives every local of the other N − 1 images.

    - ``jsd`` (eq. 4, the paper's default): E_P[−sp(−T)] − E_N[sp(T)], sp = softplus, each expectation
      the mean over its pairs;
    - ``dv`` (Donsker–Varadhan, eq. 2): E_P[T] − log E_N[e^T];
    - ``infonce`` (eq. 5): for each positive (i, l), T_pos − log(e^T_pos + Σ_{j≠i, l'} e^{u[i, j, l']}),
      averaged — every local of the other images is a negative of each of image i's locals.

    Returns the estimate (to be maximised: the loss is its negative)."""
    n, big_n, m = tf.shape(scores)[0], tf.shape(scores)[1], tf.shape(scores)[2]
    own = tf.one_hot(tf.range(n) + tf.cast(offset, tf.int32), big_n, dtype=scores.dtype)    # [n, N]
    positive = tf.einsum("ijl,ij->il", scores, own)                                          # [n, M]
    other = (1.0 - own)[:, :, None] * tf.ones_like(scores)                                   # [n, N, M]
    count = tf.reduce_sum(other)
    if estimator == "jsd":
        return tf.reduce_mean(-tf.nn.softplus(-positive)) - tf.reduce_sum(tf.nn.softplus(scores) * other) / count
    if estimator == "dv":
        masked = tf.where(other > 0, scores, tf.cast(-1e30, scores.dtype))
        return tf.reduce_mean(positive) - (tf.reduce_logsumexp(masked) - tf.math.log(count))
    if estimator == "infonce":
        masked = tf.where(other > 0, scores, tf.cast(-1e30, scores.dtype))
        negatives = tf.reduce_logsumexp(tf.reshape(masked, [n, big_n * m]), -1, keepdims=True)   # [n, 1]
        return tf.reduce_mean(positive - tf.reduce_logsumexp(tf.stack(
            [positive, tf.broadcast_to(negatives, tf.shape(positive))]), 0))
    raise ValueError(f"estimator must be one of {MI_ESTIMATORS}, not {estimator!r}")


def discriminator_loss(real_logits, fake_logits):
    """DIM's prior matching (§3.3), the discriminator's side: tell samples of the prior (``real_logits``,
    D on uniform [0, 1) draws) from the encoder's σ(y) (``fake_logits``): mean sp(−D(real)) + mean sp(D(fake))."""
    return tf.reduce_mean(tf.nn.softplus(-real_logits)) + tf.reduce_mean(tf.nn.softplus(fake_logits))


def generator_loss(fake_logits):
    """… and the encoder's (non-saturating) side: mean sp(−D(σ(y))), pulling σ(y) towards the prior."""
    return tf.reduce_mean(tf.nn.softplus(-fake_logits))


# ---------------------------------------------------------------- AMDIM (Bachman et al. 2019)
def amdim_nce(sources, targets, offset=0, clip: float = 20.0, reg_weight: float = 0.05):
    """AMDIM's NCE between feature scales (Bachman, Hjelm & Buchwalter 2019, §3.2–3.3; amdim-public
    ``costs.py``): ``sources`` [n, D] (one view's global vectors, or one location of its local map) and
    ``targets`` [N, M, D] (every location of the other view's map, for every image of the global batch).

        s[i, j, m] = ⟨src_i, trg_{j,m}⟩ / √D,     ŝ = c·tanh(s / c)    (soft clipping, c = ``clip``)

    Each of image i's own M locations is a positive, every location of the other images a negative:
    l(i, m) = −(ŝ[i, i, m] − log(e^ŝ[i,i,m] + Σ_{j≠i, m'} e^ŝ[i,j,m'])), the InfoNCE of
    ``mi_lower_bound`` on the clipped scores. Returns (mean l, ``reg_weight`` · mean s², the penalty on
    the raw scores that keeps them small)."""
    raw = pair_scores(sources, targets) / tf.sqrt(tf.cast(tf.shape(sources)[-1], sources.dtype))
    clipped = clip * tf.tanh(raw / clip)
    return -mi_lower_bound(clipped, "infonce", offset), reg_weight * tf.reduce_mean(tf.square(raw))
