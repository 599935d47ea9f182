"""VGG-19 with batch norm (Simonyan & Zisserman 2015), as used by the revisiting paper.

Five conv stages of 3×3 conv-BN-ReLU (2, 2, 4, 4, 4 layers of 64·w … 512·w channels),
each closed by 2×2 max-pooling and named ``block1`` … ``block5``; then global average
pooling (``pooled``) and the two fully connected layers ``fc6`` and ``fc7`` (4096·w units,
BN-ReLU) whose output, the pre-logits, is the feature vector. At <= 32 px the last
max-pool is skipped so block5 keeps a 2×2 map.
"""
from __future__ import annotations

import keras
from keras import layers

from ssl_tf.models.layers import bn, channels, conv, image_input

STAGES = ((64, 2), (128, 2), (256, 4), (512, 4), (512, 4))


def vgg19(width: float = 1.0, image_size: int = 224, synchronized_bn: bool = False, name: str = "vgg19",
          input_mode: str = "rgb") -> keras.Model:
    inputs, x = image_input(input_mode)
    for s, (filters, count) in enumerate(STAGES):
        for i in range(count):
            x = conv(channels(filters, width), 3, 1, f"s{s + 1}conv{i + 1}")(x)
            x = layers.ReLU()(bn(f"s{s + 1}bn{i + 1}", synchronized_bn)(x))
        if not (image_size <= 32 and s == len(STAGES) - 1):
            x = layers.MaxPooling2D(2, 2, padding="same")(x)
        x = layers.Identity(name=f"block{s + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="pooled")(x)
    for fc in ("fc6", "fc7"):
        x = layers.Dense(channels(4096, width), use_bias=False, name=f"{fc}_dense")(x)
        x = layers.Identity(name=fc)(layers.ReLU()(bn(f"{fc}_bn", synchronized_bn)(x)))
    return keras.Model(inputs, x, name=name)
