"""Rotation prediction (Gidaris et al. 2018, RotNet): which of 0/90/180/270° was applied?

Every image comes in all four rotations (the ``rotations`` view recipe, as RotNet's
collate); the encoder sees the 4·b images in one batch and a linear head classifies
the rotation with softmax cross-entropy.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssl_tf.losses import cross_entropy
from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.methods.settings import REVISITING_RECIPE, MethodParams, register
from ssl_tf.models import linear_head

NUM_ROTATIONS = 4


@register("rotation", family="pretext")
class Rotation(SSLMethod):
    view_recipe = "rotations"

    recipe = REVISITING_RECIPE

    @dataclasses.dataclass
    class Params(MethodParams):
        """Rotation has no parameters of its own: four rotations, a linear head (Gidaris et al. 2018)."""

    def __init__(self, encoder, num_classes=0, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.rotation_head = linear_head(NUM_ROTATIONS, name="rotation_head")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes)

    def ssl_objective(self, views, training):
        """(loss, accuracy, features of the upright copies [b, F])."""
        b = tf.shape(views)[0]
        h = self.encoder(tf.reshape(views, [-1, *views.shape[2:]]), training=training)   # image-major
        labels = tf.tile(tf.range(NUM_ROTATIONS), [b])
        loss, acc = cross_entropy(labels, self.rotation_head(h))
        return loss, acc, tf.reshape(h, [b, NUM_ROTATIONS, -1])[:, 0]

    def objective(self, batch, training):
        loss, acc, features = self.ssl_objective(batch["views"], training)
        return Objective(loss, features=features, embeddings=None, logs={"rotation_acc": acc})
