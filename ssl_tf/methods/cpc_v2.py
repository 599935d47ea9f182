"""CPC v2 (Hénaff et al. 2020, "Data-Efficient Image Recognition with Contrastive Predictive Coding";
CPC: van den Oord et al. 2018): predict the patches below from the patches above.

Each image is cut into a G×G grid of overlapping patches (the ``cpc_patches`` view recipe, each
patch augmented on its own); the backbone encodes every patch to one vector z_ij (mean-pooled); a
masked context network over the grid gives c_ij from rows ≤ i; and for every offset k a linear map
predicts ẑ_{i+k,j} = W_k c_ij. InfoNCE scores each prediction against every patch of the batch.
The grid is also rotated so that patches are predicted from below, the left and the right. The
representation of an image — for the probes, fine-tuning and export — is the mean of its patch
vectors (``patch_grid_encoder``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.data import patches
from ssl_tf.losses import cpc_info_nce
from ssl_tf.methods.base import Objective, SSLMethod
from ssl_tf.methods.settings import MethodParams, check, param, register
from ssl_tf.models import cpc_context, patch_grid_encoder
from ssl_tf.models.patch_grid import grid_backbone

# Quarter turns of the grid for 1, 2 and 4 directions: 0 = context from above, 2 = from below,
# 1 and 3 = from the sides.
TURNS = {1: (0,), 2: (0, 2), 4: (0, 1, 2, 3)}


def turn(grid, quarters: int):
    """[b, G, G, C] rotated counter-clockwise by ``quarters`` × 90° (as ``tf.image.rot90``, whose
    shape asserts would sit in every step's graph)."""
    if quarters == 1:
        return tf.reverse(tf.transpose(grid, [0, 2, 1, 3]), [1])
    if quarters == 2:
        return tf.reverse(grid, [1, 2])
    if quarters == 3:
        return tf.transpose(tf.reverse(grid, [1]), [0, 2, 1, 3])
    return grid


@register("cpc_v2", family="infomax")
class CPCv2(SSLMethod):
    view_recipe = "cpc_patches"

    # Adam (CPC v2 §4; pl_bolts' CPC v2 module, whose notes give 4e-4 for ImageNet) at 4e-4 × batch/256 and
    # weight decay 1e-5 (pl_bolts); batch 64, pl_bolts' CIFAR-10 batch — the logits of 49 patches per image
    # against every patch of the batch grow with batch² (64: 3,136 targets). Whole-image crops from 75% of
    # the area, about the ±4 px translation pl_bolts uses at 32 px; the patches get the strong augmentation.
    recipe = dict(optimizer="adam", learning_rate=4e-4, weight_decay=1e-5, batch_size=64, crop_min_scale=0.75)

    @dataclasses.dataclass
    class Params(MethodParams):
        cpc_patch_size: Optional[int] = param(None, "Side of each grid patch (default image_size // 4).",
                                              source="CPC §3.3: 64 px patches of 256 px images; 8 at 32 px as "
                                                     "pl_bolts' CIFAR-10 transform")
        cpc_patch_stride: Optional[int] = param(None, "Step between grid patches (default half a patch).",
                                                source="CPC §3.3: stride 32 for 64 px patches (50% overlap)")
        cpc_skip_steps: int = param(2, "Nearest rows below the context that are not predicted (they overlap it).",
                                    source="CPC v2 appendix A.2: steps_to_ignore=2")
        cpc_predict_steps: int = param(3, "Rows predicted below the skipped ones (offsets skip+1 … skip+this).",
                                       source="CPC v2 appendix A.2: steps_to_predict=3")
        cpc_directions: int = param(4, "Directions predicted: 1 from above, 2 also from below, 4 also from the "
                                        "sides.", source="CPC v2 §4.3: \"context from below, the right and the "
                                                         "left ... up to four times as many prediction tasks\"")
        cpc_context_blocks: int = param(5, "Residual blocks of the context network.",
                                        source="CPC v2 appendix A.2: 5")
        cpc_context_hidden: int = param(256, "Channels inside the context network's blocks.",
                                        source="CPC v2 appendix A.2: 256")
        cpc_target_dim: int = param(64, "Dimension of the targets z and predictions ẑ.",
                                    source="CPC v2 appendix A.2: target_dim=64")
        cpc_emb_scale: float = param(0.1, "Scale of the predictions (the InfoNCE logits' scale).",
                                     source="CPC v2 appendix A.2: emb_scale=0.1")
        cpc_color_drop: float = param(1.0, "Probability that a patch keeps one colour channel of three.",
                                      source="CPC v2 §4.3 (colour dropping, after Doersch et al. 2015)")
        cpc_layer_norm: bool = param(True, "Layer norm in place of batch norm in the backbone.",
                                     source="CPC v2 §4.1: batch statistics let patches see each other")

        def resolve(self, shared):
            self.cpc_patch_size = self.cpc_patch_size or max(4, shared.image_size // 4)
            self.cpc_patch_stride = self.cpc_patch_stride or max(1, self.cpc_patch_size // 2)

        def validate(self, shared):
            super().validate(shared)
            size, p, s = shared.image_size, self.cpc_patch_size, self.cpc_patch_stride
            check(4 <= p <= size, "cpc_patch_size", p, f"must be in [4, --image_size={size}]")
            check(1 <= s <= p, "cpc_patch_stride", s, f"must be in [1, --cpc_patch_size={p}]")
            check(self.cpc_directions in TURNS, "cpc_directions", self.cpc_directions, "accepted: 1, 2, 4")
            check(self.cpc_skip_steps >= 0, "cpc_skip_steps", self.cpc_skip_steps, "must be >= 0")
            check(self.cpc_predict_steps >= 1, "cpc_predict_steps", self.cpc_predict_steps, "must be >= 1")
            grid = patches.overlapping_side(size, p, s)
            reach = self.cpc_skip_steps + self.cpc_predict_steps
            check(reach < grid, "cpc_predict_steps", self.cpc_predict_steps,
                  f"with --cpc_skip_steps={self.cpc_skip_steps} reaches {reach} rows ahead, but the grid of "
                  f"{p} px patches at stride {s} on {size} px images has {grid} rows; --cpc_skip_steps + "
                  f"--cpc_predict_steps must be < {grid}")
            for name in ("cpc_context_blocks", "cpc_context_hidden", "cpc_target_dim"):
                check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
            check(self.cpc_emb_scale > 0, "cpc_emb_scale", self.cpc_emb_scale, "must be > 0")
            check(0 <= self.cpc_color_drop <= 1, "cpc_color_drop", self.cpc_color_drop, "must be in [0, 1]")
            check(not self.cpc_layer_norm or shared.backbone.startswith("resnet"), "cpc_layer_norm", True,
                  f"--backbone={shared.backbone} has no layer-norm variant; use a resnet backbone or "
                  "--cpc_layer_norm=false")

        def augment(self):
            return dict(cpc_patch_size=self.cpc_patch_size, cpc_patch_stride=self.cpc_patch_stride,
                        cpc_color_drop=self.cpc_color_drop)

    @classmethod
    def make_encoder(cls, backbone, cfg) -> keras.Model:
        p = cfg.params
        return patch_grid_encoder(backbone(p.cpc_patch_size, "layer" if p.cpc_layer_norm else "batch"),
                                  p.cpc_patch_size, p.cpc_patch_stride)

    def __init__(self, encoder, num_classes=0, grid=7, offsets=(3, 4, 5), directions=4, context_blocks=5,
                 context_hidden=256, target_dim=64, emb_scale=0.1, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.backbone = grid_backbone(encoder)
        self.grid, self.offsets, self.emb_scale = grid, tuple(offsets), emb_scale
        self.turns = TURNS[directions]
        dim = self.backbone.output_shape[-1]
        self.context = cpc_context(dim, context_hidden, context_blocks)
        self.target_proj = keras.layers.Dense(target_dim, name="cpc_targets")      # a 1×1 conv over the grid
        # W_k per direction and offset, each a 1×1 conv of the context (A.2: a new conv per step)
        self.predictors = [[keras.layers.Dense(target_dim, name=f"cpc_predict_t{t}_k{k}") for k in self.offsets]
                           for t in self.turns]

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        skip = p.cpc_skip_steps
        return cls(encoder, num_classes, grid=patches.overlapping_side(shared.image_size, p.cpc_patch_size,
                                                                       p.cpc_patch_stride),
                   offsets=range(skip + 1, skip + p.cpc_predict_steps + 1), directions=p.cpc_directions,
                   context_blocks=p.cpc_context_blocks, context_hidden=p.cpc_context_hidden,
                   target_dim=p.cpc_target_dim, emb_scale=p.cpc_emb_scale)

    def patch_vectors(self, tiles, training):
        """[b, G·G, P, P, 3] patches -> [b, G, G, F], each patch's pooled backbone vector."""
        b, g = tf.shape(tiles)[0], self.grid
        h = self.backbone(tf.reshape(tiles, [-1, *tiles.shape[2:]]), training=training)
        return tf.reshape(h, [b, g, g, h.shape[-1]])

    def objective(self, batch, training):
        grid = self.patch_vectors(batch["views"], training)                      # [b, G, G, F]
        b, g = tf.shape(grid)[0], self.grid
        z = self.target_proj(grid)                                              # [b, G, G, T]
        first = distribute.replica_id() * b * g * g      # this replica's first patch among the gathered ones
        image = tf.range(b)[:, None, None] * g * g
        losses, accuracies = [], []
        for quarters, predictors in zip(self.turns, self.predictors):
            # the rotated grid: "rows above" are now below, left or right of each patch in the image
            context = self.context(turn(grid, quarters), training=training)
            z_turned = turn(z, quarters)
            targets = distribute.gather(tf.reshape(z_turned, [-1, z.shape[-1]]))   # every patch of the batch
            for k, predict in zip(self.offsets, predictors):
                predicted = self.emb_scale * predict(context[:, :g - k])        # ẑ_{i+k,j} from c_ij, i < G-k
                positive = first + image + (tf.range(g - k) + k)[None, :, None] * g + tf.range(g)[None, None, :]
                out = cpc_info_nce(tf.reshape(predicted, [-1, z.shape[-1]]), targets, tf.reshape(positive, [-1]))
                losses.append(out.loss)
                accuracies.append(out.accuracy)
        # summed over offsets as A.2's pseudocode, and over the directions, each a task of its own
        # the collapse monitor watches the patch targets: InfoNCE needs them apart, not the image means
        return Objective(tf.add_n(losses), features=tf.reduce_mean(grid, [1, 2]),
                         embeddings=tf.reshape(z, [-1, z.shape[-1]]),
                         logs={"cpc_acc": tf.add_n(accuracies) / len(accuracies)})
