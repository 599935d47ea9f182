"""The patch-grid encoder of CPC (van den Oord et al. 2018, §3.3; Hénaff et al. 2020, §3): an image
is cut into a grid of overlapping patches, every patch is encoded by the same backbone, and the
image's representation is the mean of its patch vectors — what evaluation, fine-tuning and the
exported SavedModel see (images in, one vector out)."""
from __future__ import annotations

import keras
import tensorflow as tf

from ssl_tf.data import patches


@keras.saving.register_keras_serializable("ssl_tf")
class PatchGrid(keras.layers.Layer):
    """[B, H, W, C] -> [B·G·G, P, P, C]: each image's G×G patches of side P at ``stride``, row-major."""

    def __init__(self, patch_size: int, stride: int, **kwargs):
        super().__init__(**kwargs)
        self.patch_size, self.stride = patch_size, stride

    def call(self, images):
        p = self.patch_size
        return tf.reshape(patches.overlapping_grid(images, p, self.stride), [-1, p, p, images.shape[-1]])

    def compute_output_shape(self, shape):
        return (None, self.patch_size, self.patch_size, shape[-1])

    def get_config(self):
        return {**super().get_config(), "patch_size": self.patch_size, "stride": self.stride}


@keras.saving.register_keras_serializable("ssl_tf")
class GridMean(keras.layers.Layer):
    """([B·G·G, F] patch vectors, [B, …] images) -> [B, F]: the mean of each image's patch vectors."""

    def call(self, inputs):
        vectors, images = inputs
        return tf.reduce_mean(tf.reshape(vectors, [tf.shape(images)[0], -1, vectors.shape[-1]]), 1)

    def compute_output_shape(self, shapes):
        return (shapes[1][0], shapes[0][-1])


def patch_grid_encoder(backbone: keras.Model, patch_size: int, stride: int, name: str = "patch_grid") -> keras.Model:
    """images [B, H, W, 3] -> [B, F], the mean over the grid of ``backbone``'s patch vectors; the
    backbone stays reachable as ``get_layer(backbone.name)`` (training encodes augmented patches
    with it directly)."""
    images = keras.Input((None, None, 3), name="images")
    vectors = backbone(PatchGrid(patch_size, stride, name="patch_grid")(images))
    return keras.Model(images, GridMean(name="grid_mean")([vectors, images]), name=name)


def grid_backbone(encoder: keras.Model) -> keras.Model:
    """The backbone inside a ``patch_grid_encoder``."""
    nested = [layer for layer in encoder.layers if isinstance(layer, keras.Model)]
    if len(nested) != 1 or not any(isinstance(layer, PatchGrid) for layer in encoder.layers):
        raise ValueError(f"{encoder.name} is not a patch-grid encoder (patch_grid_encoder)")
    return nested[0]
