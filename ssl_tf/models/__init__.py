"""Backbone registry: ``--backbone`` name -> builder(width, image_size, synchronized_bn, input_mode)."""
from __future__ import annotations

import functools
import re

import keras

from ssl_tf.models import resnet as _resnet
from ssl_tf.models.heads import (  # noqa: F401
    CosineClassifier,
    classifier_head,
    cpc_context,
    dino_head,
    eval_head,
    head_prefix,
    linear_head,
    mi_embedding,
    mlp,
    mlp_head,
    pretext_head,
    prior_discriminator,
    projection_head,
    word_generator,
)
from ssl_tf.models.layers import INPUT_MODES, NORMS, PRECISIONS, compute_dtype, dtype_policy, normalization  # noqa: F401
from ssl_tf.models.multiview import view_backbones, view_encoder  # noqa: F401
from ssl_tf.models.patch_grid import GridMean, PatchGrid, patch_grid_encoder  # noqa: F401
from ssl_tf.models.revnet import revnet50
from ssl_tf.models.vgg import vgg19
from ssl_tf.models.vit import vit_small, vit_tiny

BACKBONES = {
    **{f"resnet{d}": functools.partial(_resnet.resnet, d, version=1) for d in sorted(_resnet.BLOCKS)},
    **{f"resnet{d}v2": functools.partial(_resnet.resnet, d, version=2) for d in sorted(_resnet.BLOCKS)},
    "revnet50": revnet50,
    "vgg19": vgg19,
    "vit_tiny": vit_tiny,
    "vit_small": vit_small,
}
_REPRESENTATION = re.compile(r"^(stem|block\d+|pooled|fc\d+)$")


def build_backbone(name: str, *, width: float = 1.0, image_size: int = 32, synchronized_bn: bool = False,
                   input_mode: str = "rgb", precision: str = "float32", norm: str = "batch") -> keras.Model:
    """The backbone ``name``; its output is the pooled feature vector (``.output_shape[-1]`` features).
    ``input_mode='lightness'``: the network sees only the L channel of its RGB input (colorization).
    ``precision='mixed_bfloat16'`` (``'mixed_float16'``): the backbone computes in bfloat16 (float16) with
    float32 variables, and its output is cast back to float32 — heads, losses and probes, built
    outside, stay float32. ``norm='layer'``: layer norm in place of BN (ResNets; CPC v2)."""
    if norm != "batch" and not name.startswith("resnet"):
        raise ValueError(f"norm={norm!r}: only the ResNet backbones take another normalisation than BN")
    with dtype_policy(precision), normalization(norm):
        net = BACKBONES[name](width=width, image_size=image_size, synchronized_bn=synchronized_bn, name=name,
                              input_mode=input_mode)
    if precision == "float32":
        return net
    out = keras.layers.Activation("linear", dtype="float32", name="float32_output")(net.output)
    return keras.Model(net.input, out, name=net.name)


def backbone_builder(name: str, *, width: float = 1.0, synchronized_bn: bool = False, input_mode: str = "rgb",
                     precision: str = "float32"):
    """``builder(image_size, norm="batch", input_mode=None, width_scale=1.0)``: the configured
    backbone, as a method's ``make_encoder`` asks for it — at the size it encodes (CPC v2: a patch),
    with layer norm (CPC v2), on other input channels or at a fraction of the width (CMC's views)."""
    def builder(image_size: int, norm: str = "batch", input_mode_: str | None = None, width_scale: float = 1.0):
        return build_backbone(name, width=width * width_scale, image_size=image_size, synchronized_bn=synchronized_bn,
                              input_mode=input_mode_ or input_mode, precision=precision, norm=norm)
    return builder


def representation_layers(backbone: keras.Model) -> list[str]:
    """Names of the backbone's representation layers, input to output (stem, block1 …, pooled, fc6 …)."""
    return [layer.name for layer in backbone.layers if _REPRESENTATION.match(layer.name)]


def intermediate_model(backbone: keras.Model, names=None) -> keras.Model:
    """A model over the same weights returning ``{name: output}`` for the named layers (default: all
    representation layers)."""
    names = names or representation_layers(backbone)
    return keras.Model(backbone.input, {n: backbone.get_layer(n).output for n in names})


def spatial_output(backbone: keras.Model):
    """The last spatial feature map (the input of global pooling)."""
    return backbone.get_layer("pooled").input


def freeze_through(backbone: keras.Model, block: int) -> list[str]:
    """Make every layer up to and including representation block ``block`` (0 = the stem, k =
    ``block{k}``) non-trainable — frozen BN then runs in inference mode. -1 freezes nothing.
    Returns the names of the frozen layers."""
    if block < 0:
        return []
    names = [n for n in representation_layers(backbone) if n == "stem" or n.startswith("block")]
    marker = "stem" if block == 0 else f"block{block}"
    if marker not in names:
        from ssl_tf.errors import SSLTFError
        raise SSLTFError(f"--fine_tune_after_block={block}: {backbone.name} has blocks "
                         f"{', '.join(str(i) for i in range(len(names)))} (0 = stem) or -1")
    stop = [layer.name for layer in backbone.layers].index(marker)
    frozen = backbone.layers[:stop + 1]
    for layer in frozen:
        layer.trainable = False
    return [layer.name for layer in frozen]
