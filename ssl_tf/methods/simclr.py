"""SimCLR (Chen et al. 2020): two views, a projection MLP, NT-Xent over the global batch."""
from __future__ import annotations

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import nt_xent
from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.models import projection_head


class SimCLR(SSLMethod):
    view_recipe = "two_views"

    def __init__(self, encoder, num_classes=0, temperature=0.1, proj_dim=128, proj_hidden=None,
                 proj_layers=2, synchronized_bn=False, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.temperature = temperature
        self.projector = projection_head(proj_hidden or encoder.output_shape[-1], proj_dim, proj_layers,
                                         synchronized_bn)

    @classmethod
    def from_config_obj(cls, cfg, encoder, num_classes, **_):
        return cls(encoder, num_classes, temperature=cfg.temperature, proj_dim=cfg.proj_dim,
                   proj_hidden=cfg.proj_hidden, proj_layers=cfg.proj_layers, synchronized_bn=cfg.global_bn)

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        b = tf.shape(x1)[0]
        h = self.encoder(tf.concat([x1, x2], 0), training=training)   # one pass: BN sees both views
        z1, z2 = tf.split(self.projector(h, training=training), 2)
        out = nt_xent(z1, z2, self.temperature, distribute.gather(z1), distribute.gather(z2),
                      offset=distribute.replica_id() * b)
        return Objective(out.loss, features=h[:b], embeddings=z1, logs={"contrast_acc": out.accuracy})
