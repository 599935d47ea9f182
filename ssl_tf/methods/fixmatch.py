"""FixMatch (Sohn et al. 2020): pseudo-labels from weakly augmented unlabelled images, kept
when confident, train the prediction on a strongly augmented view of the same image.

    logits_x, logits_w, logits_s = f(x_weak), f(u_weak), f(u_strong)    # one pass, BN over all
    L_s = H(y, logits_x)
    q = softmax(logits_w).detach();  mask = max q ≥ τ
    L_u = mean(mask · H(argmax q, logits_s))
    L = L_s + λ_u · L_u ;  update ;  EMA of the weights for evaluation
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssl_tf.losses import cross_entropy, fixmatch_unlabelled_loss
from ssl_tf.methods.base import Objective
from ssl_tf.methods.settings import check, param, register
from ssl_tf.methods.supervised import SemiSupervised


@register("fixmatch", family="semi")
class FixMatch(SemiSupervised):
    unlabelled_recipe = "weak_strong"

    # FixMatch (Sohn et al. 2020, §4 and appendix B.1, CIFAR-10): SGD Nesterov 0.03, wd 5e-4, batch 64, no warm-up.
    recipe = dict(optimizer="sgd", learning_rate=0.03, lr_scaling="none", weight_decay=5e-4, warmup_epochs=0.0,
                  batch_size=64)

    @dataclasses.dataclass
    class Params(SemiSupervised.Params):
        threshold: float = param(0.95, "Confidence threshold τ of the pseudo-labels.", source="FixMatch §4: 0.95")

        def validate(self, shared):
            super().validate(shared)
            check(0 < self.threshold <= 1, "threshold", self.threshold, "must be in (0, 1]")

    def __init__(self, encoder, num_classes, threshold=0.95, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.threshold = threshold

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, threshold=p.threshold, mu=p.mu, unlabelled_weight=p.unlabelled_weight,
                   ema_decay=p.ema_decay,
                   ema_warmup=p.ema_warmup)

    def objective(self, batch, training):
        x = batch["labelled"]["views"]
        u_weak, u_strong = batch["unlabelled"]["views"]
        logits_x, logits_w, logits_s = self.logits_of_batches([x, u_weak, u_strong], training)
        sup_loss, sup_acc = cross_entropy(batch["labelled"]["label"], logits_x)
        unsup_loss, mask = fixmatch_unlabelled_loss(logits_w, logits_s, self.threshold)
        loss = sup_loss + self.unlabelled_weight * unsup_loss
        return Objective(loss, features=None, embeddings=None,
                         logs={"supervised_loss": sup_loss, "accuracy": sup_acc, "unlabelled_loss": unsup_loss,
                               "mask_rate": tf.reduce_mean(mask)})

