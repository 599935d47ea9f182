"""BYOL (Grill et al. 2020): an online network (backbone, projector, predictor) regresses the
projection of the other view made by a target network, the EMA of the online one, with τ rising
from 0.996 to 1 on a cosine (eq. 1, §3.2). Projector and predictor: 4096 hidden with BN, 256 out.
Loss: the symmetrised normalised MSE, stop-gradient on the target."""
from __future__ import annotations

import dataclasses

from ssl_tf.losses import byol_loss
from ssl_tf.methods.base import Objective, SSLMethod, after, clone_network, encode_views, target_outputs
from ssl_tf.methods.settings import MomentumParams, ProjectorParams, param, register
from ssl_tf.models import mlp
from ssl_tf.optim import cosine_momentum


@register("byol", family="joint")
class BYOL(SSLMethod):
    view_recipe = "asymmetric_two_views"

    # BYOL (Grill et al. 2020, §3.2 and appendix C): LARS 0.2 × batch/256, wd 1.5e-6.
    recipe = dict(optimizer="lars", learning_rate=0.2, weight_decay=1.5e-6)

    @dataclasses.dataclass
    class Params(ProjectorParams, MomentumParams):
        target_momentum: float = param(0.996, "Momentum τ of the target network, rising to 1 on a cosine.",
                                       source="BYOL §3.2: τ_base 0.996")
        proj_hidden: int = param(4096, "Projection hidden width.", source="BYOL §3.2: 4096")
        proj_dim: int = param(256, "Projection / predictor output dimension.", source="BYOL §3.2: 256")
        pred_hidden: int = param(4096, "Predictor hidden width.", source="BYOL §3.2: 4096")

    def __init__(self, encoder, num_classes=0, momentum=0.996, proj_hidden=4096, dim=256, pred_hidden=4096,
                 synchronized_bn=False, ema_bn_stats=False, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.momentum, self.ema_bn_stats = momentum, ema_bn_stats
        self.projector = mlp((proj_hidden, dim), synchronized_bn=synchronized_bn, name="projector",
                             input_dim=encoder.output_shape[-1])
        self.predictor = mlp((pred_hidden, dim), synchronized_bn=synchronized_bn, name="predictor")
        self.target_encoder, self.target_projector = clone_network(encoder), clone_network(self.projector)

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, momentum=p.target_momentum, proj_hidden=p.proj_hidden, dim=p.proj_dim,
                   pred_hidden=p.pred_hidden, synchronized_bn=shared.global_bn, ema_bn_stats=p.ema_bn_stats)

    @property
    def target_pairs(self):
        return [(self.target_encoder, self.encoder), (self.target_projector, self.projector)]

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        t1, t2 = target_outputs(self.target_encoder, self.target_projector, [x1, x2], training)
        x1, x2 = after([t1, t2], x1, x2)                    # the target's forward first (base.after)
        h1, h2 = encode_views(self.encoder, [x1, x2], training)
        z1, z2 = encode_views(self.projector, [h1, h2], training)
        p1, p2 = encode_views(self.predictor, [z1, z2], training)
        return Objective(byol_loss(p1, p2, t1, t2), features=h1, embeddings=z1, logs={})

    def after_update(self, aux, step):
        self.momentum_update(cosine_momentum(self.momentum, step, self.total_steps))
