"""PIRL, Pretext-Invariant Representation Learning (Misra & van der Maaten 2020).

Jigsaw asks the network to say how the tiles were shuffled, so its features must change with
the shuffle (covariant); PIRL asks the opposite — the representation of an image I and of its
jigsaw transform Iᵗ should agree. f(v_I) is a linear projection of the pooled feature of I;
g(v_Iᵗ) encodes each of the 9 tiles with the same backbone, projects each tile to 128-d,
concatenates the 9 in a random order and projects that to 128-d (VISSL's PIRL heads). A memory
bank holds m_I, the moving average of f(v_I) (momentum 0.5), and the loss (§3.2) is

    L = λ · L_NCE(m_I, g(v_Iᵗ)) + (1 − λ) · L_NCE(m_I, f(v_I)),   λ = 0.5, T = 0.07,

each L_NCE NPID's NCE against m_I and rows of other images drawn from the bank (the same
draws and the same Z for both terms; Z estimated on the first batch from the f terms).

``--pirl_loss=infonce`` (not in the paper) drops the bank: the jigsaw embedding of each image is
contrasted with the image embeddings of the (gathered) batch and the other way round,

    L = λ · InfoNCE(g(v_Iᵗ) → f(v_I)) + (1 − λ) · InfoNCE(f(v_I) → g(v_Iᵗ)),

so the positive is this step's other view of the same image, not a row written an epoch ago.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.data import patches
from ssl_tf.methods.base import MemoryBank, Objective, SSLMethod, contrast_both_ways
from ssl_tf.methods.patch_task import PatchGridParams
from ssl_tf.methods.settings import check, param, register

# PIRL's 32,000 negatives are drawn among ImageNet's 1,281,167 training images; the default keeps
# that fraction (2.5 %) of the dataset at hand.
PAPER_NEGATIVES, IMAGENET_TRAIN = 32000, 1281167


def scaled_negatives(num_examples: int) -> int:
    return max(1, round(PAPER_NEGATIVES * num_examples / IMAGENET_TRAIN))


@register("pirl", family="joint")
class PIRL(SSLMethod):
    view_recipe = "pirl_pair"

    # VISSL pirl_jigsaw_4node_resnet.yaml: SGD 0.03 × batch/256, momentum 0.9, wd 1e-4, cosine, no warm-up;
    # image crops from 8 % of the area.
    recipe = dict(optimizer="sgd", learning_rate=0.03, lr_scaling="linear", weight_decay=1e-4, warmup_epochs=0.0,
                  crop_min_scale=0.08)

    @dataclasses.dataclass
    class Params(PatchGridParams):
        pirl_lambda: float = param(0.5, "Weight λ of the jigsaw term; 1 − λ weighs the image term.",
                                   source="PIRL §3.2; VISSL loss_weights [0.5, 0.5]")
        proj_dim: int = param(128, "Embedding dimension of f and g.", source="PIRL; VISSL embedding_dim 128")
        temperature: float = param(0.07, "Temperature τ of the NCE scores.", source="PIRL; VISSL temperature 0.07")
        nce_k: Optional[int] = param(None, "Negatives drawn from the memory bank per example (default: PIRL's "
                                     "32,000 of 1.28M images, scaled to the dataset).",
                                     source="PIRL; VISSL num_negatives 32000")
        nce_m: float = param(0.5, "Memory-bank momentum.", source="PIRL; VISSL memory momentum 0.5")
        pirl_loss: str = param("nce", "nce (the memory bank, the paper's) or infonce (batch negatives: the jigsaw "
                               "and image embeddings of the batch contrasted both ways, no bank).",
                               source="PIRL §3.2; infonce not in the paper: flags/pirl/cifar10_20min.flags",
                               choices=("nce", "infonce"))

        def validate(self, shared):
            super().validate(shared)
            check(0 <= self.pirl_lambda <= 1, "pirl_lambda", self.pirl_lambda, "must be in [0, 1]")
            check(self.proj_dim >= 1, "proj_dim", self.proj_dim, "must be >= 1")
            check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
            check(self.nce_k is None or self.nce_k >= 1, "nce_k", self.nce_k, "must be >= 1")
            check(0 <= self.nce_m < 1, "nce_m", self.nce_m, "must be in [0, 1)")

    def __init__(self, encoder, num_classes=0, num_examples=1, dim=128, nce_k=None, temperature=0.07,
                 bank_momentum=0.5, lam=0.5, loss="nce", **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.nce_k = nce_k or scaled_negatives(num_examples)
        self.temperature, self.lam = temperature, lam
        self.image_head = keras.layers.Dense(dim, name="image_head")     # f
        self.tile_head = keras.layers.Dense(dim, name="tile_head")       # each tile, before concatenation
        self.jigsaw_head = keras.layers.Dense(dim, name="jigsaw_head")   # g, over the 9 concatenated tiles
        self.bank = None if loss == "infonce" else MemoryBank(num_examples, dim, bank_momentum, name="memory_bank")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, num_examples=num_examples, dim=p.proj_dim, nce_k=p.nce_k,
                   temperature=p.temperature, bank_momentum=p.nce_m, lam=p.pirl_lambda, loss=p.pirl_loss)

    def jigsaw_embedding(self, tiles, training):
        """g(v_Iᵗ): [b, 9, P, P, 3] -> [b, d], the tiles' projections concatenated in a random order
        per image, so that g cannot depend on where a tile was."""
        b, n = tf.shape(tiles)[0], patches.GRID * patches.GRID
        t = self.tile_head(self.encoder(tf.reshape(tiles, [-1, *tiles.shape[2:]]), training=training))
        d = t.shape[-1]
        shuffled = patches.shuffled_tiles(tf.reshape(t, [b, n, d]), self.batch_uniform(b, [n], 3))
        return self.jigsaw_head(tf.reshape(shuffled, [b, n * d]))

    def objective(self, batch, training):
        (images, tiles), index = batch["views"], batch["index"]
        h = self.encoder(images, training=training)
        f = tf.math.l2_normalize(self.image_head(h), -1)
        g = tf.math.l2_normalize(self.jigsaw_embedding(tiles, training), -1)
        if self.bank is None:
            jigsaw, image = contrast_both_ways(g, f, self.temperature)
            loss = self.lam * jigsaw.loss + (1.0 - self.lam) * image.loss
            return Objective(loss, features=h, embeddings=f,
                             logs={"jigsaw_nce": jigsaw.loss, "image_nce": image.loss,
                                   "jigsaw_acc": (jigsaw.accuracy + image.accuracy) / 2})
        negatives = self.bank.draw(self, tf.shape(images)[0], self.nce_k)
        image_loss, z = self.bank.loss(f, index, negatives, self.temperature)
        jigsaw_loss, _ = self.bank.loss(g, index, negatives, self.temperature, z=z)
        loss = self.lam * jigsaw_loss + (1.0 - self.lam) * image_loss
        return Objective(loss, features=h, embeddings=f,
                         logs={"nce_z": z, "jigsaw_nce": jigsaw_loss, "image_nce": image_loss},
                         aux={"index": distribute.gather(index), "features": distribute.gather(tf.stop_gradient(f)),
                              "z": z})

    def after_update(self, aux, step):
        if self.bank is None:
            return
        self.bank.update(aux["index"], aux["features"], aux["z"])   # m_I follows f(v_I)
