"""Shared machinery of the patch-arrangement tasks (relative patch location, jigsaw).

Both encode the 9 patches of a 3×3 grid with one shared-weight encoder, place chosen
patch embeddings side by side in an order that encodes the label, and classify the order
with the revisiting code's fc head. A subclass says which orders (``arrangements``) a
batch uses and which label each carries.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssl_tf.data import patches
from ssl_tf.losses import cross_entropy
from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.methods.settings import REVISITING_RECIPE, MethodParams, check, param
from ssl_tf.models import pretext_head


@dataclasses.dataclass
class PatchGridParams(MethodParams):
    """The 3×3 patch grid's settings (``views.patch_grid``), shared by the patch tasks and PIRL."""
    patch_size: Optional[int] = param(None, "Side of each grid patch (default image_size // 2, at least 8).",
                                      source="revisiting: 64 at 224 px")
    patch_jitter: float = param(21 / 85, "Random gap between grid patches, as a fraction of a cell.",
                                source="revisiting: 21/85")

    def resolve(self, shared):
        self.patch_size = self.patch_size or max(8, shared.image_size // 2)

    def validate(self, shared):
        super().validate(shared)
        check(self.patch_size >= 4, "patch_size", self.patch_size, "must be >= 4")
        check(0 <= self.patch_jitter < 1, "patch_jitter", self.patch_jitter, "must be in [0, 1)")

    def augment(self):
        return dict(patch_size=self.patch_size, patch_jitter=self.patch_jitter)


class PatchTask(SSLMethod):
    view_recipe = "patch_grid"
    task_name = "patch"

    recipe = REVISITING_RECIPE

    @dataclasses.dataclass
    class Params(PatchGridParams):
        head_hidden: int = param(4096, "Hidden units of the patch classifier (0 = linear).",
                                 source="revisiting: fc 4096")

        def validate(self, shared):
            super().validate(shared)
            check(self.head_hidden >= 0, "head_hidden", self.head_hidden, "must be >= 0")

    def __init__(self, encoder, num_classes=0, num_outputs=8, head_hidden=4096, head_dropout=0.5, seed=0,
                 **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.seed = seed
        self.task_head = pretext_head(num_outputs, head_hidden, head_dropout, name=f"{self.task_name}_head")

    def arrangements(self, training):
        """(orders [m, k] of patch indices, their labels [m])."""
        raise NotImplementedError

    def mix_embeddings(self, embeddings, training):
        """Hook on the [b, 9, F] patch embeddings before arranging (Jigsaw++ replaces some)."""
        return embeddings

    def arrange(self, embeddings, training):
        """[b, 9, F] patch embeddings -> (classifier inputs [b·m, k·F], labels [b·m]): every image in
        every order of ``arrangements``, image-major."""
        orders, labels = self.arrangements(training)
        return patches.permute_and_concat(embeddings, orders), tf.tile(labels, [tf.shape(embeddings)[0]])

    def objective(self, batch, training):
        tiles = batch["views"]                                   # [b, 9, P, P, 3]
        b = tf.shape(tiles)[0]
        h = self.encoder(tf.reshape(tiles, [-1, *tiles.shape[2:]]), training=training)
        h = tf.reshape(h, [b, patches.GRID * patches.GRID, -1])
        inputs, labels = self.arrange(self.mix_embeddings(h, training), training)
        logits = self.task_head(inputs, training=training)
        loss, acc = cross_entropy(labels, logits)
        # The probe sees the mean patch embedding (the revisiting code's avg-pool over patches).
        return Objective(loss, features=tf.reduce_mean(h, 1), embeddings=None, logs={f"{self.task_name}_acc": acc})
