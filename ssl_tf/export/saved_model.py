"""Export the encoder as a reusable SavedModel feature extractor.

Signatures (``export_classifier`` the same with ``{"logits": [batch, classes]}``):
  ``serving_default``: ``images`` float32 [batch, height, width, 3] in [0, 1] (any batch,
      any height/width) -> ``{"features": [batch, F]}``;
  ``serve_bytes``: ``encoded`` string [batch] of JPEG/PNG/BMP/GIF bytes -> ``{"features"}``,
      each image decoded to RGB and preprocessed as in evaluation (resized to the training side).

It loads with ``tf.saved_model.load`` and ``keras.layers.TFSMLayer`` (``trainable=True``
fine-tunes it). The directory is written next to the target and renamed into place, so an
interrupted export never leaves a half-written model where a complete one was.
"""
from __future__ import annotations

import os
import shutil

import keras
import tensorflow as tf

from ssl_tf.data import views


def export_encoder(encoder: keras.Model, path: str, image_size: int) -> str:
    return _export(encoder, path, image_size, "features")


def export_classifier(classifier: keras.Model, path: str, image_size: int) -> str:
    """A fine-tuned classifier (a distillation teacher): images -> ``{"logits"}``."""
    return _export(classifier, path, image_size, "logits")


def _export(model: keras.Model, path: str, image_size: int, output: str) -> str:
    archive = keras.export.ExportArchive()
    archive.track(model)

    def features(images):
        return {output: model(images, training=False)}

    def from_bytes(encoded):
        def decode(data):
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return views.eval_view(image, image_size)
        images = tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
        return features(images)

    archive.add_endpoint("serving_default", features,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    archive.add_endpoint("serve_bytes", from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="encoded")])
    path = os.path.abspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    old = f"{path}.old-{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path
