"""SimCLR (Chen et al. 2020): two views, a projection MLP, NT-Xent over the global batch."""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import nt_xent
from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.methods.settings import MethodParams, check, param, register
from ssl_tf.models import projection_head


@register("simclr", family="joint")
class SimCLR(SSLMethod):
    view_recipe = "two_views"
    # The shared defaults (LARS 0.3 × batch/256, wd 1e-6, 10 warm-up epochs) are SimCLR's own (config.py).
    # On the built-in shapes dataset: LARS with square-root lr scaling, which SimCLR (appendix B.1) found
    # better for short training, at 0.15·√batch (measured over 200 steps of batch 256: linear probe 21.4%
    # random -> 39.4% at 0.15·√256, 34.9% at SimCLR's 0.075·√256, 37.2% at 0.3·√256, 33.3% with Adam 4e-3).
    # 24 px and batch 64 end the demo within 5 minutes on a 2-core AVX2 CPU (2 min 22 s on a 2-core AMD
    # EPYC Zen 4, 3 min 0 s with its oneDNN limited to AVX2 kernels, 2026-12-01); there 32 px / batch 128
    # took 171.5 s at +17.3 linear points over the random backbone, 24 px / 128 110.7 s at +15.6, 24 px /
    # 64 114.3 s at +19.2 (the shapes stay recognisable at 24 px; the step costs ~0.6x).
    shapes_recipe = dict(optimizer="lars", learning_rate=0.15, lr_scaling="sqrt", weight_decay=1e-6,
                         temperature=0.2, batch_size=64, image_size=24)

    @dataclasses.dataclass
    class Params(MethodParams):
        temperature: Optional[float] = param(None, "NT-Xent temperature τ (0.1; 0.5 at <= 32 px).",
                                             source="SimCLR §B.9 (ImageNet 0.1), tf2 CIFAR-10 recipe 0.5")
        proj_dim: int = param(128, "Projection output dimension.", source="SimCLR §B.1: 128")
        proj_hidden: Optional[int] = param(None, "Projection hidden width (default: the backbone's feature "
                                                 "dimension).", source="SimCLR §2.1")
        proj_layers: int = param(2, "Projection MLP layers (SimCLR v1: 2, v2: 3).", source="SimCLRv2 §2")

        def resolve(self, shared):
            if self.temperature is None:
                self.temperature = 0.5 if shared.image_size <= 32 else 0.1

        def validate(self, shared):
            super().validate(shared)
            check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
            check(self.proj_dim >= 1, "proj_dim", self.proj_dim, "must be >= 1")
            check(self.proj_hidden is None or self.proj_hidden >= 1, "proj_hidden", self.proj_hidden, "must be >= 1")
            check(self.proj_layers >= 1, "proj_layers", self.proj_layers, "must be >= 1")

    def __init__(self, encoder, num_classes=0, temperature=0.1, proj_dim=128, proj_hidden=None,
                 proj_layers=2, synchronized_bn=False, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.temperature = temperature
        self.projector = projection_head(proj_hidden or encoder.output_shape[-1], proj_dim, proj_layers,
                                         synchronized_bn)

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, temperature=p.temperature, proj_dim=p.proj_dim, proj_hidden=p.proj_hidden,
                   proj_layers=p.proj_layers, synchronized_bn=shared.global_bn)

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        b = tf.shape(x1)[0]
        h = self.encoder(tf.concat([x1, x2], 0), training=training)   # one pass: BN sees both views
        z1, z2 = tf.split(self.projector(h, training=training), 2)
        out = nt_xent(z1, z2, self.temperature, distribute.gather(z1), distribute.gather(z2),
                      offset=distribute.replica_id() * b)
        return Objective(out.loss, features=h[:b], embeddings=z1, logs={"contrast_acc": out.accuracy})
