"""Backbone registry: ``--backbone`` name -> builder(width, image_size, synchronized_bn)."""
from __future__ import annotations

import functools

from ssl_tf.models import resnet as _resnet
from ssl_tf.models.heads import eval_head, linear_head, mlp_head, projection_head  # noqa: F401

BACKBONES = {f"resnet{d}": functools.partial(_resnet.resnet, d) for d in sorted(_resnet.BLOCKS)}


def build_backbone(name: str, *, width: float = 1.0, image_size: int = 32, synchronized_bn: bool = False):
    """The backbone ``name``; its output is the pooled feature vector (``.output_shape[-1]`` features)."""
    return BACKBONES[name](width=width, image_size=image_size, synchronized_bn=synchronized_bn, name=name)
