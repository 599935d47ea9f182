"""Redundancy-reduction losses (Barlow Twins, VICReg) over the whole (gathered) batch."""
from __future__ import annotations

import tensorflow as tf

BARLOW_LAMBDA = 0.0051      # official code (facebookresearch/barlowtwins) at 8192 projector dims
BARLOW_REFERENCE_DIM = 8192


def barlow_lambda(dim: int) -> float:
    """λ for ``dim`` projector dimensions: the official 0.0051 at 8192 dims, scaled as 8192/dim
    so that λ·(d - 1), the weight of a row's off-diagonal terms against its one diagonal term,
    stays as in the paper."""
    return BARLOW_LAMBDA * BARLOW_REFERENCE_DIM / dim


def _off_diagonal_sq_sum(c):
    return tf.reduce_sum(tf.square(c)) - tf.reduce_sum(tf.square(tf.linalg.diag_part(c)))


def barlow_twins_loss(z1, z2, lambd: float, eps: float = 1e-5):
    """Barlow Twins (Zbontar et al. 2021, eq. 1-2): with each dimension standardised over the batch
    of N (as BN without affine), C = z1ᵀz2 / N and
        L = sum_i (1 - C_ii)² + λ sum_{i != j} C_ij².
    Returns (loss, C)."""
    n = tf.cast(tf.shape(z1)[0], z1.dtype)

    def standardise(z):
        mean, var = tf.nn.moments(z, [0])
        return (z - mean) / tf.sqrt(var + eps)
    c = tf.matmul(standardise(z1), standardise(z2), transpose_a=True) / n
    on_diag = tf.reduce_sum(tf.square(1.0 - tf.linalg.diag_part(c)))
    return on_diag + lambd * _off_diagonal_sq_sum(c), c


def vicreg_terms(z1, z2, gamma: float = 1.0, eps: float = 1e-4):
    """VICReg's three terms (Bardes et al. 2022, eq. 1-5) on a batch of n, d dimensions:
    invariance s = mean ||z1 - z2||² / d (MSE), variance v = mean_j relu(γ - sqrt(Var z_j + ε))
    (averaged over the two branches, unbiased variance), covariance c = sum_{i != j} C(z)_ij² / d
    (summed over the two branches) with C the unbiased covariance."""
    n = tf.cast(tf.shape(z1)[0], z1.dtype)
    d = tf.cast(tf.shape(z1)[1], z1.dtype)
    invariance = tf.reduce_mean(tf.square(z1 - z2))

    def var_cov(z):
        centred = z - tf.reduce_mean(z, 0)
        cov = tf.matmul(centred, centred, transpose_a=True) / (n - 1.0)
        std = tf.sqrt(tf.linalg.diag_part(cov) + eps)
        return tf.reduce_mean(tf.nn.relu(gamma - std)), _off_diagonal_sq_sum(cov) / d
    v1, c1 = var_cov(z1)
    v2, c2 = var_cov(z2)
    return invariance, 0.5 * (v1 + v2), c1 + c2


def vicreg_loss(z1, z2, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0,
                gamma: float = 1.0):
    """λ·s + μ·v + ν·c with the paper's λ = μ = 25, ν = 1. Returns (loss, (s, v, c))."""
    s, v, c = vicreg_terms(z1, z2, gamma)
    return sim_weight * s + var_weight * v + cov_weight * c, (s, v, c)
