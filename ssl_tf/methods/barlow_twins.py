"""Barlow Twins (Zbontar et al. 2021): the cross-correlation matrix of the two views' standardised
embeddings is pushed to the identity. Projector: 3 layers (8192 in the paper), BN + ReLU between.
The loss is computed on the embeddings gathered from every replica (the paper's all-reduced C),
so it is the same for any number of replicas."""
from __future__ import annotations

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import barlow_lambda, barlow_twins_loss
from ssl_tf.methods.base import Objective, SSLMethod, encode_views
from ssl_tf.models import mlp


class BarlowTwins(SSLMethod):
    view_recipe = "asymmetric_two_views"

    def __init__(self, encoder, num_classes=0, proj_hidden=8192, dim=8192, lambd=None, synchronized_bn=False,
                 **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.lambd = lambd if lambd is not None else barlow_lambda(dim)
        self.projector = mlp((proj_hidden, proj_hidden, dim), synchronized_bn=synchronized_bn, name="projector")

    @classmethod
    def from_config_obj(cls, cfg, encoder, num_classes, **_):
        return cls(encoder, num_classes, proj_hidden=cfg.proj_hidden, dim=cfg.proj_dim, lambd=cfg.barlow_lambda,
                   synchronized_bn=cfg.global_bn)

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        h1, h2 = encode_views(self.encoder, [x1, x2], training)
        z1, z2 = encode_views(self.projector, [h1, h2], training)
        loss, c = barlow_twins_loss(distribute.gather(z1), distribute.gather(z2), self.lambd)
        return Objective(loss, features=h1, embeddings=z1,
                         logs={"on_diagonal": tf.reduce_mean(tf.linalg.diag_part(c))})
