"""Triplet semi-hard and class-rebalanced losses against brute-force NumPy re-derivations."""
import numpy as np
import pytest
import tensorflow as tf

from ssl_tf.losses import cross_entropy, rebalanced_cross_entropy, rebalancing_weights, triplet_semihard_loss


def _triplet_reference(labels, emb, margin, squared=True):
    d = ((emb[:, None] - emb[None]) ** 2).sum(-1)
    if not squared:
        d = np.sqrt(d)
    total, count = 0.0, 0
    for a in range(len(labels)):
        negatives = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a] or not negatives:
                continue
            farther = [v for v in negatives if v > d[a, p]]
            d_an = min(farther) if farther else max(negatives)
            total += max(d[a, p] - d_an + margin, 0.0)
            count += 1
    return total / max(count, 1)


@pytest.mark.parametrize("seed,classes,margin,squared", [(0, 4, 0.5, True), (1, 8, 0.2, True), (2, 3, 1.0, True),
                                                          (3, 5, 0.5, False)])
def test_triplet_semihard_matches_brute_force(seed, classes, margin, squared):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, 30)
    emb = rng.normal(size=(30, 6)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    got = float(triplet_semihard_loss(tf.constant(labels), tf.constant(emb), margin, squared))
    np.testing.assert_allclose(got, _triplet_reference(labels, emb, margin, squared), rtol=1e-4, atol=1e-5)


def test_triplet_uses_the_farthest_negative_when_none_is_semi_hard():
    # anchor 0 and positive 1 far apart; the only negative sits close to the anchor
    emb = np.array([[0.0, 0.0], [3.0, 0.0], [0.5, 0.0]], np.float32)
    labels = np.array([0, 0, 1])
    got = float(triplet_semihard_loss(tf.constant(labels), tf.constant(emb), 0.1))
    np.testing.assert_allclose(got, _triplet_reference(labels, emb, 0.1), rtol=1e-5)
    assert got > 0


def test_rebalancing_weights_match_the_formula():
    rng = np.random.default_rng(0)
    centres = np.stack(np.meshgrid(np.arange(-30, 31, 10), np.arange(-30, 31, 10)),
                       -1).reshape(-1, 2).astype(np.float32)
    prior = rng.random(len(centres)).astype(np.float32) ** 3
    lam, sigma = 0.5, 5.0
    p = prior / prior.sum()
    k = np.exp(-((centres[:, None] - centres[None]) ** 2).sum(-1) / (2 * sigma ** 2))
    smooth = (k / k.sum(0, keepdims=True)) @ p
    w = 1 / ((1 - lam) * smooth + lam / len(p))
    w /= (smooth * w).sum()
    got = rebalancing_weights(prior, centres, lam, sigma).numpy()
    np.testing.assert_allclose(got, w, rtol=1e-5)
    np.testing.assert_allclose((smooth * got).sum(), 1.0, rtol=1e-5)     # E_p~[w] = 1
    assert got[np.argmin(smooth)] > got[np.argmax(smooth)]               # rare colours weigh more


def test_rebalanced_and_masked_cross_entropy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 12)
    weights = rng.random(5).astype(np.float32)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    ce = -logp[np.arange(12), labels]
    np.testing.assert_allclose(rebalanced_cross_entropy(labels, logits, weights).numpy(),
                               np.mean(weights[labels] * ce), rtol=1e-5)
    mask = rng.random(12) < 0.5
    loss, acc = cross_entropy(labels, logits, mask)
    np.testing.assert_allclose(loss.numpy(), ce[mask].mean(), rtol=1e-5)
    np.testing.assert_allclose(acc.numpy(), np.mean(logits[mask].argmax(1) == labels[mask]), rtol=1e-6)
