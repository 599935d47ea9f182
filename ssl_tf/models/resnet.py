"""ResNet v1 backbones (He et al. 2016) returning pooled features.

Depth 18/34 use basic blocks, 50 bottleneck blocks; ``width`` multiplies every channel
count. At <= 32 px the CIFAR stem is used (3×3 conv, stride 1, no max-pool), as in
SimCLR's CIFAR experiments; above it the ImageNet stem (7×7 conv stride 2 + 3×3 max-pool).
Stage outputs are named ``block1`` … ``block4`` (see ``intermediate_model``).
"""
from __future__ import annotations

import keras
from keras import layers

from ssl_tf.models.layers import BatchNorm

BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3))}
BN_MOMENTUM = 0.9   # SimCLR's BATCH_NORM_DECAY
BN_EPSILON = 1e-5


def _bn(name, synchronized):
    return BatchNorm(sync=synchronized, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _conv(filters, kernel, stride, name):
    return layers.Conv2D(filters, kernel, stride, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


def _block(x, filters, stride, kind, name, sync):
    expansion = 4 if kind == "bottleneck" else 1
    shortcut = x
    if stride != 1 or x.shape[-1] != filters * expansion:
        shortcut = _conv(filters * expansion, 1, stride, f"{name}_proj")(x)
        shortcut = _bn(f"{name}_proj_bn", sync)(shortcut)
    if kind == "basic":
        y = layers.ReLU()(_bn(f"{name}_bn1", sync)(_conv(filters, 3, stride, f"{name}_conv1")(x)))
        y = _bn(f"{name}_bn2", sync)(_conv(filters, 3, 1, f"{name}_conv2")(y))
    else:
        y = layers.ReLU()(_bn(f"{name}_bn1", sync)(_conv(filters, 1, 1, f"{name}_conv1")(x)))
        y = layers.ReLU()(_bn(f"{name}_bn2", sync)(_conv(filters, 3, stride, f"{name}_conv2")(y)))
        y = _bn(f"{name}_bn3", sync)(_conv(filters * expansion, 1, 1, f"{name}_conv3")(y))
    return layers.ReLU()(layers.Add()([shortcut, y]))


def resnet(depth: int = 18, width: float = 1.0, image_size: int = 224, synchronized_bn: bool = False,
           name: str | None = None) -> keras.Model:
    """ResNet-``depth`` v1 at ``width``; input float [0, 1] images of any size, output [B, features]."""
    kind, counts = BLOCKS[depth]
    inputs = keras.Input((None, None, 3), name="images")
    base = max(1, int(round(64 * width)))
    if image_size <= 32:
        x = _conv(base, 3, 1, "stem_conv")(inputs)
        x = layers.ReLU()(_bn("stem_bn", synchronized_bn)(x))
    else:
        x = _conv(base, 7, 2, "stem_conv")(inputs)
        x = layers.ReLU()(_bn("stem_bn", synchronized_bn)(x))
        x = layers.MaxPooling2D(3, 2, padding="same")(x)
    x = layers.Identity(name="stem")(x)
    for stage, count in enumerate(counts):
        filters = base * 2 ** stage
        for i in range(count):
            x = _block(x, filters, 2 if (i == 0 and stage > 0) else 1, kind, f"s{stage + 1}b{i + 1}", synchronized_bn)
        x = layers.Identity(name=f"block{stage + 1}")(x)
    features = layers.GlobalAveragePooling2D(name="pooled")(x)
    return keras.Model(inputs, features, name=name or f"resnet{depth}")


def intermediate_model(backbone: keras.Model, names=("stem", "block1", "block2", "block3", "block4", "pooled")):
    """A model over the same weights returning ``{name: output}`` for the named layers."""
    return keras.Model(backbone.input, {n: backbone.get_layer(n).output for n in names})
