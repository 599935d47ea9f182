"""A classifier (encoder + linear head) trained with cross-entropy: fine-tuning on labels."""
from __future__ import annotations

import tensorflow as tf

from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.models import linear_head


class Classifier(SSLMethod):
    view_recipe = "crop_flip"

    def __init__(self, encoder, num_classes, zero_init_head=False, **kwargs):
        super().__init__(encoder, num_classes, online_probe=False, **kwargs)
        self.head = linear_head(num_classes, zero_init=zero_init_head, name="classifier")

    def call(self, images, training=False):
        return self.head(self.encoder(images, training=training))

    def objective(self, batch, training):
        labels = batch["label"]
        logits = self(batch["views"], training=training)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        acc = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, -1), labels), tf.float32))
        return Objective(loss, features=None, embeddings=None, logs={"accuracy": acc})
