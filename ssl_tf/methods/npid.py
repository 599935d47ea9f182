"""NPID, instance discrimination (Wu et al. 2018): every training image is its own class.

A memory bank holds one L2-normalised 128-d feature per training image (the dataset yields
each image's index). Each step scores the batch's features against their own bank rows and
``nce_k`` rows drawn uniformly, with NCE (the normaliser Z estimated on the first batch and
then fixed, as the authors' code) or a softmax over the drawn rows, temperature 0.07; then the
bank rows of the batch move to v ← normalise(m·v + (1 − m)·f), m = 0.5.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
from keras import layers

from ssl_tf import distribute
from ssl_tf.losses import memory_bank_logits, memory_bank_nce, nce_normaliser
from ssl_tf.methods.base import Objective, SSLMethod, write_rows
from ssl_tf.methods.settings import MethodParams, check, param, register


def updated_rows(rows, features, momentum: float):
    """The bank update v ← (m·v + (1 − m)·f) / ||m·v + (1 − m)·f||."""
    return tf.math.l2_normalize(momentum * rows + (1.0 - momentum) * features, -1)


@register("npid", family="joint")
class NPID(SSLMethod):
    view_recipe = "one_view"

    # NPID (zhirongw/lemniscate.pytorch main.py): SGD 0.03, wd 5e-4, no warm-up, crops from 20% of the area.
    recipe = dict(optimizer="sgd", learning_rate=0.03, weight_decay=5e-4, warmup_epochs=0.0, crop_min_scale=0.2)

    @dataclasses.dataclass
    class Params(MethodParams):
        proj_dim: int = param(128, "Embedding dimension.", source="NPID §4: 128")
        temperature: float = param(0.07, "Temperature τ of the non-parametric softmax.", source="NPID §3.1: 0.07")
        nce_k: int = param(4096, "Negatives drawn from the memory bank per example.", source="NPID §4: 4096")
        nce_m: float = param(0.5, "Memory-bank momentum.", source="lemniscate.pytorch --nce-m 0.5")
        npid_loss: str = param("nce", "nce (the paper's) or softmax over the drawn negatives.", source="NPID §3.2",
                               choices=("nce", "softmax"))

        def validate(self, shared):
            super().validate(shared)
            check(self.proj_dim >= 1, "proj_dim", self.proj_dim, "must be >= 1")
            check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
            check(self.nce_k >= 1, "nce_k", self.nce_k, "must be >= 1")
            check(0 <= self.nce_m < 1, "nce_m", self.nce_m, "must be in [0, 1)")

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
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, num_examples=num_examples, dim=p.proj_dim, nce_k=p.nce_k,
                   temperature=p.temperature, bank_momentum=p.nce_m, loss=p.npid_loss)

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
