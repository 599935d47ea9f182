"""Exemplar (Dosovitskiy et al. 2014) with the triplet semi-hard loss, as in the revisiting paper.

Each image is its own class: ``--num_exemplar_copies`` heavily augmented copies (the
``exemplar`` recipe: translation, scaling, rotation, colour and contrast) are embedded by
the encoder and a linear layer (``--embed_dim``, revisiting: 1000), L2-normalised over the
*feature* axis, and trained with the triplet semi-hard loss (margin 0.5) using the image
index as label. The revisiting code normalised over axis 0 — the batch axis — which
scales each feature across the batch instead of each embedding onto the unit sphere; we
normalise each embedding.

Triplets are mined within each replica's batch (as the revisiting code did per core).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
from keras import layers

from ssl_tf.losses import triplet_semihard_loss
from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.methods.settings import REVISITING_RECIPE, MethodParams, check, param, register


@register("exemplar", family="pretext")
class Exemplar(SSLMethod):
    view_recipe = "exemplar"

    recipe = {**REVISITING_RECIPE, "batch_size": 64}   # revisiting: 8 copies of 64 images per batch

    @dataclasses.dataclass
    class Params(MethodParams):
        num_exemplar_copies: int = param(8, "Augmented copies per image.", source="revisiting: 8")
        embed_dim: int = param(1000, "Embedding dimension.", source="revisiting: 1000")
        triplet_margin: float = param(0.5, "Triplet semi-hard margin.", source="revisiting: 0.5")

        def validate(self, shared):
            super().validate(shared)
            check(self.num_exemplar_copies >= 2, "num_exemplar_copies", self.num_exemplar_copies,
                  "must be >= 2 (the triplet loss needs positives)")
            check(self.embed_dim >= 1, "embed_dim", self.embed_dim, "must be >= 1")
            check(self.triplet_margin >= 0, "triplet_margin", self.triplet_margin, "must be >= 0")

        def augment(self):
            return dict(num_copies=self.num_exemplar_copies)

    def __init__(self, encoder, num_classes=0, embed_dim=1000, margin=0.5, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.embed = layers.Dense(embed_dim, name="exemplar_embedding")
        self.margin = margin

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, embed_dim=p.embed_dim, margin=p.triplet_margin)

    def ssl_objective(self, views, training):
        """(loss, features of each image's first copy [b, F], embeddings [b·K, D])."""
        b, k = tf.shape(views)[0], views.shape[1]
        h = self.encoder(tf.reshape(views, [-1, *views.shape[2:]]), training=training)   # image-major
        z = tf.math.l2_normalize(self.embed(h), axis=-1)
        labels = tf.repeat(tf.range(b), k)
        loss = triplet_semihard_loss(labels, z, self.margin)
        return loss, tf.reshape(h, [b, k, -1])[:, 0], z

    def objective(self, batch, training):
        loss, features, z = self.ssl_objective(batch["views"], training)
        return Objective(loss, features=features, embeddings=z, logs={})
