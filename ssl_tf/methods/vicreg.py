"""VICReg (Bardes, Ponce & LeCun 2022): invariance (MSE), variance (hinge on each dimension's std,
γ = 1) and covariance (off-diagonal squares) terms with weights 25 / 25 / 1, on a 3-layer
expander (8192 in the paper), computed over the embeddings gathered from every replica as the
official code does."""
from __future__ import annotations

from ssl_tf import distribute
from ssl_tf.losses import vicreg_loss
from ssl_tf.methods.base import Objective, SSLMethod, encode_views
from ssl_tf.models import mlp


class VICReg(SSLMethod):
    view_recipe = "asymmetric_two_views"

    def __init__(self, encoder, num_classes=0, proj_hidden=8192, dim=8192, weights=(25.0, 25.0, 1.0),
                 synchronized_bn=False, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.loss_weights = weights
        self.projector = mlp((proj_hidden, proj_hidden, dim), synchronized_bn=synchronized_bn, name="projector")

    @classmethod
    def from_config_obj(cls, cfg, encoder, num_classes, **_):
        return cls(encoder, num_classes, proj_hidden=cfg.proj_hidden, dim=cfg.proj_dim,
                   weights=(cfg.vicreg_sim, cfg.vicreg_var, cfg.vicreg_cov), synchronized_bn=cfg.global_bn)

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        h1, h2 = encode_views(self.encoder, [x1, x2], training)
        z1, z2 = encode_views(self.projector, [h1, h2], training)
        loss, (inv, var, cov) = vicreg_loss(distribute.gather(z1), distribute.gather(z2), *self.loss_weights)
        return Objective(loss, features=h1, embeddings=z1, logs={"invariance": inv, "variance": var,
                                                                 "covariance": cov})
