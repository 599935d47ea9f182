"""Weighted k-nearest-neighbour classifier on cosine similarity (Wu et al. 2018, InstDisc).

For a query q and its k most similar training features f_i (cosine similarity s_i), class
c gets the vote  sum_i exp(s_i / T) · [y_i = c];  the prediction is the top-voted class.
Queries are processed in chunks so memory stays O(chunk × N_train).
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> np.ndarray:
    bank = tf.math.l2_normalize(tf.constant(train_x, tf.float32), -1)
    labels = tf.constant(train_y, tf.int64)
    k = min(k, len(train_x))

    @tf.function(reduce_retracing=True)
    def predict(queries):
        sims = tf.matmul(tf.math.l2_normalize(queries, -1), bank, transpose_b=True)
        top_sims, top_idx = tf.math.top_k(sims, k=k)
        weights = tf.exp(top_sims / temperature)
        votes = tf.reduce_sum(tf.one_hot(tf.gather(labels, top_idx), num_classes) * weights[..., None], axis=1)
        return tf.argmax(votes, -1)
    preds = [predict(tf.constant(test_x[i:i + chunk], tf.float32)).numpy() for i in range(0, len(test_x), chunk)]
    return np.concatenate(preds) if preds else np.zeros([0], np.int64)


def knn_top1(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
             k: int = 200, temperature: float = 0.1) -> float:
    return float(np.mean(knn_predict(train_x, train_y, test_x, num_classes, k, temperature) == test_y) * 100)
