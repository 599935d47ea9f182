"""RevNet-50-style reversible network (Gomez et al. 2017), the revisiting paper's third family.

Same stage layout as ResNet-50 v2 (3, 4, 6, 3 bottleneck units). The first unit of each
stage is an ordinary pre-activation residual unit that changes resolution and channels;
every other unit is reversible: the channels split into halves (x1, x2) and

    y1 = x1 + F(x2),    y2 = x2 + G(y1)

with F and G pre-activation bottleneck residual functions on half the channels, so the
input can be recomputed from the output (x2 = y2 - G(y1), x1 = y1 - F(x2)). Gradients here
are ordinary backpropagation: activations are stored, not recomputed (no memory saving).
Named representation layers as in ResNet: ``stem``, ``block1`` … ``block4``, ``pooled``.
"""
from __future__ import annotations

import keras
from keras import layers

from ssl_tf.models.layers import ChannelSplit, bn, channels, conv, image_input
from ssl_tf.models.resnet import preact_residual, stem

COUNTS = (3, 4, 6, 3)


def _residual_fn(x, filters, out_channels, name, sync):
    """Pre-activation bottleneck F(x) (no shortcut) mapping to ``out_channels``."""
    y = conv(filters, 1, 1, f"{name}_conv1")(layers.ReLU()(bn(f"{name}_bn1", sync)(x)))
    y = conv(filters, 3, 1, f"{name}_conv2")(layers.ReLU()(bn(f"{name}_bn2", sync)(y)))
    return conv(out_channels, 1, 1, f"{name}_conv3")(layers.ReLU()(bn(f"{name}_bn3", sync)(y)))


def reversible_unit(x, filters, name, sync):
    half = x.shape[-1] // 2
    x1, x2 = ChannelSplit(name=f"{name}_split")(x)
    y1 = layers.Add(name=f"{name}_y1")([x1, _residual_fn(x2, filters // 2, half, f"{name}_f", sync)])
    y2 = layers.Add(name=f"{name}_y2")([x2, _residual_fn(y1, filters // 2, half, f"{name}_g", sync)])
    return layers.Concatenate(name=f"{name}_out")([y1, y2])


def revnet50(width: float = 1.0, image_size: int = 224, synchronized_bn: bool = False, name: str = "revnet50",
             input_mode: str = "rgb") -> keras.Model:
    inputs, x = image_input(input_mode)
    base = channels(64, width)
    x = stem(x, base, image_size, synchronized_bn, activate=False)
    for stage, count in enumerate(COUNTS):
        filters = base * 2 ** stage
        x = preact_residual(x, filters, 1 if stage == 0 else 2, "bottleneck", f"s{stage + 1}b1", synchronized_bn)
        for i in range(1, count):
            x = reversible_unit(x, filters, f"s{stage + 1}b{i + 1}", synchronized_bn)
        x = layers.Identity(name=f"block{stage + 1}")(x)
    x = layers.ReLU()(bn("final_bn", synchronized_bn)(x))
    features = layers.GlobalAveragePooling2D(name="pooled")(x)
    return keras.Model(inputs, features, name=name)
