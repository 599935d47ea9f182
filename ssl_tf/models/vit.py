"""Vision Transformer (Dosovitskiy et al. 2021) sized for small images: ``vit_tiny`` (192 wide,
12 blocks, 3 heads) and ``vit_small`` (384, 12, 6), DeiT's sizes, with patch size 4 at <= 32 px
(16 above) as DINO's CIFAR runs.

Pre-norm blocks (LN → multi-head self-attention → residual, LN → GELU MLP ×4 → residual),
a learned [CLS] token and learned position embeddings that are bicubically resized when the
input grid differs from the training one (DINO's local crops). Named representation layers:
``block1`` … ``block12`` (token sequences; layer-wise eval probes their [CLS] token) and
``pooled`` (the final-LN [CLS] token, the feature vector). ``width`` multiplies the embedding
dimension (rounded to a multiple of the head count).
"""
from __future__ import annotations

import functools

import keras
import tensorflow as tf
from keras import layers

from ssl_tf.models.layers import image_input

SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6)}


@keras.saving.register_keras_serializable("ssl_tf")
class PatchEmbedding(layers.Layer):
    """Images → [b, 1 + h·w, dim]: non-overlapping patch projection, [CLS], position embeddings."""

    def __init__(self, dim: int, patch_size: int, grid: int, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.patch_size, self.grid = dim, patch_size, grid
        self.proj = layers.Conv2D(dim, patch_size, strides=patch_size, name="proj")

    def build(self, input_shape):
        self.proj.build(input_shape)
        init = keras.initializers.TruncatedNormal(stddev=0.02)
        self.cls = self.add_weight(shape=(1, 1, self.dim), initializer=init, name="cls")
        self.pos = self.add_weight(shape=(1, 1 + self.grid * self.grid, self.dim), initializer=init, name="pos")

    def call(self, images):
        x = self.proj(images)
        b, h, w = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        x = tf.reshape(x, [b, h * w, self.dim])
        grid_pos = tf.reshape(self.pos[:, 1:], [1, self.grid, self.grid, self.dim])
        grid_pos = tf.cond(tf.logical_and(tf.equal(h, self.grid), tf.equal(w, self.grid)),
                           lambda: grid_pos,
                           # resize returns float32: back to the compute type (bfloat16 under --precision)
                           lambda: tf.cast(tf.image.resize(grid_pos, [h, w], method="bicubic"), grid_pos.dtype))
        x = x + tf.reshape(grid_pos, [1, h * w, self.dim])
        cls = tf.tile(self.cls + self.pos[:, :1], [b, 1, 1])
        return tf.concat([cls, x], 1)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "patch_size": self.patch_size, "grid": self.grid}


@keras.saving.register_keras_serializable("ssl_tf")
class TransformerBlock(layers.Layer):
    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads, self.mlp_ratio = dim, heads, mlp_ratio
        self.norm1 = layers.LayerNormalization(epsilon=1e-6, name="norm1")
        self.attn = layers.MultiHeadAttention(heads, dim // heads, name="attn")
        self.norm2 = layers.LayerNormalization(epsilon=1e-6, name="norm2")
        self.fc1 = layers.Dense(int(dim * mlp_ratio), activation="gelu", name="fc1")
        self.fc2 = layers.Dense(dim, name="fc2")

    def call(self, x, training=None):
        y = self.norm1(x)
        x = x + self.attn(y, y, training=training)
        return x + self.fc2(self.fc1(self.norm2(x)))

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "mlp_ratio": self.mlp_ratio}


@keras.saving.register_keras_serializable("ssl_tf")
class ClassToken(layers.Layer):
    def call(self, x):
        return x[:, 0]


def vit(size: str = "tiny", width: float = 1.0, image_size: int = 32, synchronized_bn: bool = False,
        name: str = "vit_tiny", input_mode: str = "rgb", patch_size: int | None = None) -> keras.Model:
    base, depth, heads = SIZES[size]
    dim = max(heads, int(round(base * width / heads)) * heads)
    patch_size = patch_size or (4 if image_size <= 32 else 16)
    inputs, x = image_input(input_mode)
    x = PatchEmbedding(dim, patch_size, max(1, image_size // patch_size), name="patch_embed")(x)
    for i in range(depth):
        x = TransformerBlock(dim, heads, name=f"block{i + 1}")(x)
    x = layers.LayerNormalization(epsilon=1e-6, name="norm")(x)
    x = ClassToken(name="pooled")(x)
    return keras.Model(inputs, x, name=name)


vit_tiny = functools.partial(vit, "tiny")
vit_small = functools.partial(vit, "small")
