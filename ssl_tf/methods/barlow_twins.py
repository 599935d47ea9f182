"""Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of the two views' standardised
embeddings is pushed to the identity. Projector: 3 layers (8192 in the paper), BN + ReLU between.
The loss is computed on the embeddings gathered from every replica (the paper's all-reduced C),
so it is the same for any number of replicas."""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import barlow_lambda, barlow_twins_loss
from ssl_tf.methods.base import Objective, SSLMethod, encode_views
from ssl_tf.methods.settings import ProjectorParams, check, param, register
from ssl_tf.models import mlp


@register("barlow_twins", family="joint")
class BarlowTwins(SSLMethod):
    view_recipe = "asymmetric_two_views"

    # Barlow Twins (facebookresearch/barlowtwins main.py): LARS 0.2 × batch/256 for the weights, wd 1.5e-6.
    recipe = dict(optimizer="lars", learning_rate=0.2, weight_decay=1.5e-6)

    @dataclasses.dataclass
    class Params(ProjectorParams):
        proj_hidden: int = param(8192, "Projection hidden width.", source="Barlow Twins §4: 8192")
        proj_dim: int = param(8192, "Projection output dimension.", source="Barlow Twins §4: 8192")
        barlow_lambda: Optional[float] = param(None, "Off-diagonal weight λ (0.0051 at 8192 dims, scaled "
                                                     "×8192/--proj_dim).", source="Barlow Twins §4: 0.0051")

        def validate(self, shared):
            super().validate(shared)
            check(self.barlow_lambda is None or self.barlow_lambda >= 0, "barlow_lambda", self.barlow_lambda,
                  "must be >= 0")

    def __init__(self, encoder, num_classes=0, proj_hidden=8192, dim=8192, lambd=None, synchronized_bn=False,
                 **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.lambd = lambd if lambd is not None else barlow_lambda(dim)
        self.projector = mlp((proj_hidden, proj_hidden, dim), synchronized_bn=synchronized_bn, name="projector")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, proj_hidden=p.proj_hidden, dim=p.proj_dim, lambd=p.barlow_lambda,
                   synchronized_bn=shared.global_bn)

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        h1, h2 = encode_views(self.encoder, [x1, x2], training)
        z1, z2 = encode_views(self.projector, [h1, h2], training)
        loss, c = barlow_twins_loss(distribute.gather(z1), distribute.gather(z2), self.lambd)
        return Objective(loss, features=h1, embeddings=z1,
                         logs={"on_diagonal": tf.reduce_mean(tf.linalg.diag_part(c))})
