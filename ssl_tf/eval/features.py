"""Frozen-encoder feature extraction (inference mode: BN uses its moving statistics)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from ssl_tf.data import pipeline
from ssl_tf.data.sources import Examples


def extract(encoder: Callable, examples: Examples, image_size: int,
            batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, F] float32, labels [N]) for ``examples`` in order."""
    forward = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)
    feats, labels = [], []
    for x, y in pipeline.eval_batches(examples, image_size, batch_size):
        feats.append(forward(x).numpy())
        labels.append(y.numpy())
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)
