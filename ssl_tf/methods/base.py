"""The shared machinery of every method: one ``train_step``, an online probe, a collapse monitor.

A method subclasses ``SSLMethod`` and writes ``objective(batch, training)``: its loss as in
the paper, returned with the backbone features the online probe should see. The base
class does the rest:

* scales the loss by 1/replicas (the optimizer sums replica gradients, so the update is
  the gradient of the global mean loss) and applies it to the method's own variables;
* trains the online linear probe on stop-gradient features with its own optimizer, on
  labelled examples only (label -1 = unlabelled);
* reports ``embedding_std``: the mean per-dimension std of L2-normalised embeddings times
  √d — about 1 for spread-out embeddings, 0 at complete collapse.
"""
from __future__ import annotations

import typing

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.models import linear_head


class Objective(typing.NamedTuple):
    loss: tf.Tensor                 # scalar, mean over this replica's examples
    features: tf.Tensor | None      # [b, F] backbone features of one view, for the probe
    embeddings: tf.Tensor | None    # [b, D] for the collapse monitor
    logs: dict                      # extra scalars to report


def embedding_std(z):
    """Mean per-dimension std of L2-normalised ``z``, times √d (≈1 spread out, 0 collapsed)."""
    u = tf.math.l2_normalize(z, -1)
    d = tf.cast(tf.shape(u)[-1], u.dtype)
    return tf.reduce_mean(tf.math.reduce_std(u, axis=0)) * tf.sqrt(d)


class SSLMethod(keras.Model):
    view_recipe = "two_views"    # the data/views.py recipe the method trains on
    encoder_input = "rgb"        # what the backbone sees of its RGB input: rgb | lightness

    def __init__(self, encoder: keras.Model, num_classes: int = 0, online_probe: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        self.probe = linear_head(num_classes, name="online_probe") if (online_probe and num_classes > 0) else None
        self.probe_optimizer = None

    # -- the one hook a method writes -------------------------------------------------
    def objective(self, batch, training: bool) -> Objective:
        raise NotImplementedError

    # -- setup ------------------------------------------------------------------------
    def call(self, images, training=False):
        return self.encoder(images, training=training)

    def build_with(self, batch, optimizer, probe_optimizer=None):
        """Create every variable by running the objective on ``batch`` (a subclassed model's
        ``build`` cannot), then build the optimizers on the method's and the probe's variables."""
        out = self.objective(batch, training=False)
        if self.probe is not None:
            self.probe(out.features)
        self.compile(optimizer=optimizer, jit_compile=False)
        self.optimizer.build(self.method_variables)
        if self.probe is not None:
            self.probe_optimizer = probe_optimizer or keras.optimizers.Adam(1e-3)
            self.probe_optimizer.build(self.probe.trainable_variables)

    def step_seed(self, salt: int = 0):
        """A [2] seed for in-model randomness that differs per step, replica and ``salt`` and is a
        pure function of them (with the method's ``seed``): reproducible, resumable."""
        optimizer = getattr(self, "optimizer", None)
        step = tf.cast(optimizer.iterations, tf.int64) if optimizer is not None and optimizer.built else tf.constant(0, tf.int64)
        replica = tf.cast(distribute.replica_id(), tf.int64)
        return tf.stack([tf.cast(getattr(self, "seed", 0), tf.int64), (step * 1024 + replica) * 16 + salt])

    @property
    def method_variables(self):
        skip = {id(v) for v in self.probe.trainable_variables} if self.probe is not None else set()
        return [v for v in self.trainable_variables if id(v) not in skip]

    # -- the step ---------------------------------------------------------------------
    def train_step(self, batch):
        variables = self.method_variables
        with tf.GradientTape() as tape:
            out = self.objective(batch, training=True)
            scaled = out.loss / distribute.num_replicas()
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        logs = {"loss": out.loss, **out.logs}
        if out.embeddings is not None:
            logs["embedding_std"] = embedding_std(out.embeddings)
        if self.probe is not None:
            logs.update(self.probe_step(out.features, batch["label"]))
        return logs

    def probe_step(self, features, labels):
        features = tf.stop_gradient(features)
        mask = tf.cast(labels >= 0, tf.float32)
        count = tf.maximum(tf.reduce_sum(mask), 1.0)
        safe = tf.maximum(labels, 0)
        with tf.GradientTape() as tape:
            logits = self.probe(features)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, logits)
            loss = tf.reduce_sum(per_example * mask) / count
            scaled = loss / distribute.num_replicas()
        grads = tape.gradient(scaled, self.probe.trainable_variables)
        self.probe_optimizer.apply_gradients(zip(grads, self.probe.trainable_variables))
        correct = tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(safe, tf.int64)), tf.float32)
        return {"probe_loss": loss, "probe_acc": tf.reduce_sum(correct * mask) / count}
