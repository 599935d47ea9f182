"""CMC, Contrastive Multiview Coding (Tian, Krishnan & Isola 2020).

The views of an image are channels of its Lab colour space — L and ab by default, "a natural
split of an image into two views" (§4.1) — each encoded by a network of its own, half the
backbone's width as the paper's split AlexNet and ResNet halves, then projected to 128-d and
L2-normalised. The representation evaluation and export use is the concatenation of the
views' pooled features; the Lab conversion is inside the encoder, so it still takes RGB.

Between two views the loss is symmetric (eq. 3): L(V1, V2) = L^{V1,V2} + L^{V2,V1}. With the
paper's memory bank (§3.2), L^{V1,V2} scores each image's view-2 feature against its own row
and K drawn rows of view 1's bank, with NPID's NCE (``memory_bank_nce``; one bank and one Z per
view, T 0.07, bank momentum 0.5). ``cmc_loss=softmax``: a softmax over the K + 1 scores (the authors' --softmax);
``infonce``: the other images of the global batch as negatives, no bank. With more than two
views, ``cmc_graph=core`` sums the pairs with the first view, ``full`` every pair (§3.3).
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import multiview_pairs
from ssl_tf.methods.base import MemoryBank, Objective, SSLMethod, contrast_both_ways
from ssl_tf.methods.settings import MethodParams, check, param, register
from ssl_tf.models import view_backbones, view_encoder

# A view's name in --cmc_views -> the backbone input_mode that computes it from RGB.
VIEW_INPUTS = {"L": "lightness", "ab": "ab", "a": "a", "b": "b", "rgb": "rgb"}


def parse_views(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


@register("cmc", family="joint")
class CMC(SSLMethod):
    view_recipe = "crop_flip"

    # HobbitLong/CMC train_CMC.py: SGD 0.03, momentum 0.9, wd 1e-4, crops from 20% of the area, flip, no
    # colour jitter (it would blur the split between the colour views); its step decay -> our cosine.
    recipe = dict(optimizer="sgd", learning_rate=0.03, weight_decay=1e-4, warmup_epochs=0.0, crop_min_scale=0.2)

    @dataclasses.dataclass
    class Params(MethodParams):
        cmc_views: str = param("L,ab", "Views, comma-separated, each a backbone of its own: L, ab, a, b or rgb.",
                               source="CMC §4.1: L and ab")
        cmc_graph: str = param("core", "Pairs contrasted with 3+ views: core (view 1 with each) or full (all).",
                               source="CMC §3.3", choices=("core", "full"))
        cmc_loss: str = param("nce", "nce (memory bank, the paper's), softmax over the bank draws, or infonce "
                              "(batch negatives).", source="CMC §3.2; HobbitLong/CMC --softmax",
                              choices=("nce", "softmax", "infonce"))
        cmc_view_width: float = param(0.5, "Width of each view's backbone, a fraction of --width.",
                                      source="CMC §4: each view half of the network")
        proj_dim: int = param(128, "Embedding dimension of each view.", source="CMC --feat_dim 128")
        temperature: float = param(0.07, "Temperature of the view scores.", source="CMC --nce_t 0.07")
        nce_k: int = param(16384, "Negatives drawn from the memory bank per example.", source="CMC --nce_k 16384")
        nce_m: float = param(0.5, "Memory-bank momentum.", source="CMC --nce_m 0.5")

        def validate(self, shared):
            super().validate(shared)
            views = parse_views(self.cmc_views)
            unknown = [v for v in views if v not in VIEW_INPUTS]
            check(not unknown and len(views) >= 2 and len(set(views)) == len(views), "cmc_views", self.cmc_views,
                  f"must name 2 or more distinct views from {', '.join(VIEW_INPUTS)}")
            check(0 < self.cmc_view_width <= 1, "cmc_view_width", self.cmc_view_width, "must be in (0, 1]")
            check(self.proj_dim >= 1, "proj_dim", self.proj_dim, "must be >= 1")
            check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
            check(self.nce_k >= 1, "nce_k", self.nce_k, "must be >= 1")
            check(0 <= self.nce_m < 1, "nce_m", self.nce_m, "must be in [0, 1)")

    @classmethod
    def make_encoder(cls, backbone, cfg) -> keras.Model:
        p = cfg.params
        views = parse_views(p.cmc_views)
        return view_encoder([backbone(cfg.image_size, "batch", VIEW_INPUTS[v], p.cmc_view_width) for v in views],
                            views, name="cmc_encoder")

    def __init__(self, encoder, num_classes=0, num_examples=1, graph="core", loss="nce", dim=128, nce_k=16384,
                 temperature=0.07, bank_momentum=0.5, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.backbones = view_backbones(encoder)
        self.pairs = multiview_pairs(len(self.backbones), graph)
        self.loss_kind, self.nce_k, self.temperature = loss, nce_k, temperature
        self.heads = [keras.layers.Dense(dim, name=f"head_{i}") for i in range(len(self.backbones))]
        self.banks = [] if loss == "infonce" else [
            MemoryBank(num_examples, dim, bank_momentum, name=f"memory_bank_{i}") for i in range(len(self.backbones))]

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, num_examples=num_examples, graph=p.cmc_graph, loss=p.cmc_loss,
                   dim=p.proj_dim, nce_k=p.nce_k, temperature=p.temperature, bank_momentum=p.nce_m)

    def objective(self, batch, training):
        x, index = batch["views"], batch["index"]
        h = [backbone(x, training=training) for backbone in self.backbones]
        f = [tf.math.l2_normalize(head(v), -1) for head, v in zip(self.heads, h)]
        features = tf.concat(h, -1)
        if self.loss_kind == "infonce":
            outs = [out for a, b in self.pairs for out in contrast_both_ways(f[a], f[b], self.temperature)]
            return Objective(tf.add_n([o.loss for o in outs]), features=features, embeddings=f[0],
                             logs={"view_acc": tf.add_n([o.accuracy for o in outs]) / len(outs)})
        # The same drawn rows serve every bank this step (the authors' code draws one index set).
        negatives = self.banks[0].draw(self, tf.shape(x)[0], self.nce_k)
        terms, z = [], [None] * len(self.banks)
        for a, b in self.pairs:
            for anchor, other in ((a, b), (b, a)):    # L^{Va,Vb}: view b's feature against view a's bank
                # one Z per bank: estimated at the bank's first use on the first batch, then kept
                term, z[anchor] = self.banks[anchor].loss(f[other], index, negatives, self.temperature,
                                                          self.loss_kind, z=z[anchor])
                terms.append(term)
        aux = {"index": distribute.gather(index),
               "features": [distribute.gather(tf.stop_gradient(v)) for v in f],
               "z": z}
        return Objective(tf.add_n(terms), features=features, embeddings=f[0],
                         logs={f"nce_z_{i}": zi for i, zi in enumerate(aux["z"])}, aux=aux)

    def after_update(self, aux, step):
        if not self.banks:
            return
        for bank, features, z in zip(self.banks, aux["features"], aux["z"]):
            bank.update(aux["index"], features, z)
