"""Relative patch location (Doersch et al. 2015): where is this patch relative to the centre one?

The view is the 3×3 grid of jittered, colour-guarded patches (``patch_grid``). As the
revisiting code does, every image yields all 8 (neighbour, centre) pairs rather than one
sampled pair: the two shared-weight embeddings are concatenated and an 8-way classifier
predicts the neighbour index k (cell ``patches.NEIGHBOURS[k]`` of the grid).
"""
from __future__ import annotations

import tensorflow as tf

from ssl_tf.data import patches
from ssl_tf.methods.patch_task import PatchTask
from ssl_tf.methods.settings import register

PAIRS = [[cell, patches.CENTRE] for cell in patches.NEIGHBOURS]   # label k <-> PAIRS[k]


@register("relative_patch_location", family="pretext")
class RelativePatchLocation(PatchTask):
    task_name = "location"

    Params = PatchTask.Params

    def __init__(self, encoder, num_classes=0, **kwargs):
        super().__init__(encoder, num_classes, num_outputs=len(PAIRS), **kwargs)

    @classmethod
    def from_params(cls, p: PatchTask.Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, head_hidden=p.head_hidden, seed=shared.seed)

    def arrangements(self, training):
        return tf.constant(PAIRS, tf.int32), tf.range(len(PAIRS))
