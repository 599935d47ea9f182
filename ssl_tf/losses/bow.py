"""Bag-of-visual-words targets, their prediction loss and the k-means that builds a vocabulary
(BoWNet: Gidaris et al. 2020, §3.1–3.2; OBoW: Gidaris et al. 2021, §3.1–3.2).

A teacher's local feature map is quantised against a vocabulary of K visual words; the image's
target is the distribution of words over its locations, which a student predicts from a
perturbed view. BoWNet's vocabulary is k-means over a trained teacher's features, its
assignment hard; OBoW's vocabulary is a queue of recent features, its assignment soft.
"""
from __future__ import annotations

import tensorflow as tf


def word_distances(features, words):
    """Squared Euclidean distances ||f − w||² = ||f||² + ||w||² − 2 f·w between every local feature
    ``features`` [b, n, c] and every word ``words`` [K, c]: [b, n, K]."""
    f2 = tf.reduce_sum(tf.square(features), -1, keepdims=True)
    w2 = tf.reduce_sum(tf.square(words), -1)
    return tf.maximum(f2 + w2 - 2.0 * tf.einsum("bnc,kc->bnk", features, words), 0.0)


def soft_bow(distances, inv_delta: float, mean_min_distance):
    """OBoW §3.1's soft assignment and bag of words. Each location's codes are
    softmax_k(−d_k / δ) with δ = μ / inv_delta, μ the running mean of the distance to the nearest
    word (so the softness follows the scale of the distances); the image's bag is the maximum of
    each word's code over the locations, L1-normalised: [b, K] from ``distances`` [b, n, K]."""
    codes = tf.nn.softmax(-distances * (inv_delta / mean_min_distance), axis=-1)
    bag = tf.reduce_max(codes, axis=1)
    return bag / tf.maximum(tf.reduce_sum(bag, -1, keepdims=True), 1e-12)


def bow_prediction_loss(targets, logits):
    """The student's loss (OBoW §3.2): the cross-entropy −Σ_k t_k log softmax(z)_k between the
    teacher's bag of words ``targets`` [b, K] and the student's scores ``logits`` [b, K], averaged
    over the batch (the KL divergence the paper minimises, up to the targets' constant entropy)."""
    return -tf.reduce_mean(tf.reduce_sum(tf.stop_gradient(targets) * tf.nn.log_softmax(logits, -1), -1))


def local_average_pick(feature_map, where, kernel: int = 3):
    """OBoW's vocabulary update (§3.1): the map ``feature_map`` [b, h, w, c] averaged over
    ``kernel`` × ``kernel`` windows (stride 1, no padding), then one window per image, ``where`` [b]
    (index into the pooled map's locations, row-major): [b, c]."""
    pooled = tf.nn.avg_pool2d(feature_map, kernel, 1, "VALID") if kernel > 1 else feature_map
    flat = tf.reshape(pooled, [tf.shape(pooled)[0], -1, pooled.shape[-1]])
    return tf.gather(flat, where, axis=1, batch_dims=1)


def hard_bow(distances, pooling: str = "count"):
    """BoWNet §2.2's bag of words: each location takes its nearest word (hard assignment); the image's
    bag counts them over the locations (``count``: the histogram of visual words) or marks which occur
    (``max``), L1-normalised into a distribution: [b, K] from ``distances`` [b, n, K]."""
    codes = tf.one_hot(tf.argmin(distances, -1), distances.shape[-1])
    bag = tf.reduce_sum(codes, axis=1) if pooling == "count" else tf.reduce_max(codes, axis=1)
    return bag / tf.maximum(tf.reduce_sum(bag, -1, keepdims=True), 1.0)


def kmeans_assign(points, centroids, chunk: int = 8192):
    """Each point's nearest centroid and its squared distance: ([n] int32, [n]) for ``points``
    [n, c] and ``centroids`` [K, c], ``chunk`` points at a time (n × K distances at once would not
    fit: 10⁵ points × 2048 words are 800 MB)."""
    index, nearest = [], []
    for start in range(0, int(points.shape[0]), chunk):
        d = word_distances(points[None, start:start + chunk], centroids)[0]
        index.append(tf.argmin(d, -1, output_type=tf.int32))
        nearest.append(tf.reduce_min(d, -1))
    return tf.concat(index, 0), tf.concat(nearest, 0)


def kmeans_update(points, assignment, centroids):
    """Lloyd's step: each centroid moves to the mean of the points assigned to it; one without
    points stays where it was. Returns (centroids [K, c], points per centroid [K])."""
    k = centroids.shape[0]
    sums = tf.math.unsorted_segment_sum(points, assignment, k)
    counts = tf.math.unsorted_segment_sum(tf.ones_like(assignment, points.dtype), assignment, k)
    return tf.where(counts[:, None] > 0, sums / tf.maximum(counts, 1.0)[:, None], centroids), counts


def kmeans(points, k: int, iterations: int, seed: int = 0):
    """Lloyd's k-means from ``k`` distinct points drawn at random (seeded): (centroids [k, c], the mean
    squared distance of the points to their centroid after each iteration)."""
    points = tf.convert_to_tensor(points, tf.float32)
    start = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(points)[0]), [seed, 0])[:k]
    centroids, inertia = tf.gather(points, start), []
    for _ in range(iterations):
        assignment, nearest = kmeans_assign(points, centroids)
        inertia.append(float(tf.reduce_mean(nearest)))
        centroids, _ = kmeans_update(points, assignment, centroids)
    return centroids, inertia
