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

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import info_nce
from ssl_tf.methods.base import Objective, SSLMethod, after, clone_network, write_rows
from ssl_tf.models import mlp


def _unit_rows(shape, dtype=None):
    return tf.math.l2_normalize(tf.random.normal(shape, dtype=dtype or "float32"), -1)


class MoCo(SSLMethod):
    view_recipe = "two_views"

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
    def from_config_obj(cls, cfg, encoder, num_classes, **_):
        return cls(encoder, num_classes, version=cfg.moco_version, queue_size=cfg.queue_size,
                   momentum=cfg.target_momentum, temperature=cfg.temperature, dim=cfg.proj_dim,
                   bn_groups=cfg.bn_groups, ema_bn_stats=cfg.ema_bn_stats, seed=cfg.seed)

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
        n = tf.shape(keys)[0]
        rows = (self.queue_ptr + tf.range(n)) % self.queue.shape[0]
        write_rows(self.queue, rows, tf.math.l2_normalize(keys, -1))
        self.queue_ptr.assign((self.queue_ptr + n) % self.queue.shape[0])

    def ordered_queue(self):
        """The queue oldest → newest."""
        return tf.roll(self.queue, -self.queue_ptr, axis=0)
