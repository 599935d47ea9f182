"""MoCo v3 (Chen, Xie & He 2021, Alg. 1): no queue; the keys of the global batch are the
negatives. Query path: backbone → projector (3 layers, 4096 hidden, 256, BN everywhere) →
predictor (2 layers, 4096, 256); key path: momentum backbone → momentum projector, with the
momentum rising from 0.99 to 1 on a cosine. Symmetric loss ctr(q1, k2) + ctr(q2, k1)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import batch_contrastive
from ssl_tf.methods.base import Objective, SSLMethod, after, clone_network, encode_views, target_outputs
from ssl_tf.methods.settings import MomentumParams, ProjectorParams, check, param, register
from ssl_tf.models import mlp
from ssl_tf.optim import cosine_momentum


@register("moco_v3", family="joint")
class MoCoV3(SSLMethod):
    view_recipe = "asymmetric_two_views"

    # MoCo v3 ResNet-50 (facebookresearch/moco-v3 main_moco.py): LARS 0.6 × batch/256, wd 1e-6.
    recipe = dict(optimizer="lars", learning_rate=0.6, weight_decay=1e-6)

    @dataclasses.dataclass
    class Params(ProjectorParams, MomentumParams):
        temperature: Optional[float] = param(None, "InfoNCE temperature (ResNet 1.0, ViT 0.2).",
                                             source="moco-v3 main_moco.py --moco-t: 1.0 (ResNet), 0.2 (ViT)")
        target_momentum: float = param(0.99, "Momentum m of the momentum encoder, rising to 1 on a cosine.",
                                       source="moco-v3: --moco-m 0.99, --moco-m-cos")
        proj_hidden: int = param(4096, "Projection hidden width.", source="moco-v3 --moco-mlp-dim 4096")
        proj_dim: int = param(256, "Projection / predictor output dimension.", source="moco-v3 --moco-dim 256")
        pred_hidden: int = param(4096, "Predictor hidden width.", source="moco-v3 --moco-mlp-dim 4096")

        def resolve(self, shared):
            if self.temperature is None:
                self.temperature = 0.2 if shared.backbone.startswith("vit") else 1.0

        def validate(self, shared):
            super().validate(shared)
            check(self.temperature > 0, "temperature", self.temperature, "must be > 0")

    def __init__(self, encoder, num_classes=0, temperature=1.0, momentum=0.99, proj_hidden=4096, dim=256,
                 pred_hidden=4096, synchronized_bn=False, ema_bn_stats=False, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.temperature, self.momentum, self.ema_bn_stats = temperature, momentum, ema_bn_stats
        self.projector = mlp((proj_hidden, proj_hidden, dim), last_bn=True, synchronized_bn=synchronized_bn,
                             name="projector", input_dim=encoder.output_shape[-1])
        self.predictor = mlp((pred_hidden, dim), last_bn=True, synchronized_bn=synchronized_bn, name="predictor")
        self.momentum_encoder, self.momentum_projector = clone_network(encoder), clone_network(self.projector)

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, temperature=p.temperature, momentum=p.target_momentum,
                   proj_hidden=p.proj_hidden, dim=p.proj_dim, pred_hidden=p.pred_hidden,
                   synchronized_bn=shared.global_bn, ema_bn_stats=p.ema_bn_stats)

    @property
    def target_pairs(self):
        return [(self.momentum_encoder, self.encoder), (self.momentum_projector, self.projector)]

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        k1, k2 = target_outputs(self.momentum_encoder, self.momentum_projector, [x1, x2], training)
        x1, x2 = after([k1, k2], x1, x2)                    # the momentum forward first (base.after)
        h1, h2 = encode_views(self.encoder, [x1, x2], training)
        q1, q2 = (self.predictor(z, training=training)
                  for z in encode_views(self.projector, [h1, h2], training))
        offset = distribute.replica_id() * tf.shape(x1)[0]
        a = batch_contrastive(q1, distribute.gather(k2), self.temperature, offset)
        b = batch_contrastive(q2, distribute.gather(k1), self.temperature, offset)
        return Objective(a.loss + b.loss, features=h1, embeddings=q1,
                         logs={"contrast_acc": 0.5 * (a.accuracy + b.accuracy)})

    def after_update(self, aux, step):
        self.momentum_update(cosine_momentum(self.momentum, step, self.total_steps))
