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

import glob
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from ssl_tf.data import views
from ssl_tf.data.sources import MAX_IMAGE_PIXELS
from ssl_tf.errors import SSLTFError


def export_encoder(encoder: keras.Model, path: str, image_size: int) -> str:
    return _export(encoder, path, image_size, "features")


def export_classifier(classifier: keras.Model, path: str, image_size: int) -> str:
    """A fine-tuned classifier (a distillation teacher): images -> ``{"logits"}``."""
    return _export(classifier, path, image_size, "logits")


def export_generator(generator: keras.Model, path: str, image_size: int | None = None) -> str:
    """A generator (BigBiGAN's EMA G): ``serving_default``: ``z`` float32 [batch, latent_dim] ->
    ``{"images": [batch, S, S, 3]}`` in [0, 1]."""
    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_endpoint("serving_default", lambda z: {"images": generator(z, training=False)},
                         input_signature=[tf.TensorSpec([None, generator.input_shape[-1]], tf.float32, name="z")])
    return _write(archive, path)


def _export(model: keras.Model, path: str, image_size: int, output: str) -> str:
    archive = keras.export.ExportArchive()
    archive.track(model)

    def features(images):
        return {output: model(images, training=False)}

    def from_bytes(encoded):
        def decode(data):
            check = tf.debugging.assert_less_equal(header_pixels(data), tf.constant(MAX_IMAGE_PIXELS, tf.int64),
                                                   message=f"image declares more than {MAX_IMAGE_PIXELS} pixels")
            with tf.control_dependencies([check]):   # the decoder must not start on a bomb before the check fails
                image = tf.io.decode_image(data, channels=3, expand_animations=False)
            image.set_shape([None, None, 3])
            return views.eval_view(image, image_size)
        images = tf.map_fn(decode, encoded, fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))
        return features(images)

    archive.add_endpoint("serving_default", features,
                         input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, name="images")])
    archive.add_endpoint("serve_bytes", from_bytes,
                         input_signature=[tf.TensorSpec([None], tf.string, name="encoded")])
    return _write(archive, path)


