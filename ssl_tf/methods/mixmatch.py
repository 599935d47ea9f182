"""MixMatch (Berthelot et al. 2019), algorithm 1:

    p = one_hot(y)                                      # labelled batch X̂ = (x_weak, p)
    q = sharpen(mean_k softmax(f(u_k)), T).detach()     # K weak views of each unlabelled image
    Û = ((u_1, q), …, (u_K, q));  W = shuffle(X̂ ∪ Û)
    X' = MixUp(X̂, W[:B]);  U' = MixUp(Û, W[B:])          # λ' = max(λ, 1 − λ), λ ~ Beta(α, α)
    L = H(p', f(x')) + λ_u(t) · ||q' − softmax(f(u'))||² / L
with λ_u ramped up linearly over the first ``rampup`` fraction of training and an EMA of the
weights for evaluation.
"""
from __future__ import annotations

import tensorflow as tf

from ssl_tf.losses import mixmatch_losses, mixup, mixup_lambda, sharpen
from ssl_tf.methods.base import Objective
from ssl_tf.methods.supervised import SemiSupervised


class MixMatch(SemiSupervised):
    unlabelled_recipe = "weak_views"

    def __init__(self, encoder, num_classes, temperature=0.5, alpha=0.75, rampup=1 / 64, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.temperature, self.alpha, self.rampup = temperature, alpha, rampup

    @classmethod
    def from_config_obj(cls, cfg, encoder, num_classes, **_):
        return cls(encoder, num_classes, temperature=cfg.sharpen_temperature, alpha=cfg.mixup_alpha,
                   rampup=cfg.unlabelled_rampup, mu=cfg.mu, unlabelled_weight=cfg.unlabelled_weight,
                   ema_decay=cfg.ema_decay)

    def unlabelled_weight_now(self):
        ramp_steps = self.rampup * self.total_steps
        if ramp_steps <= 0:
            return tf.constant(self.unlabelled_weight, tf.float32)
        progress = tf.cast(self.current_step(), tf.float32) / ramp_steps
        return self.unlabelled_weight * tf.minimum(progress, 1.0)

    def objective(self, batch, training):
        x, y = batch["labelled"]["views"], batch["labelled"]["label"]
        u = batch["unlabelled"]["views"]                                   # [n, K, S, S, 3]
        k = u.shape[1]
        u_views = [u[:, i] for i in range(k)]
        p = tf.one_hot(y, self.num_classes)
        guesses = self.logits_of_batches(u_views, training)
        q = tf.stop_gradient(sharpen(tf.add_n([tf.nn.softmax(g) for g in guesses]) / k, self.temperature))
        inputs = tf.concat([x] + u_views, 0)
        targets = tf.concat([p] + [q] * k, 0)
        total = tf.shape(inputs)[0]
        order = tf.random.experimental.stateless_shuffle(tf.range(total), self.step_seed(1))
        lam = mixup_lambda(self.step_seed(2), total, self.alpha)
        mixed_x, mixed_p = mixup(inputs, targets, tf.gather(inputs, order), tf.gather(targets, order), lam)
        b = tf.shape(x)[0]
        logits = self(mixed_x, training=training)
        lx, lu = mixmatch_losses(mixed_p[:b], logits[:b], mixed_p[b:], logits[b:])
        weight = self.unlabelled_weight_now()
        return Objective(lx + weight * lu, features=None, embeddings=None,
                         logs={"supervised_loss": lx, "unlabelled_loss": lu, "unlabelled_weight": weight})
