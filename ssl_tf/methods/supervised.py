"""Classifiers trained on labels: fine-tuning, and the shared part of the semi-supervised methods.

``Classifier``: encoder (optionally followed by the first layers of the pretrained projection
head, SimCLRv2's ``ft_proj_selector``) and a linear head, trained with cross-entropy.

``SemiSupervised``: a ``Classifier`` trained on a labelled stream and an unlabelled stream
of ``mu`` times as many images (FixMatch, MixMatch), with an EMA copy of its weights that
evaluation and export use (both papers report the EMA model).
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssl_tf.data import pipeline, views
from ssl_tf.losses import cross_entropy
from ssl_tf.methods.base import Objective, SSLMethod, clone_network
from ssl_tf.methods.settings import MethodParams, check, param
from ssl_tf.models import classifier_head
from ssl_tf.optim import ema_decay_at


class Classifier(SSLMethod):
    view_recipe = "crop_flip"

    def __init__(self, encoder, num_classes, zero_init_head=False, proj=None, **kwargs):
        super().__init__(encoder, num_classes, online_probe=False, **kwargs)
        self.proj = proj
        dim = encoder.output_shape[-1]
        if proj is not None and proj.layers:
            dim = proj.compute_output_shape((None, dim))[-1]
        else:
            self.proj = None
        self.head = classifier_head(num_classes, dim, zero_init=zero_init_head)

    def features(self, images, training=False):
        h = self.encoder(images, training=training)
        return self.proj(h, training=training) if self.proj is not None else h

    def call(self, images, training=False):
        return self.head(self.features(images, training), training=training)

    def objective(self, batch, training):
        loss, acc = cross_entropy(batch["label"], self(batch["views"], training=training))
        return Objective(loss, features=None, embeddings=None, logs={"accuracy": acc})


class SemiSupervised(Classifier):
    view_recipe = "weak"              # the labelled stream
    unlabelled_recipe = "weak_strong"
    eval_encoder_attr = "ema_encoder"

    needs_labels = True

    @dataclasses.dataclass
    class Params(MethodParams):
        mu: int = param(7, "Unlabelled images per labelled one in a batch.", source="FixMatch §4: μ = 7")
        unlabelled_weight: float = param(1.0, "Weight λ_u of the unlabelled loss.", source="FixMatch §4: λ_u = 1")
        ema_decay: float = param(0.999, "Decay of the weight EMA used for evaluation.",
                                 source="FixMatch appendix B.1, MixMatch §4: 0.999")
        ema_warmup: bool = param(True, "Warm the EMA up: decay min(d, (1 + t)/(10 + t)) at step t, so that a short "
                                       "run's EMA model is not its random start.",
                                 source="tf.train.ExponentialMovingAverage(num_updates)")

        def validate(self, shared):
            super().validate(shared)
            check(self.mu >= 1, "mu", self.mu, "must be >= 1")
            check(self.unlabelled_weight >= 0, "unlabelled_weight", self.unlabelled_weight, "must be >= 0")
            check(0 <= self.ema_decay < 1, "ema_decay", self.ema_decay, "must be in [0, 1)")

    def __init__(self, encoder, num_classes, mu=7, unlabelled_weight=1.0, ema_decay=0.999, ema_warmup=True,
                 **kwargs):
        if num_classes <= 0:
            raise ValueError(f"{type(self).__name__} needs labelled data (num_classes > 0)")
        super().__init__(encoder, num_classes, **kwargs)
        self.mu, self.unlabelled_weight, self.ema_decay = mu, unlabelled_weight, ema_decay
        self.ema_warmup = ema_warmup
        self.ema_encoder = clone_network(encoder, name="ema_encoder")
        self.ema_head = clone_network(self.head, name="ema_head")

    def ema_logits(self, images, training=False):
        return self.ema_head(self.ema_encoder(images, training=False), training=False)

    # -- data: a labelled batch of B and an unlabelled batch of mu·B per step -------------------
    def input_stream(self, examples, augment, *, global_batch, seed, start_step=0, input_context=None):
        return pipeline.semi_stream(examples, views.views_for(self.view_recipe, augment),
                                    views.views_for(self.unlabelled_recipe, augment), global_batch=global_batch,
                                    mu=self.mu, seed=seed, start_step=start_step, input_context=input_context)

    def batches_per_epoch(self, examples, global_batch):
        """An epoch is one pass over the unlabelled images (all training images)."""
        return pipeline.steps_per_epoch(examples, global_batch * self.mu)

    def logits_of_batches(self, images, training):
        """One forward pass over several batches concatenated (BN sees them together, as both
        papers' code does), split back."""
        sizes = [tf.shape(x)[0] for x in images]
        return tf.split(self(tf.concat(images, 0), training=training), sizes, 0)

    ema_bn_stats = True    # the EMA model evaluates with averaged BN statistics too

    @property
    def target_pairs(self):
        return [(self.ema_encoder, self.encoder), (self.ema_head, self.head)]

    def after_update(self, aux, step):
        self.momentum_update(ema_decay_at(self.ema_decay, step) if self.ema_warmup else self.ema_decay)
