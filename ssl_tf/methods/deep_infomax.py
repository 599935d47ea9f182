"""Deep InfoMax (Hjelm et al. 2019, "Learning Deep Representations by Mutual Information Estimation
and Maximization").

The encoder gives a global vector y (a linear map of the pooled features) and an M×M map of local
features (an intermediate layer). Local DIM maximises a lower bound on the mutual information between
y and every local feature of the same image — each local against the globals of the other images of the
batch as negatives — with an encode-and-dot-product discriminator; global DIM does the same for y and
the whole map; prior matching makes σ(y) look uniform to an adversarial discriminator. The estimator
(Jensen–Shannon, InfoNCE or Donsker–Varadhan) is a flag; so are the weights α (global), β (local) and
γ (prior).
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import MI_ESTIMATORS, discriminator_loss, generator_loss, mi_lower_bound, pair_scores
from ssl_tf.methods.base import Objective, SSLMethod, feature_map
from ssl_tf.methods.settings import MethodParams, check, param, register
from ssl_tf.models import mi_embedding, prior_discriminator


def frozen(sequential: keras.Sequential, x):
    """``sequential`` (Dense layers) applied with its weights held constant: the encoder's adversarial
    loss must move the encoder, not the discriminator it fools."""
    for layer in sequential.layers:
        x = tf.matmul(x, tf.stop_gradient(layer.kernel)) + tf.stop_gradient(layer.bias)
        x = layer.activation(x)
    return x


@register("deep_infomax", family="infomax")
class DeepInfoMax(SSLMethod):
    view_recipe = "crop_flip"

    # rdevon/DIM (the authors' code; its 32 px configuration is the paper's CIFAR-10 one): Adam 1e-4, batch 64,
    # no scaling with the batch and no weight decay; crops from 8% of the area and flips (our light view).
    recipe = dict(optimizer="adam", learning_rate=1e-4, lr_scaling="none", weight_decay=0.0, batch_size=64)

    @dataclasses.dataclass
    class Params(MethodParams):
        dim_local_layer: str = param("block3", "Backbone layer whose map gives the local features (8×8 at 32 px for "
                                               "a ResNet with the CIFAR stem).",
                                     source="rdevon/DIM convnets._basic32x32: an 8×8 local map")
        dim_global_dim: int = param(64, "Dimension of the global vector y.", source="rdevon/DIM: output_units=64")
        dim_mi_units: int = param(2048, "Units of the encode-and-dot-product embeddings.",
                                  source="DIM appendix A.2: 2048")
        dim_estimator: str = param("jsd", "Mutual-information estimator: jsd, infonce or dv.",
                                   source="DIM §3.1: JSD", choices=MI_ESTIMATORS)
        dim_alpha: float = param(0.0, "Weight α of global DIM.", source="DIM §4: DIM(L), α = 0")
        dim_beta: float = param(1.0, "Weight β of local DIM.", source="DIM §4: DIM(L), β = 1")
        dim_gamma: float = param(0.1, "Weight γ of prior matching.", source="DIM §4: DIM(L), γ = 0.1")

        def validate(self, shared):
            super().validate(shared)
            for name in ("dim_global_dim", "dim_mi_units"):
                check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
            for name in ("dim_alpha", "dim_beta", "dim_gamma"):
                check(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
            check(self.dim_alpha + self.dim_beta > 0, "dim_beta", self.dim_beta,
                  "and --dim_alpha are both 0: nothing would maximise mutual information")

    def __init__(self, encoder, num_classes=0, local_layer="block3", global_dim=64, mi_units=2048,
                 estimator="jsd", alpha=0.0, beta=1.0, gamma=0.1, image_size=32, synchronized_bn=False, seed=0,
                 **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.estimator, self.alpha, self.beta, self.gamma, self.seed = estimator, alpha, beta, gamma, seed
        self.maps = keras.Model(encoder.input, [feature_map(encoder, local_layer, "dim_local_layer"), encoder.output])
        _, height, width, channels = self.maps(tf.zeros([1, image_size, image_size, 3]))[0].shape
        self.global_head = keras.layers.Dense(global_dim, name="global_vector")
        self.local_mi = mi_embedding(channels, mi_units, synchronized_bn, name="local_mi")
        self.global_mi = mi_embedding(global_dim, mi_units, synchronized_bn, name="global_mi")
        # global DIM: y against the whole map, flattened
        self.map_mi = mi_embedding(height * width * channels, mi_units, synchronized_bn, name="map_mi") \
            if alpha > 0 else None
        self.prior = prior_discriminator() if gamma > 0 else None

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, local_layer=p.dim_local_layer, global_dim=p.dim_global_dim,
                   mi_units=p.dim_mi_units, estimator=p.dim_estimator, alpha=p.dim_alpha, beta=p.dim_beta,
                   gamma=p.dim_gamma, image_size=shared.image_size, synchronized_bn=shared.global_bn, seed=shared.seed)

    def objective(self, batch, training):
        local_map, h = self.maps(batch["views"], training=training)
        y = self.global_head(h)
        b, c = tf.shape(local_map)[0], local_map.shape[-1]
        g = self.global_mi(y, training=training)                                       # [b, units]
        locals_ = tf.reshape(self.local_mi(tf.reshape(local_map, [-1, c]), training=training), [b, -1, g.shape[-1]])
        offset = distribute.replica_id() * b          # negatives: every image of the global batch
        local_mi = mi_lower_bound(pair_scores(g, distribute.gather(locals_)), self.estimator, offset)
        loss, logs = -self.beta * local_mi, {"local_mi": local_mi}
        if self.map_mi is not None:
            whole = self.map_mi(tf.reshape(local_map, [b, -1]), training=training)[:, None]   # [b, 1, units]
            global_mi = mi_lower_bound(pair_scores(g, distribute.gather(whole)), self.estimator, offset)
            loss, logs["global_mi"] = loss - self.alpha * global_mi, global_mi
        if self.prior is not None:
            fake = tf.sigmoid(y)
            real = tf.random.stateless_uniform(tf.shape(fake), self.step_seed(1))
            d_loss = discriminator_loss(self.prior(real), self.prior(tf.stop_gradient(fake)))
            loss += self.gamma * generator_loss(frozen(self.prior, fake)) + d_loss
            logs["prior_d_loss"] = d_loss
        return Objective(loss, features=h, embeddings=y, logs=logs)
