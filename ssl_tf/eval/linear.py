"""Offline linear / MLP probe on frozen, cached features.

Features are standardised with the training set's per-dimension mean and std (the
parameter-free BN that MoCo v3 and MAE put before their linear probe), then a head is
trained with AdamW and a cosine schedule on the cached features — the encoder is never
run in training mode, so its BN statistics cannot change.
"""
from __future__ import annotations

import keras
import numpy as np

from ssl_tf.models import eval_head


def probe(train_x, train_y, test_x, test_y, num_classes: int, head: str = "linear", epochs: int = 100,
          batch_size: int = 256, learning_rate: float = 1e-2, weight_decay: float = 5e-4, seed: int = 0) -> dict:
    """Train ``head`` on (train_x, train_y); return top-1 (%) on the test set and on the train set."""
    mean = train_x.mean(0, keepdims=True)
    std = train_x.std(0, keepdims=True) + 1e-6
    tx, vx = (train_x - mean) / std, (test_x - mean) / std
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((tx.shape[1],)), eval_head(head, num_classes)])
    steps = epochs * int(np.ceil(len(tx) / batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps)
    model.compile(keras.optimizers.AdamW(schedule, weight_decay=weight_decay),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(tx, train_y, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True)
    top1 = lambda x, y: float(np.mean(np.argmax(model.predict(x, batch_size=1024, verbose=0), -1) == y) * 100)
    return {"top1": top1(vx, test_y), "train_top1": top1(tx, train_y)}