def _write(archive: keras.export.ExportArchive, path: str) -> str:
    """Write ``archive`` beside ``path`` and rename it into place."""
    path = os.path.abspath(path)
    _recover(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    archive.write_out(tmp, verbose=False)
    old = f"{path}.old-{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def _recover(path: str) -> None:
    """A kill between moving the previous export aside and moving the new one in leaves only
    ``path.old-PID``: put it back (the new one is redone by the next run)."""
    for leftover in glob.glob(f"{path}.tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    olds = sorted(glob.glob(f"{path}.old-*"), key=os.path.getmtime)
    if olds and not os.path.exists(path):
        os.replace(olds[-1], path)
    for leftover in glob.glob(f"{path}.old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def header_pixels(data: tf.Tensor) -> tf.Tensor:
    """Width × height an encoded image declares in its header, read before decoding (int64; 0 when
    the format is none of JPEG, PNG, GIF, BMP — ``decode_image`` then refuses it anyway)."""
    def unsigned(offset, size, big_endian):
        raw = tf.cast(tf.io.decode_raw(tf.strings.substr(data, offset, size), tf.uint8), tf.int64)
        weights = [256 ** (size - 1 - i) if big_endian else 256 ** i for i in range(size)]
        return tf.reduce_sum(raw * tf.constant(weights, tf.int64))

    def png():
        return unsigned(16, 4, True) * unsigned(20, 4, True)

    def gif():
        return unsigned(6, 2, False) * unsigned(8, 2, False)

    def bmp():   # signed 32-bit width and height (a negative height: top-down rows)
        def signed(offset):
            v = unsigned(offset, 4, False)
            return tf.abs(tf.where(v >= 2 ** 31, v - 2 ** 32, v))
        return signed(18) * signed(22)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(data), tf.int64)
        return shape[0] * shape[1]

    length = tf.strings.length(data)
    head = tf.strings.substr(data, 0, 4)
    return tf.case([(tf.logical_and(tf.equal(tf.strings.substr(data, 0, 2), b"\xff\xd8"), length >= 4), jpeg),
                    (tf.logical_and(tf.equal(head, b"\x89PNG"), length >= 24), png),
                    (tf.logical_and(tf.equal(tf.strings.substr(data, 0, 3), b"GIF"), length >= 10), gif),
                    (tf.logical_and(tf.equal(tf.strings.substr(data, 0, 2), b"BM"), length >= 26), bmp)],
                   default=lambda: tf.constant(0, tf.int64), exclusive=False)


class FeatureExtractor:
    """An exported encoder (or classifier) with its inputs checked: one-line errors instead of
    TensorFlow's signature mismatch tracebacks.

    ``extractor(images)``: uint8 in [0, 255] or float in [0, 1], [batch, height, width, 3] or one
    [height, width, 3] image -> the ``features`` (or ``logits``) array. ``extractor.from_bytes(list)``:
    encoded JPEG/PNG/BMP/GIF images.
    """

    MIN_SIDE = 8

    def __init__(self, path: str):
        if not isinstance(path, (str, os.PathLike)):
            raise SSLTFError(f"export path: expected a directory path, got {type(path).__name__}")
        path = os.fspath(path)
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            _recover(os.path.abspath(path))
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise SSLTFError(f"export {path}: not a SavedModel directory (no saved_model.pb); "
                             "write one with --mode=export")
        self.path = path
        try:
            self.model = tf.saved_model.load(path)
            self.output = next(iter(self.model.signatures["serving_default"].structured_outputs))
        except Exception as e:  # noqa: BLE001 — protobuf DecodeError, OpError, KeyError: a damaged export
            raise SSLTFError(f"export {path}: cannot be loaded, the SavedModel is damaged or not ssl_tf's "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no message'}); "
                             "write it again with --mode=export") from None

    def __call__(self, images) -> np.ndarray:
        where = f"export {self.path}: input"
        try:
            x = images.numpy() if isinstance(images, tf.Tensor) else np.asarray(images)
        except ValueError:   # a ragged list: rows of different shapes
            raise SSLTFError(f"{where} is ragged (images of different shapes); pass one [batch, height, width, 3] "
                             "array, or call once per size") from None
        if x.dtype == np.uint8:
            x = x.astype(np.float32) / 255.0
        elif np.issubdtype(x.dtype, np.floating):
            x = x.astype(np.float32)
            if not np.isfinite(x).all():
                raise SSLTFError(f"{where} holds NaN or Inf values")
            if x.size and (x.max() > 1.0 + 1e-3 or x.min() < -1e-3):
                raise SSLTFError(f"{where} floats span [{x.min():.3g}, {x.max():.3g}]; expected [0, 1] "
                                 "(divide by 255, or pass uint8)")
        else:
            raise SSLTFError(f"{where} has dtype {x.dtype}; accepted: uint8 in [0, 255] or float in [0, 1]")
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < self.MIN_SIDE or x.shape[0] == 0:
            raise SSLTFError(f"{where} has shape {tuple(np.shape(images))}; expected [batch, height, width, 3] "
                             f"(or [height, width, 3]) RGB with height, width >= {self.MIN_SIDE} and batch >= 1")
        return self.model.serve(tf.constant(x))[self.output].numpy() if hasattr(self.model, "serve") else \
            self.model.signatures["serving_default"](images=tf.constant(x))[self.output].numpy()

    def from_bytes(self, encoded) -> np.ndarray:
        encoded = list(encoded)
        if not encoded or not all(isinstance(e, (bytes, bytearray)) for e in encoded):
            raise SSLTFError(f"export {self.path}: from_bytes expects a non-empty list of encoded image bytes")
        for i, data in enumerate(encoded):
            try:
                pixels = int(header_pixels(tf.constant(bytes(data))))
                if pixels > MAX_IMAGE_PIXELS:
                    raise SSLTFError(f"export {self.path}: encoded image {i} declares {pixels:,} pixels, more than "
                                     f"the {MAX_IMAGE_PIXELS:,} ssl_tf decodes (a decompression bomb?)")
                tf.io.decode_image(bytes(data), channels=3, expand_animations=False)
            except SSLTFError:      # a ValueError too: the bomb's message as it is, not wrapped and clipped
                raise
            except (tf.errors.InvalidArgumentError, ValueError) as e:
                raise SSLTFError(f"export {self.path}: encoded image {i} cannot be decoded "
                                 f"({str(e).splitlines()[0][:120]}); accepted: JPEG/PNG/BMP/GIF bytes") from None
        out = self.model.signatures["serve_bytes"](encoded=tf.constant([bytes(e) for e in encoded]))
        return out[self.output].numpy()


def load_feature_extractor(path: str) -> FeatureExtractor:
    return FeatureExtractor(path)
