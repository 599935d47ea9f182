"""SimSiam (Chen & He 2021): one shared encoder, a projector (3 layers of 2048, BN on every one),
a predictor (2048 → 512 → 2048), and the symmetric negative cosine with a stop-gradient on the
projection. ``fix_pred_lr`` trains the predictor at the constant base lr (the paper's §4.2 /
the official ``--fix-pred-lr``) with its own optimizer."""
from __future__ import annotations

import dataclasses

from ssl_tf.losses import simsiam_loss
from ssl_tf.methods.base import Objective, SSLMethod, encode_views
from ssl_tf.methods.settings import ProjectorParams, param, register
from ssl_tf.models import mlp


@register("simsiam", family="joint")
class SimSiam(SSLMethod):
    view_recipe = "two_views"

    # SimSiam (Chen & He 2021, §4): SGD 0.05 × batch/256, wd 1e-4, no warm-up, crops from 20% of the area.
    recipe = dict(optimizer="sgd", learning_rate=0.05, weight_decay=1e-4, warmup_epochs=0.0, crop_min_scale=0.2)

    @dataclasses.dataclass
    class Params(ProjectorParams):
        proj_hidden: int = param(2048, "Projection hidden width.", source="SimSiam §4: 2048")
        proj_dim: int = param(2048, "Projection / predictor output dimension.", source="SimSiam §4: 2048")
        pred_hidden: int = param(512, "Predictor hidden width (the bottleneck).", source="SimSiam §4: 512")
        fix_pred_lr: bool = param(True, "Train the predictor at the constant base lr.",
                                  source="facebookresearch/simsiam --fix-pred-lr")

    def __init__(self, encoder, num_classes=0, proj_hidden=2048, dim=2048, pred_hidden=512, fix_pred_lr=True,
                 synchronized_bn=False, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.fix_pred_lr = fix_pred_lr
        self.projector = mlp((proj_hidden, proj_hidden, dim), last_bn=True, synchronized_bn=synchronized_bn,
                             name="projector")
        self.predictor = mlp((pred_hidden, dim), synchronized_bn=synchronized_bn, name="predictor")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, proj_hidden=p.proj_hidden, dim=p.proj_dim, pred_hidden=p.pred_hidden,
                   fix_pred_lr=p.fix_pred_lr, synchronized_bn=shared.global_bn)

    @property
    def fixed_lr_variables(self):
        return list(self.predictor.trainable_variables) if self.fix_pred_lr else []

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        h1, h2 = encode_views(self.encoder, [x1, x2], training)
        z1, z2 = encode_views(self.projector, [h1, h2], training)
        p1, p2 = encode_views(self.predictor, [z1, z2], training)
        return Objective(simsiam_loss(p1, p2, z1, z2), features=h1, embeddings=z1, logs={})
