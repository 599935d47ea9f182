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

import dataclasses

import tensorflow as tf

from ssl_tf.losses import mixmatch_losses, mixup, mixup_lambda, sharpen
from ssl_tf.methods.base import Objective
from ssl_tf.methods.settings import check, param, register
from ssl_tf.methods.supervised import SemiSupervised


@register("mixmatch", family="semi")
class MixMatch(SemiSupervised):
    unlabelled_recipe = "weak_views"

    # MixMatch (Berthelot et al. 2019, §4 and google-research/mixmatch): Adam 0.002, weight decay 0.02 · lr
    # (decoupled: our adamw with 4e-5 = 0.02 × 0.002), batch 64, no warm-up.
    recipe = dict(optimizer="adamw", learning_rate=0.002, lr_scaling="none", weight_decay=4e-5, warmup_epochs=0.0,
                  batch_size=64)

    @dataclasses.dataclass
    class Params(SemiSupervised.Params):
        mu: int = param(1, "Unlabelled images per labelled one in a batch.", source="MixMatch §4: equal batches")
        unlabelled_weight: float = param(75.0, "Weight λ_u of the unlabelled loss, ramped up linearly.",
                                         source="MixMatch §4.1: 75 on CIFAR-10")
        unlabelled_rampup: float = param(1 / 64, "Fraction of training over which λ_u ramps up linearly.",
                                         source="google-research/mixmatch: 16,384 of 2^20 steps")
        sharpen_temperature: float = param(0.5, "Sharpening temperature T.", source="MixMatch §4: 0.5")
        mixup_alpha: float = param(0.75, "MixUp Beta(α, α) parameter.", source="MixMatch §4: 0.75")
        num_guesses: int = param(2, "Weak augmentations K averaged for the label guess.", source="MixMatch §4: K = 2")

        def validate(self, shared):
            super().validate(shared)
            check(0 <= self.unlabelled_rampup <= 1, "unlabelled_rampup", self.unlabelled_rampup, "must be in [0, 1]")
            check(self.sharpen_temperature > 0, "sharpen_temperature", self.sharpen_temperature, "must be > 0")
            check(self.mixup_alpha > 0, "mixup_alpha", self.mixup_alpha, "must be > 0")
            check(self.num_guesses >= 1, "num_guesses", self.num_guesses, "must be >= 1")

        def augment(self):
            return dict(num_guesses=self.num_guesses)

    def __init__(self, encoder, num_classes, temperature=0.5, alpha=0.75, rampup=1 / 64, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.temperature, self.alpha, self.rampup = temperature, alpha, rampup

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, temperature=p.sharpen_temperature, alpha=p.mixup_alpha,
                   rampup=p.unlabelled_rampup, mu=p.mu, unlabelled_weight=p.unlabelled_weight, ema_decay=p.ema_decay,
                   ema_warmup=p.ema_warmup)

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
