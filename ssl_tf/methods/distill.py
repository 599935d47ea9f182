"""SimCLRv2 distillation (Chen et al. 2020b, §2.3): a fixed teacher labels the (unlabelled)
training images with temperature-softened probabilities and a student learns them.

    t = teacher(x).detach();  s = student(x)
    L = (1 − α) · (−Σ_y softmax(t/τ) log softmax(s/τ)) + α · H(y, s)   [α: labelled examples only]
"""
from __future__ import annotations

import keras
import tensorflow as tf

from ssl_tf.errors import SSLTFError
from ssl_tf.losses import cross_entropy, distillation_loss
from ssl_tf.methods.base import Objective, after
from ssl_tf.methods.supervised import Classifier


def load_teacher(path: str) -> keras.layers.Layer:
    """A classifier as a frozen layer, images -> logits: a SavedModel (``export_classifier``) or a
    ``.keras`` file, which is loaded with ``safe_mode=True`` (no Python lambdas are deserialised).
    Both run the model's own graph: load only teachers from sources you trust."""
    if path.endswith(".keras"):
        try:
            model = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as e:  # noqa: BLE001 — Keras raises ValueError, TypeError, OSError, zip errors…
            raise SSLTFError(f"--teacher={path}: cannot be loaded safely ({str(e).splitlines()[0][:200]}); "
                             "accepted: a .keras classifier without Lambda layers, or a SavedModel "
                             "written by --mode=finetune") from None
        model.trainable = False
        return model
    return keras.layers.TFSMLayer(path, call_endpoint="serving_default", trainable=False, name="teacher")


class Distiller(Classifier):
    view_recipe = "crop_flip"

    def __init__(self, student_encoder, num_classes, teacher, temperature=1.0, alpha=0.0, **kwargs):
        super().__init__(student_encoder, num_classes, **kwargs)
        self.teacher, self.temperature, self.alpha = teacher, temperature, alpha

    def teacher_logits(self, images, training=False):
        out = self.teacher(images)
        return tf.stop_gradient(out["logits"] if isinstance(out, dict) else out)

    def objective(self, batch, training):
        x, y = batch["views"], batch["label"]
        t = self.teacher_logits(x)
        x, = after(t, x)                                    # the teacher's forward first (base.after)
        s = self(x, training=training)
        loss = distillation_loss(t, s, self.temperature)
        logs = {"distill_loss": loss,
                "teacher_agreement": tf.reduce_mean(tf.cast(tf.equal(tf.argmax(s, -1), tf.argmax(t, -1)), tf.float32))}
        if self.alpha > 0:
            sup, _ = cross_entropy(tf.maximum(y, 0), s, y >= 0)
            loss = (1.0 - self.alpha) * loss + self.alpha * sup
            logs["supervised_loss"] = sup
        return Objective(loss, features=None, embeddings=None, logs=logs)
