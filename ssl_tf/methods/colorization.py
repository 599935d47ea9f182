"""Colorization (Zhang et al. 2016): predict each pixel's quantised ab colour from lightness.

The encoder sees only the L channel of its RGB input (``encoder_input = 'lightness'``: a
``Lightness`` layer inside the backbone, so linear eval and the exported SavedModel feed
RGB as for every method). A 1×1 convolution on the last spatial feature map predicts a
distribution over the Q in-gamut ab bins; logits are bilinearly upsampled to a quarter of
the input side (Zhang et al. predict at 1/4 resolution) and trained with class-rebalanced
cross-entropy against the bin of the area-averaged ab of each output pixel.

Rebalancing (eq. 4, λ = 0.5, σ = 5): Zhang et al. estimate the bin prior on all of
ImageNet beforehand; here it is the running histogram of every target pixel seen so far
(summed over replicas, checkpointed), so no extra pass over the data is needed. Targets
are one-hot (nearest bin) rather than soft-encoded over 5 neighbours.
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import layers

from ssl_tf import distribute
from ssl_tf.data import color
from ssl_tf.losses import rebalanced_cross_entropy, rebalancing_weights
from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.methods.settings import REVISITING_RECIPE, MethodParams, check, param, register
from ssl_tf.models import spatial_output

OUTPUT_FRACTION = 4   # predict at 1/4 of the input side


@register("colorization", family="pretext")
class Colorization(SSLMethod):
    view_recipe = "crop_flip"
    encoder_input = "lightness"

    recipe = REVISITING_RECIPE

    @dataclasses.dataclass
    class Params(MethodParams):
        rebalance_lambda: float = param(0.5, "Class-rebalancing mix λ with the uniform prior.",
                                        source="Zhang et al. 2016 §2.2: 0.5")

        def validate(self, shared):
            super().validate(shared)
            check(0 <= self.rebalance_lambda <= 1, "rebalance_lambda", self.rebalance_lambda, "must be in [0, 1]")

    def __init__(self, encoder, num_classes=0, rebalance_lambda=0.5, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        centres, _ = color.ab_bins()
        self.centres = tf.constant(centres)
        self.num_bins = len(centres)
        self.rebalance_lambda = rebalance_lambda
        self.dense_encoder = keras.Model(encoder.input, [spatial_output(encoder), encoder.output])
        self.color_head = layers.Conv2D(self.num_bins, 1, name="color_head")
        self.bin_counts = self.add_weight(shape=(self.num_bins,), initializer="zeros", trainable=False,
                                          name="bin_counts", aggregation="only_first_replica")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, rebalance_lambda=p.rebalance_lambda)

    def objective(self, batch, training):
        rgb = batch["views"]                                           # [b, S, S, 3] in [0, 1]
        side = max(1, rgb.shape[1] // OUTPUT_FRACTION)
        fmap, features = self.dense_encoder(rgb, training=training)
        logits = tf.image.resize(self.color_head(fmap), [side, side], method="bilinear")
        ab = tf.image.resize(color.rgb_to_lab(rgb)[..., 1:], [side, side], method="area")
        targets = tf.reshape(color.quantize_ab(ab), [-1])
        if training:
            counts = tf.math.bincount(targets, minlength=self.num_bins, maxlength=self.num_bins, dtype=tf.float32)
            self.bin_counts.assign_add(distribute.cross_replica_sum(counts))
        weights = rebalancing_weights(self.bin_counts + 1.0, self.centres, self.rebalance_lambda)
        logits = tf.reshape(logits, [-1, self.num_bins])
        loss = rebalanced_cross_entropy(targets, logits, weights)
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), tf.float32))
        return Objective(loss, features=features, embeddings=None, logs={"color_acc": acc})
