"""BigBiGAN's objectives (Donahue & Simonyan 2019, §2, eq. 3–5): hinge losses on the joint
discriminator's three scores.

For a pair (x, z) with label y (+1: data and its encoding (x, E(x)); −1: a sample and its latent
(G(z), z)) the discriminator D gives s_x (from the image path), s_z (from the latent path) and s_xz
(from the joint path). D minimises the hinge h(t) = max(0, 1 − t) of every score,

    ℓ_D(x, z, y) = h(y·s_x) + h(y·s_z) + h(y·s_xz),

and the encoder and generator minimise ℓ_EG(x, z, y) = y·(s_x + s_z + s_xz); each loss is the mean of
its ℓ over the data pairs plus the mean over the sample pairs. s_z of (x, E(x)) and s_x of (G(z), z)
are the "unary" terms that BigBiGAN adds to BiGAN's joint score.
"""
from __future__ import annotations

import tensorflow as tf


def _total(scores):
    return tf.add_n(list(scores))


def bigbigan_discriminator_loss(real, fake):
    """Mean ℓ_D over the data pairs + mean over the sample pairs: ``real`` and ``fake`` are the
    (s_x, s_z, s_xz) triples, each [b], of (x, E(x)) (y = +1) and (G(z), z) (y = −1)."""
    return (_total(tf.reduce_mean(tf.nn.relu(1.0 - s)) for s in real)
            + _total(tf.reduce_mean(tf.nn.relu(1.0 + s)) for s in fake))


def bigbigan_encoder_generator_loss(real, fake):
    """Mean ℓ_EG = y·(s_x + s_z + s_xz): the data pairs' scores pushed down, the samples' pushed up."""
    return tf.reduce_mean(_total(real)) - tf.reduce_mean(_total(fake))


def discriminator_accuracy(real, fake):
    """{"d_acc_x", "d_acc_z", "d_acc_xz"}: the fraction of pairs each score puts on its side of 0 (data
    pairs > 0, sample pairs < 0), over both kinds of pairs."""
    out = {}
    for tag, r, f in zip(("x", "z", "xz"), real, fake):
        hits = tf.concat([tf.cast(r > 0, tf.float32), tf.cast(f < 0, tf.float32)], 0)
        out[f"d_acc_{tag}"] = tf.reduce_mean(hits)
    return out
