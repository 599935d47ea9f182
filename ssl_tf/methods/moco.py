"""MoCo v1 / v2 (He et al. 2020; Chen et al. 2020b): a query encoder, a momentum key encoder and
a queue of K negative keys.

``objective`` and ``after_update`` follow the paper's Algorithm 1 line by line:

    q = f_q(x_q); k = f_k(x_k); k = k.detach()
    l_pos = q·k ; l_neg = q·queue ; logits = [l_pos, l_neg] / T ; labels = 0 ; loss = CE
    update(f_q) ; f_k = m·f_k + (1 − m)·f_q ; enqueue(queue, k) ; dequeue(queue)

v1: a linear 128-d head, T = 0.07; v2: an MLP head (hidden = feature dim, ReLU, 128), T = 0.2,
and blur in the views (our default above 32 px).

Shuffling BN. If the keys' BN statistics come from the same images as the queries', the model
can tell the positive by its batch statistics. MoCo shuffles the key batch across GPUs so each
GPU's BN sees other images. Here the keys of the whole global batch are gathered, shuffled
with a seed shared by all replicas, and each replica encodes its slice of the shuffled batch
in ``bn_groups / replicas`` groups (at least one) whose BN statistics are computed
separately; the keys are then gathered and put back in order. On one device with the default
8 groups, the key statistics come from 8 random groups of 32 at batch 256, like MoCo's 8 GPUs of 32;
the key encoder never synchronises BN across replicas. Queries use the backbone's own BN.
The key encoder's BN moving statistics are updated once per group and are never used (keys
are always computed with batch statistics; evaluation uses the query encoder).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import info_nce
from ssl_tf.methods.base import Objective, SSLMethod, after, clone_network, enqueue
from ssl_tf.methods.settings import MomentumParams, check, param, register
from ssl_tf.models import mlp


def _unit_rows(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), -1)


@register("moco", family="joint")
class MoCo(SSLMethod):
    view_recipe = "two_views"

    # MoCo v2 (facebookresearch/moco main_moco.py with --mlp --aug-plus --cos): SGD 0.03 × batch/256, wd 1e-4,
    # no warm-up, crops from 20% of the area.
    recipe = dict(optimizer="sgd", learning_rate=0.03, weight_decay=1e-4, warmup_epochs=0.0, crop_min_scale=0.2)

    @dataclasses.dataclass
    class Params(MomentumParams):
        moco_version: int = param(2, "MoCo: 1 (linear head, T 0.07, no blur) or 2 (MLP head, T 0.2, blur).",
                                  source="MoCo v1, MoCo v2 (Chen et al. 2020b)")
        queue_size: int = param(65536, "MoCo: negative keys in the queue K; a multiple of --batch_size.",
                                source="MoCo §4: K = 65536")
        bn_groups: int = param(8, "MoCo: key batch-norm groups of the shuffled global batch (shuffle BN).",
                               source="MoCo §3.3: 8 GPUs")
        target_momentum: float = param(0.999, "Momentum m of the key encoder (constant).", source="MoCo §4: 0.999")
        temperature: Optional[float] = param(None, "InfoNCE temperature (v1 0.07, v2 0.2).",
                                             source="MoCo §4 (0.07), MoCo v2 (0.2)")
        proj_dim: int = param(128, "Key / query embedding dimension.", source="MoCo §4: 128")

        def resolve(self, shared):
            if self.temperature is None:
                self.temperature = 0.07 if self.moco_version == 1 else 0.2
            if self.moco_version == 1 and shared.blur is None:
                shared.blur = False                                   # MoCo v1's augmentation has no blur

        def validate(self, shared):
            super().validate(shared)
            check(self.moco_version in (1, 2), "moco_version", self.moco_version, "accepted: 1, 2")
            check(self.temperature > 0, "temperature", self.temperature, "must be > 0")
            check(self.proj_dim >= 1, "proj_dim", self.proj_dim, "must be >= 1")
            check(self.queue_size >= 1, "queue_size", self.queue_size, "must be >= 1")
            check(self.bn_groups >= 1, "bn_groups", self.bn_groups, "must be >= 1")
            check(self.queue_size % shared.batch_size == 0, "queue_size", self.queue_size,
                  f"must be a multiple of --batch_size={shared.batch_size} (each step replaces one batch of keys)")
            check(shared.batch_size % self.bn_groups == 0, "bn_groups", self.bn_groups,
                  f"must divide --batch_size={shared.batch_size}")

    def __init__(self, encoder, num_classes=0, version=2, queue_size=65536, momentum=0.999, temperature=0.2,
                 dim=128, bn_groups=8, ema_bn_stats=False, seed=0, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.version, self.momentum, self.temperature = version, momentum, temperature
        self.bn_groups, self.ema_bn_stats, self.seed = bn_groups, ema_bn_stats, seed
        features = encoder.output_shape[-1]
        self.head = mlp((features, dim), batch_norm=False, name="head") if version == 2 else \
            mlp((dim,), name="head")
        self.head.build((None, features))
        self.key_encoder = clone_network(encoder, sync_bn=False)
        self.key_head = clone_network(self.head)
        self.queue = self.add_weight(shape=(queue_size, dim), initializer=_unit_rows, trainable=False,
                                     name="queue", aggregation="only_first_replica")
        self.queue_ptr = self.add_weight(shape=(), initializer="zeros", dtype="int32", trainable=False,
                                         name="queue_ptr", aggregation="only_first_replica")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, version=p.moco_version, queue_size=p.queue_size, momentum=p.target_momentum,
                   temperature=p.temperature, dim=p.proj_dim, bn_groups=p.bn_groups, ema_bn_stats=p.ema_bn_stats,
                   seed=shared.seed)

    @property
    def target_pairs(self):
        return [(self.key_encoder, self.encoder), (self.key_head, self.head)]

    def encode_keys(self, x_k, training):
        """Keys of the global batch, in order, computed with shuffled BN groups (no gradient)."""
        x_all = distribute.gather(tf.stop_gradient(x_k))
        b, rid = tf.shape(x_k)[0], distribute.replica_id()
        perm = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(x_all)[0]),
                                                        self.step_seed(1, per_replica=False))
        mine = tf.gather(x_all, perm[rid * b:(rid + 1) * b])
        groups = max(1, self.bn_groups // distribute.num_replicas()) if training else 1   # eval BN: no batch stats
        keys = tf.concat([self.key_head(self.key_encoder(g, training=training), training=training)
                          for g in tf.split(mine, groups)], 0)
        shuffled = distribute.gather(keys)
        return tf.stop_gradient(tf.scatter_nd(perm[:, None], shuffled, tf.shape(shuffled)))

    def objective(self, batch, training):
        x_q, x_k = batch["views"]
        k_all = self.encode_keys(x_k, training)                      # keys of every replica, k.detach()
        x_q, = after(k_all, x_q)                                     # then the queries (base.after)
        h = self.encoder(x_q, training=training)
        q = self.head(h, training=training)                          # queries: b × C
        b, rid = tf.shape(x_q)[0], distribute.replica_id()
        k = k_all[rid * b:(rid + 1) * b]
        out = info_nce(q, k, self.queue, self.temperature)           # l_pos, l_neg, logits / T, labels 0, CE
        return Objective(out.loss, features=h, embeddings=q, logs={"contrast_acc": out.accuracy},
                         aux={"keys": k_all})

    def after_update(self, aux, step):
        # momentum update of the key encoder, then enqueue this step's keys / dequeue the oldest
        self.momentum_update(self.momentum)
        self.enqueue(aux["keys"])

    def enqueue(self, keys):
        """Write ``keys`` [B, C] (normalised) over the oldest entries: the queue is a ring whose
        oldest row is at ``queue_ptr``; K is a multiple of B."""
        enqueue(self.queue, self.queue_ptr, tf.math.l2_normalize(keys, -1))

    def ordered_queue(self):
        """The queue oldest → newest."""
        return tf.roll(self.queue, -self.queue_ptr, axis=0)
