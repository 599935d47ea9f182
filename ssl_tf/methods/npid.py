"""NPID, instance discrimination (Wu et al. 2018): every training image is its own class.

A memory bank holds one L2-normalised 128-d feature per training image (the dataset yields
each image's index). Each step scores the batch's features against their own bank rows and
``nce_k`` rows drawn uniformly, with NCE (the normaliser Z estimated on the first batch and
then fixed, as the authors' code) or a softmax over the drawn rows, temperature 0.07; then the
bank rows of the batch move to v ← normalise(m·v + (1 − m)·f), m = 0.5.
"""
from __future__ import annotations

import tensorflow as tf
from keras import layers

from ssl_tf import distribute
from ssl_tf.losses import memory_bank_logits, memory_bank_nce, nce_normaliser
from ssl_tf.methods.base import Objective, SSLMethod, write_rows


def updated_rows(rows, features, momentum: float):
    """The bank update v ← (m·v + (1 − m)·f) / ||m·v + (1 − m)·f||."""
    return tf.math.l2_normalize(momentum * rows + (1.0 - momentum) * features, -1)


class NPID(SSLMethod):
    view_recipe = "one_view"

    def __init__(self, encoder, num_classes=0, num_examples=1, dim=128, nce_k=4096, temperature=0.07,
                 bank_momentum=0.5, loss="nce", **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.num_examples, self.nce_k, self.temperature = num_examples, nce_k, temperature
        self.bank_momentum, self.loss_kind = bank_momentum, loss
        self.head = layers.Dense(dim, name="head")
        stdv = 1.0 / (dim / 3) ** 0.5   # the authors' initialisation: uniform in [-stdv, stdv]
        self.bank = self.add_weight(shape=(num_examples, dim), trainable=False, name="memory_bank",
                                    initializer=lambda shape, dtype=None: tf.random.uniform(shape, -stdv, stdv),
                                    aggregation="only_first_replica")
        self.z = self.add_weight(shape=(), initializer="zeros", trainable=False, name="nce_z",
                                 aggregation="only_first_replica")

    @classmethod
    def from_config_obj(cls, cfg, encoder, num_classes, num_examples=1, **_):
        return cls(encoder, num_classes, num_examples=num_examples, dim=cfg.proj_dim, nce_k=cfg.nce_k,
                   temperature=cfg.temperature, bank_momentum=cfg.nce_m, loss=cfg.npid_loss)

    def objective(self, batch, training):
        x, index = batch["views"], batch["index"]
        h = self.encoder(x, training=training)
        f = tf.math.l2_normalize(self.head(h), -1)
        negatives = tf.random.stateless_uniform([tf.shape(x)[0], self.nce_k], self.step_seed(2), 0,
                                                self.num_examples, dtype=tf.int64)
        logits = memory_bank_logits(f, tf.gather(self.bank, index), tf.gather(self.bank, negatives), self.temperature)
        estimate = distribute.cross_replica_sum(nce_normaliser(logits, self.num_examples)) / distribute.num_replicas()
        z = tf.where(self.z > 0, self.z, estimate)
        loss = memory_bank_nce(logits, self.num_examples, z, self.loss_kind)
        return Objective(loss, features=h, embeddings=f, logs={"nce_z": z},
                         aux={"index": distribute.gather(index), "features": distribute.gather(tf.stop_gradient(f)),
                              "z": z})

    def after_update(self, aux, step):
        index = aux["index"]
        rows = updated_rows(tf.gather(self.bank, index), aux["features"], self.bank_momentum)
        write_rows(self.bank, index, rows)
        self.z.assign(aux["z"])
