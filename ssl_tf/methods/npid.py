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
from ssl_tf.methods.base import MemoryBank, Objective, SSLMethod
from ssl_tf.methods.settings import MethodParams, check, param, register


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
        self.nce_k, self.temperature, self.loss_kind = nce_k, temperature, loss
        self.head = layers.Dense(dim, name="head")
        self.bank = MemoryBank(num_examples, dim, bank_momentum, name="memory_bank")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, num_examples=num_examples, dim=p.proj_dim, nce_k=p.nce_k,
                   temperature=p.temperature, bank_momentum=p.nce_m, loss=p.npid_loss)

    def objective(self, batch, training):
        x, index = batch["views"], batch["index"]
        h = self.encoder(x, training=training)
        f = tf.math.l2_normalize(self.head(h), -1)
        negatives = self.bank.draw(self, tf.shape(x)[0], self.nce_k)
        loss, z = self.bank.loss(f, index, negatives, self.temperature, self.loss_kind)
        return Objective(loss, features=h, embeddings=f, logs={"nce_z": z},
                         aux={"index": distribute.gather(index), "features": distribute.gather(tf.stop_gradient(f)),
                              "z": z})

    def after_update(self, aux, step):
        self.bank.update(aux["index"], aux["features"], aux["z"])
