"""Jigsaw puzzles (Noroozi & Favaro 2016), with the optional Jigsaw++ (Noroozi et al. 2018).

The 9 patches of the grid are encoded with shared weights; their embeddings are
concatenated in the order of a permutation from the maximal-Hamming set
(``--num_permutations``, default 1000) and the classifier names the permutation. As in
the revisiting code (``--perm_sampling=batch``), each training batch uses one random subset
of ``--perm_subset_size`` permutations (default 8) applied to every image; with
``--perm_sampling=image`` every image draws its own ``perm_subset_size`` distinct permutations, as
Noroozi & Favaro draw one per image — a batch then shows the classifier b·k labels instead of
k, which a run of a thousand steps needs to see each of 1000 classes more than a few times.
Outside training (model building) the first ``perm_subset_size`` of the set, so memory never
scales with all 1000. Jigsaw++
replaces 0, 1 or 2 random patches of each image with patches of another image of the
batch, keeping the label.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssl_tf.data import patches
from ssl_tf.errors import SSLTFError
from ssl_tf.methods.patch_task import PatchTask
from ssl_tf.methods.settings import check, param, register

MAX_FOREIGN_TILES = 2   # Jigsaw++
SAMPLING = ("batch", "image")


@register("jigsaw", family="pretext")
class Jigsaw(PatchTask):
    task_name = "jigsaw"

    @dataclasses.dataclass
    class Params(PatchTask.Params):
        num_permutations: int = param(1000, "Size of the maximal-Hamming permutation set.",
                                      source="Noroozi & Favaro 2016: 1000")
        perm_subset_size: int = param(8, "Permutations used per training batch (per image with "
                                      "--perm_sampling=image).", source="revisiting: 8")
        perm_sampling: str = param("batch", "Training permutations: 'batch' (one random subset of --perm_subset_size "
                                   "for every image of a batch) or 'image' (each image draws its own).",
                                   source="revisiting: batch; Noroozi & Favaro 2016: one per image",
                                   choices=SAMPLING)
        jigsaw_plus: bool = param(False, "Jigsaw++: replace up to 2 tiles of each image with another image's tiles.",
                                  source="Noroozi et al. 2018")

        def validate(self, shared):
            super().validate(shared)
            check(2 <= self.num_permutations <= 362880, "num_permutations", self.num_permutations, "must be in [2, 9!]")
            check(1 <= self.perm_subset_size <= self.num_permutations, "perm_subset_size", self.perm_subset_size,
                  f"must be in [1, --num_permutations={self.num_permutations}]")

    def __init__(self, encoder, num_classes=0, num_permutations=1000, perm_subset_size=8, jigsaw_plus=False,
                 perm_sampling="batch", **kwargs):
        super().__init__(encoder, num_classes, num_outputs=num_permutations, **kwargs)
        self.permutations = tf.constant(patches.load_permutations(num_permutations), tf.int32)
        self.perm_subset_size = min(perm_subset_size, num_permutations)
        self.jigsaw_plus = jigsaw_plus
        if perm_sampling not in SAMPLING:
            raise SSLTFError(f"--perm_sampling={perm_sampling}: unknown; accepted: {', '.join(SAMPLING)}")
        self.perm_sampling = perm_sampling

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, num_permutations=p.num_permutations, perm_subset_size=p.perm_subset_size,
                   jigsaw_plus=p.jigsaw_plus, perm_sampling=p.perm_sampling, head_hidden=p.head_hidden,
                   seed=shared.seed)

    def arrangements(self, training):
        n = tf.shape(self.permutations)[0]
        if not training:
            labels = tf.range(self.perm_subset_size)
            return tf.gather(self.permutations, labels), labels
        labels = tf.random.experimental.stateless_shuffle(tf.range(n), self.step_seed(1))[:self.perm_subset_size]
        return tf.gather(self.permutations, labels), labels

    def arrange(self, embeddings, training):
        if not (training and self.perm_sampling == "image"):
            return super().arrange(embeddings, training)
        b, t, f = tf.shape(embeddings)[0], embeddings.shape[1], embeddings.shape[2]
        # k distinct permutations per image: the top k of uniform keys, drawn for the global batch so
        # that 2 replicas draw what one device does
        keys = self.batch_uniform(b, [tf.shape(self.permutations)[0]], salt=1)
        labels = tf.math.top_k(keys, self.perm_subset_size).indices                 # [b, k]
        orders = tf.gather(self.permutations, labels)                                # [b, k, 9]
        arranged = tf.gather(embeddings, orders, axis=1, batch_dims=1)               # [b, k, 9, F]
        return tf.reshape(arranged, [-1, t * f]), tf.reshape(labels, [-1])

    def mix_embeddings(self, embeddings, training):
        if not (self.jigsaw_plus and training):
            return embeddings
        b, t = tf.shape(embeddings)[0], embeddings.shape[1]
        seeds = tf.random.experimental.stateless_split(self.step_seed(2), 2)
        count = tf.random.stateless_uniform([b, 1], seeds[0], 0, MAX_FOREIGN_TILES + 1, tf.int32)
        order = tf.argsort(tf.random.stateless_uniform([b, t], seeds[1]), axis=-1)
        rank = tf.argsort(order, axis=-1)          # each position's place in a random order
        foreign = rank < count                     # so `count` positions chosen at random
        other = tf.roll(embeddings, shift=1, axis=0)                                 # the next image's patches
        return tf.where(foreign[..., None], other, embeddings)
