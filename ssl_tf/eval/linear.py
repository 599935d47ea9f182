"""Offline linear / MLP probe of a frozen encoder (the standard protocol).

The encoder runs in inference mode only (``training=False``: BN uses and keeps its moving
statistics — lightly issue #1440 cannot happen). Features are standardised with the
training set's per-dimension mean and std (the parameter-free BN that SimCLR, MoCo v3 and
MAE put before their linear probe); the head is trained with SGD, Nesterov momentum 0.9,
lr × batch/256 on a cosine schedule and no weight decay (SimCLR appendix B.6).

``probe``: on cached features (extracted once; the fast default).
``augmented_probe``: on crop+flip views of the training images, through the frozen encoder
at every step; evaluation on the centre view.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from ssl_tf.data import pipeline, views
from ssl_tf.data.sources import Examples
from ssl_tf.eval.features import extract
from ssl_tf.models import eval_head


def _head_and_optimizer(num_classes, dim, head, steps, learning_rate, batch_size, seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((dim,)), eval_head(head, num_classes)])
    lr = learning_rate * batch_size / 256
    optimizer = keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(lr, max(1, steps)), momentum=0.9,
                                     nesterov=True)
    return model, optimizer


def _top1(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, batch_size=1024, verbose=0), -1) == y) * 100)


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
          head: str = "linear", epochs: int = 100, batch_size: int = 256, learning_rate: float = 0.1,
          seed: int = 0) -> dict:
    """Train ``head`` on cached (train_x, train_y); top-1 (%) on the test and the train set."""
    # One standardised copy of each set and no temporaries of the features' size (a layer-wise
    # probe's 45,000 × 9,000 map is 1.6 GB): the std comes from the centred copy.
    mean = train_x.mean(0, keepdims=True)
    tx, vx = np.subtract(train_x, mean, dtype=np.float32), np.subtract(test_x, mean, dtype=np.float32)
    std = np.sqrt(np.einsum("ij,ij->j", tx, tx) / len(tx))[None] + 1e-6
    tx /= std
    vx /= std
    steps = epochs * int(np.ceil(len(tx) / batch_size))
    model, optimizer = _head_and_optimizer(num_classes, tx.shape[1], head, steps, learning_rate, batch_size, seed)
    optimizer.build(model.trainable_variables)
    features, labels = tf.convert_to_tensor(tx), tf.convert_to_tensor(train_y, tf.int32)
    batches = int(np.ceil(len(tx) / batch_size))
    del tx   # the tensor is the one copy kept

    # One graph call per epoch: a layer-wise probe is 12 heads × 50 epochs of steps far too small
    # (256 × ≤ 9000 × classes) to hide Python's per-step cost. The features come in as arguments,
    # not captured constants, because a 45,000 × 9,000 map would outgrow a graph's 2 GB limit.
    @tf.function
    def epoch(features, labels, order):
        for i in tf.range(batches):
            rows = order[i * batch_size:(i + 1) * batch_size]
            x, y = tf.gather(features, rows), tf.gather(labels, rows)
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=True)))
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))

    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        epoch(features, labels, tf.constant(rng.permutation(len(train_y)), tf.int32))
    return {"top1": _top1(model, vx, test_y), "train_top1": _top1(model, features, train_y)}


def augmented_probe(encoder: keras.Model, train: Examples, test: Examples, num_classes: int, *, image_size: int,
                    head: str = "linear", epochs: int = 100, batch_size: int = 256, learning_rate: float = 0.1,
                    seed: int = 0, crop_scale: tuple[float, float] = (0.08, 1.0)) -> dict:
    """Train ``head`` on crop+flip views of ``train`` (Examples) through the frozen ``encoder``."""
    clean_x, clean_y = extract(encoder, train, image_size, batch_size)
    mean = tf.constant(clean_x.mean(0, keepdims=True))
    std = tf.constant(clean_x.std(0, keepdims=True) + 1e-6)
    batch = min(batch_size, len(train))
    per_epoch = pipeline.steps_per_epoch(train, batch)
    model, optimizer = _head_and_optimizer(num_classes, clean_x.shape[1], head, epochs * per_epoch, learning_rate,
                                           batch, seed)
    optimizer.build(model.trainable_variables)
    view = views.views_for("crop_flip", views.AugmentConfig(image_size=image_size, crop_scale=crop_scale))

    @tf.function
    def step(x, y):
        f = (tf.stop_gradient(encoder(x, training=False)) - mean) / std
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(f, training=True)))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss
    stream = pipeline.train_stream(train, view, global_batch=batch, seed=seed)
    for batch_ in stream.take(epochs * per_epoch):
        step(batch_["views"], batch_["label"])
    test_x, test_y = extract(encoder, test, image_size, batch_size)

    def standardise(x):
        return (x - mean.numpy()) / std.numpy()
    return {"top1": _top1(model, standardise(test_x), test_y),
            "train_top1": _top1(model, standardise(clean_x), clean_y)}
