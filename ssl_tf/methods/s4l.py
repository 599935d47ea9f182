"""S4L (Zhai et al. 2019): self-supervised semi-supervised learning.

One network trained jointly on  L = L_sup + w · L_self : the supervised cross-entropy of a
linear classifier on the labelled images of the batch (``--label_fraction`` of the
training set carries labels; the rest have label -1 and only feed the self-supervised
loss) plus the rotation or exemplar loss on every image, weighted by ``--ssl_weight``.
The supervised head sees the upright image (rotation) or the first copy (exemplar).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssl_tf.losses import cross_entropy
from ssl_tf.methods.base import Objective
from ssl_tf.methods.exemplar import Exemplar
from ssl_tf.methods.rotation import Rotation
from ssl_tf.methods.settings import check, param, register
from ssl_tf.models import linear_head


class S4LMixin:
    """Adds the supervised head and loss to a method that defines ``ssl_objective``."""
    needs_labels = True

    @staticmethod
    def ssl_weight_param():
        return param(1.0, "S4L: weight w of the self-supervised loss in L_sup + w·L_self.",
                     source="Zhai et al. 2019 §3: w = 1")

    @staticmethod
    def check_ssl_weight(params):
        check(params.ssl_weight >= 0, "ssl_weight", params.ssl_weight, "must be >= 0")

    def init_s4l(self, num_classes, ssl_weight):
        if num_classes <= 0:
            raise ValueError("S4L needs labelled data (num_classes > 0)")
        self.ssl_weight = ssl_weight
        self.supervised_head = linear_head(num_classes, name="supervised_head")

    def call(self, images, training=False):
        return self.supervised_head(self.encoder(images, training=training))

    def joint(self, batch, ssl_loss, features, ssl_logs, embeddings=None):
        labels = batch["label"]
        mask = labels >= 0
        sup_loss, sup_acc = cross_entropy(tf.maximum(labels, 0), self.supervised_head(features), mask)
        logs = {"ssl_loss": ssl_loss, "supervised_loss": sup_loss, "supervised_acc": sup_acc, **ssl_logs}
        return Objective(sup_loss + self.ssl_weight * ssl_loss, features=features, embeddings=embeddings, logs=logs)


@register("s4l_rotation", family="pretext")
class S4LRotation(S4LMixin, Rotation):
    @dataclasses.dataclass
    class Params(Rotation.Params):
        ssl_weight: float = S4LMixin.ssl_weight_param()

        def validate(self, shared):
            super().validate(shared)
            S4LMixin.check_ssl_weight(self)

    def __init__(self, encoder, num_classes, ssl_weight=1.0, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.init_s4l(num_classes, ssl_weight)

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, ssl_weight=p.ssl_weight)

    def objective(self, batch, training):
        loss, acc, features = self.ssl_objective(batch["views"], training)
        return self.joint(batch, loss, features, {"rotation_acc": acc})


@register("s4l_exemplar", family="pretext")
class S4LExemplar(S4LMixin, Exemplar):
    @dataclasses.dataclass
    class Params(Exemplar.Params):
        ssl_weight: float = S4LMixin.ssl_weight_param()

        def validate(self, shared):
            super().validate(shared)
            S4LMixin.check_ssl_weight(self)

    def __init__(self, encoder, num_classes, ssl_weight=1.0, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.init_s4l(num_classes, ssl_weight)

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, ssl_weight=p.ssl_weight, embed_dim=p.embed_dim, margin=p.triplet_margin)

    def objective(self, batch, training):
        loss, features, z = self.ssl_objective(batch["views"], training)
        return self.joint(batch, loss, features, {}, embeddings=z)
