"""Projection heads and evaluation heads."""
from __future__ import annotations

import keras
from keras import layers

from ssl_tf.models.layers import BatchNorm


def projection_head(hidden_dim: int, out_dim: int = 128, num_layers: int = 2, synchronized_bn: bool = False,
                    name: str = "projector") -> keras.Sequential:
    """SimCLR projection MLP: ``num_layers`` dense layers with BN, ReLU between them.

    v1 is 2 layers (hidden = feature dim, out 128); v2 uses 3. As in SimCLR's code every
    dense layer is followed by BN (the last one without a learned offset) and has no bias.
    """
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    stack = []
    for i in range(num_layers):
        last = i == num_layers - 1
        stack += [layers.Dense(out_dim if last else hidden_dim, use_bias=False, name=f"dense{i}"),
                  BatchNorm(sync=synchronized_bn, momentum=0.9, epsilon=1e-5, center=not last, name=f"bn{i}")]
        if not last:
            stack.append(layers.ReLU(name=f"relu{i}"))
    return keras.Sequential(stack, name=name)


def pretext_head(num_classes: int, hidden_dim: int = 4096, dropout: float = 0.5, name: str = "pretext_head"):
    """The patch tasks' classifier (revisiting code, after AlexNet's fc7-fc8): Dense(hidden) → BN → ReLU
    → dropout → Dense(classes). ``hidden_dim=0``: a single linear layer."""
    if hidden_dim <= 0:
        return keras.Sequential([layers.Dense(num_classes)], name=name)
    return keras.Sequential([layers.Dense(hidden_dim, use_bias=False), BatchNorm(momentum=0.997, epsilon=1e-5),
                             layers.ReLU(), layers.Dropout(dropout), layers.Dense(num_classes)], name=name)


def linear_head(num_classes: int, zero_init: bool = False, name: str = "linear_head") -> layers.Dense:
    return layers.Dense(num_classes, kernel_initializer="zeros" if zero_init else "glorot_uniform", name=name)


def mlp_head(num_classes: int, hidden_dim: int = 512, name: str = "mlp_head") -> keras.Sequential:
    """A one-hidden-layer MLP probe: Dense → BN → ReLU → Dense."""
    return keras.Sequential([layers.Dense(hidden_dim, use_bias=False), layers.BatchNormalization(),
                             layers.ReLU(), layers.Dense(num_classes)], name=name)


def eval_head(kind: str, num_classes: int) -> keras.layers.Layer:
    return mlp_head(num_classes) if kind == "mlp" else linear_head(num_classes)
