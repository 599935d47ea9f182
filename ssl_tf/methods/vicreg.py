"""VICReg (Bardes, Ponce & LeCun 2022): invariance (MSE), variance (hinge on each dimension's std,
γ = 1) and covariance (off-diagonal squares) terms with weights 25 / 25 / 1, on a 3-layer
expander (8192 in the paper), computed over the embeddings gathered from every replica as the
official code does."""
from __future__ import annotations

import dataclasses

from ssl_tf import distribute
from ssl_tf.losses import vicreg_loss
from ssl_tf.methods.base import Objective, SSLMethod, encode_views
from ssl_tf.methods.settings import ProjectorParams, check, param, register
from ssl_tf.models import mlp


@register("vicreg", family="joint")
class VICReg(SSLMethod):
    view_recipe = "asymmetric_two_views"

    # VICReg (facebookresearch/vicreg main_vicreg.py): LARS base lr 0.2 × batch/256, wd 1e-6.
    recipe = dict(optimizer="lars", learning_rate=0.2, weight_decay=1e-6)

    @dataclasses.dataclass
    class Params(ProjectorParams):
        proj_hidden: int = param(8192, "Expander hidden width.", source="VICReg §4.2: 8192-8192-8192")
        proj_dim: int = param(8192, "Expander output dimension.", source="VICReg §4.2: 8192")
        vicreg_sim: float = param(25.0, "Invariance weight λ.", source="VICReg §4.2: λ = 25")
        vicreg_var: float = param(25.0, "Variance weight μ.", source="VICReg §4.2: μ = 25")
        vicreg_cov: float = param(1.0, "Covariance weight ν.", source="VICReg §4.2: ν = 1")

        def validate(self, shared):
            super().validate(shared)
            for flag in ("vicreg_sim", "vicreg_var", "vicreg_cov"):
                check(getattr(self, flag) >= 0, flag, getattr(self, flag), "must be >= 0")

    def __init__(self, encoder, num_classes=0, proj_hidden=8192, dim=8192, weights=(25.0, 25.0, 1.0),
                 synchronized_bn=False, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.loss_weights = weights
        self.projector = mlp((proj_hidden, proj_hidden, dim), synchronized_bn=synchronized_bn, name="projector")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, proj_hidden=p.proj_hidden, dim=p.proj_dim,
                   weights=(p.vicreg_sim, p.vicreg_var, p.vicreg_cov), synchronized_bn=shared.global_bn)

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        h1, h2 = encode_views(self.encoder, [x1, x2], training)
        z1, z2 = encode_views(self.projector, [h1, h2], training)
        loss, (inv, var, cov) = vicreg_loss(distribute.gather(z1), distribute.gather(z2), *self.loss_weights)
        return Objective(loss, features=h1, embeddings=z1, logs={"invariance": inv, "variance": var,
                                                                 "covariance": cov})
