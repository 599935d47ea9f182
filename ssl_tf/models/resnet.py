"""ResNet v1 (He et al. 2016a) and v2 / pre-activation (He et al. 2016b) backbones.

Depth 18/34 use basic blocks, 50 bottleneck blocks; ``width`` multiplies every channel
count (the revisiting paper's widening factor: ×2, ×4 … of the 64-channel base). At
<= 32 px the CIFAR stem is used (3×3 conv, stride 1, no max-pool), as in SimCLR's CIFAR
experiments; above it the ImageNet stem (7×7 conv stride 2 + 3×3 max-pool). Named
representation layers: ``stem``, ``block1`` … ``block4`` (stage outputs), ``pooled``
(global average, the pre-logits). v2 puts BN-ReLU before each convolution and one final
BN-ReLU before pooling.
"""
from __future__ import annotations

import keras
from keras import layers

from ssl_tf.models.layers import bn as _bn, channels, conv as _conv, image_input

BLOCKS = {10: ("basic", (1, 1, 1, 1)), 18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
          50: ("bottleneck", (3, 4, 6, 3))}


def _block_v1(x, filters, stride, kind, name, sync):
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


def preact_residual(x, filters, stride, kind, name, sync, expansion=None):
    """The v2 unit: BN-ReLU first; the shortcut projects the pre-activated input when shapes change."""
    expansion = expansion if expansion is not None else (4 if kind == "bottleneck" else 1)
    pre = layers.ReLU()(_bn(f"{name}_preact_bn", sync)(x))
    shortcut = x
    if stride != 1 or x.shape[-1] != filters * expansion:
        shortcut = _conv(filters * expansion, 1, stride, f"{name}_proj")(pre)
    if kind == "basic":
        y = _conv(filters, 3, stride, f"{name}_conv1")(pre)
        y = _conv(filters, 3, 1, f"{name}_conv2")(layers.ReLU()(_bn(f"{name}_bn1", sync)(y)))
    else:
        y = _conv(filters, 1, 1, f"{name}_conv1")(pre)
        y = _conv(filters, 3, stride, f"{name}_conv2")(layers.ReLU()(_bn(f"{name}_bn1", sync)(y)))
        y = _conv(filters * expansion, 1, 1, f"{name}_conv3")(layers.ReLU()(_bn(f"{name}_bn2", sync)(y)))
    return layers.Add()([shortcut, y])


def stem(x, base, image_size, sync, activate=True):
    """CIFAR stem at <= 32 px, ImageNet stem above; named ``stem``."""
    if image_size <= 32:
        x = _conv(base, 3, 1, "stem_conv")(x)
        if activate:
            x = layers.ReLU()(_bn("stem_bn", sync)(x))
    else:
        x = _conv(base, 7, 2, "stem_conv")(x)
        if activate:
            x = layers.ReLU()(_bn("stem_bn", sync)(x))
        x = layers.MaxPooling2D(3, 2, padding="same")(x)
    return layers.Identity(name="stem")(x)


def resnet(depth: int = 18, width: float = 1.0, image_size: int = 224, synchronized_bn: bool = False,
           name: str | None = None, version: int = 1, input_mode: str = "rgb") -> keras.Model:
    """ResNet-``depth`` (v1 or v2) at ``width``; input float [0, 1] RGB of any size, output [B, features]."""
    kind, counts = BLOCKS[depth]
    inputs, x = image_input(input_mode)
    base = channels(64, width)
    x = stem(x, base, image_size, synchronized_bn, activate=version == 1)
    for stage, count in enumerate(counts):
        filters = base * 2 ** stage
        for i in range(count):
            stride = 2 if (i == 0 and stage > 0) else 1
            block = _block_v1 if version == 1 else preact_residual
            x = block(x, filters, stride, kind, f"s{stage + 1}b{i + 1}", synchronized_bn)
        x = layers.Identity(name=f"block{stage + 1}")(x)
    if version == 2:
        x = layers.ReLU()(_bn("final_bn", synchronized_bn)(x))
    features = layers.GlobalAveragePooling2D(name="pooled")(x)
    return keras.Model(inputs, features, name=name or f"resnet{depth}{'' if version == 1 else 'v2'}")
