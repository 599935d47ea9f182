"""AMDIM (Bachman, Hjelm & Buchwalter 2019, "Learning Representations by Maximizing Mutual Information
Across Views").

Two augmented views of each image. The encoder gives features at three scales: the global vector (1×1),
a small local map and a larger one (AMDIM's own 32 px encoder: 5×5 and 7×7; here two backbone stages,
4×4 and 8×8 for a ResNet with the CIFAR stem). Each is embedded to the same dimension, and NCE predicts
across views and scales — the global vector of one view against every location of the other view's
maps (AMDIM's 1-5 and 1-7) and one random location of one view's small map against the other's small
map (5-5) — with the other images of the batch as negatives, soft score clipping and a penalty on the
squared scores. Each prediction runs in both directions (view 1 → 2 and 2 → 1).
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import amdim_nce
from ssl_tf.methods.base import Objective, SSLMethod, feature_map
from ssl_tf.methods.settings import MethodParams, check, param, register
from ssl_tf.models import mi_embedding


@register("amdim", family="infomax")
class AMDIM(SSLMethod):
    view_recipe = "two_views"

    # amdim-public (task_self_supervised.py, train.py): Adam 2e-4 (their β1 0.8 is not exposed: Keras' 0.9),
    # weight decay 1e-5, not scaled with the batch; batch 200 (the code's default); crops from 50% of the area
    # stand in for their ±4 px reflected translation (jitter 0.4 and grey 0.25 are close to our s = 0.5 views).
    recipe = dict(optimizer="adam", learning_rate=2e-4, lr_scaling="none", weight_decay=1e-5, batch_size=200,
                  crop_min_scale=0.5)

    @dataclasses.dataclass
    class Params(MethodParams):
        amdim_small_layer: str = param("block4", "Backbone layer of the small local map (AMDIM's 5×5).",
                                       source="AMDIM §3.4: 5×5 features; block4 is 4×4 at 32 px")
        amdim_large_layer: str = param("block3", "Backbone layer of the large local map (AMDIM's 7×7).",
                                       source="AMDIM §3.4: 7×7 features; block3 is 8×8 at 32 px")
        amdim_rkhs: int = param(1024, "Dimension every scale is embedded to (n_rkhs).",
                                source="amdim-public train.py: n_rkhs 1024")
        amdim_clip: float = param(20.0, "Soft clipping c of the scores, c·tanh(s/c).",
                                  source="amdim-public train.py: tclip 20")
        amdim_reg: float = param(0.05, "Weight of the penalty on the squared raw scores.",
                                 source="amdim-public costs.py: 5e-2")

        def validate(self, shared):
            super().validate(shared)
            check(self.amdim_rkhs >= 1, "amdim_rkhs", self.amdim_rkhs, "must be >= 1")
            check(self.amdim_clip > 0, "amdim_clip", self.amdim_clip, "must be > 0")
            check(self.amdim_reg >= 0, "amdim_reg", self.amdim_reg, "must be >= 0")

    def __init__(self, encoder, num_classes=0, small_layer="block4", large_layer="block3", rkhs=1024, clip=20.0,
                 reg=0.05, synchronized_bn=False, seed=0, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.clip, self.reg, self.seed = clip, reg, seed
        small = feature_map(encoder, small_layer, "amdim_small_layer")
        large = feature_map(encoder, large_layer, "amdim_large_layer")
        self.maps = keras.Model(encoder.input, [encoder.output, small, large])
        self.global_embed = mi_embedding(encoder.output_shape[-1], rkhs, synchronized_bn, name="global_rkhs")
        self.small_embed = mi_embedding(small.shape[-1], rkhs, synchronized_bn, name="small_rkhs")
        self.large_embed = mi_embedding(large.shape[-1], rkhs, synchronized_bn, name="large_rkhs")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, small_layer=p.amdim_small_layer, large_layer=p.amdim_large_layer,
                   rkhs=p.amdim_rkhs, clip=p.amdim_clip, reg=p.amdim_reg, synchronized_bn=shared.global_bn,
                   seed=shared.seed)

    def embed(self, images, training):
        """(global [b, D], small map [b, Ms, D], large map [b, Ml, D]): every scale in the same space."""
        h, small, large = self.maps(images, training=training)

        def locations(fmap, net):
            b, c = tf.shape(fmap)[0], fmap.shape[-1]
            return tf.reshape(net(tf.reshape(fmap, [-1, c]), training=training), [b, -1, net.output_shape[-1]])
        return self.global_embed(h, training=training), locations(small, self.small_embed), \
            locations(large, self.large_embed), h

    def source_locations(self, b, m):
        """One random location per image of the small map (5-5's sources): drawn for the global batch with
        one seed per step and sliced per replica, so that 2 replicas draw what one device does."""
        return self.batch_uniform(b, [], 3, minval=0, maxval=m, dtype=tf.int32)

    def objective(self, batch, training):
        x1, x2 = batch["views"]
        b = tf.shape(x1)[0]
        g, small, large, h = self.embed(tf.concat([x1, x2], 0), training)
        offset = distribute.replica_id() * b
        where = self.source_locations(b, tf.shape(small)[1])
        terms, reg = {"1-5": 0.0, "1-7": 0.0, "5-5": 0.0}, 0.0
        for src, trg in ((slice(None, b), slice(b, None)), (slice(b, None), slice(None, b))):   # both directions
            small_all, large_all = distribute.gather(small[trg]), distribute.gather(large[trg])
            one_location = tf.gather(small[src], where, axis=1, batch_dims=1)                       # [b, D]
            for name, (sources, targets) in (("1-5", (g[src], small_all)), ("1-7", (g[src], large_all)),
                                             ("5-5", (one_location, small_all))):
                nce, penalty = amdim_nce(sources, targets, offset, self.clip, self.reg)
                terms[name] += 0.5 * nce
                reg += 0.5 * penalty
        # amdim-public task_self_supervised.py: the three predictions summed, plus the score penalties
        loss = terms["1-5"] + terms["1-7"] + terms["5-5"] + reg
        return Objective(loss, features=h[:b], embeddings=g[:b],
                         logs={"nce_1_5": terms["1-5"], "nce_1_7": terms["1-7"], "nce_5_5": terms["5-5"]})
