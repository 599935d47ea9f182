"""DINO (Caron et al. 2021, Alg. 1): self-distillation with no labels.

A student (backbone + DINO head) sees 2 global and ``num_local_crops`` local crops (batched by
resolution, one pass each); the teacher, an EMA of the student (momentum 0.996 → 1 on a
cosine), sees the 2 global crops. The teacher's outputs are centred (centre updated with
momentum 0.9 from the global-batch mean) and sharpened with a temperature warmed up linearly
from 0.04 to 0.07; the student's temperature is 0.1. Evaluation and export use the teacher's
backbone, as the paper does. With ``precision='mixed_bfloat16'`` the head computes in bfloat16
too (its 2048-wide MLP and 65536-wide last layer were 17 % of a ResNet-18 step). The student's
last layer is fused with the loss (``losses.linear_soft_cross_entropy``): its [views × b, 65536]
logits are formed one view at a time and never kept for the backward pass.
"""
from __future__ import annotations

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import dino_loss, updated_center
from ssl_tf.methods.base import Objective, SSLMethod, after, clone_network, encode_views, target_outputs
from ssl_tf.models import dino_head
from ssl_tf.optim import cosine_momentum, linear_warmup_value


class DINO(SSLMethod):
    view_recipe = "multi_crop"
    eval_encoder_attr = "teacher_encoder"

    def __init__(self, encoder, num_classes=0, out_dim=65536, momentum=0.996, student_temperature=0.1,
                 teacher_temperature=0.07, warmup_teacher_temperature=0.04, teacher_warmup_epochs=30,
                 center_momentum=0.9, ema_bn_stats=False, precision="float32", **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.momentum, self.ema_bn_stats = momentum, ema_bn_stats
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.warmup_teacher_temperature, self.teacher_warmup_epochs = warmup_teacher_temperature, teacher_warmup_epochs
        self.center_momentum = center_momentum
        self.head = dino_head(out_dim, precision=precision)
        self.head.build(encoder.output_shape)
        self.teacher_encoder = clone_network(encoder)
        self.teacher_head = clone_network(self.head)
        self.center = self.add_weight(shape=(out_dim,), initializer="zeros", trainable=False, name="center",
                                      aggregation="only_first_replica")

    @classmethod
    def from_config_obj(cls, cfg, encoder, num_classes, **_):
        return cls(encoder, num_classes, out_dim=cfg.dino_out_dim, momentum=cfg.target_momentum,
                   student_temperature=cfg.student_temperature, teacher_temperature=cfg.teacher_temperature,
                   warmup_teacher_temperature=cfg.warmup_teacher_temperature,
                   teacher_warmup_epochs=cfg.teacher_warmup_epochs, center_momentum=cfg.center_momentum,
                   ema_bn_stats=cfg.ema_bn_stats, precision=cfg.precision)

    @property
    def target_pairs(self):
        return [(self.teacher_encoder, self.encoder), (self.teacher_head, self.head)]

    def teacher_temperature_at(self, step):
        return linear_warmup_value(self.warmup_teacher_temperature, self.teacher_temperature, step,
                                   round(self.teacher_warmup_epochs * self.steps_per_epoch))

    def objective(self, batch, training):
        global_views, local_views = batch["views"]                     # [b, 2, S, S, 3], [b, n, s, s, 3]
        crops = [global_views[:, 0], global_views[:, 1]] + [local_views[:, i] for i in range(local_views.shape[1])]
        teacher = [tf.cast(t, tf.float32) for t in target_outputs(self.teacher_encoder, self.teacher_head, crops[:2],
                                                                   training)]
        crops = after(teacher, *crops)                      # the teacher's forward first (base.after)
        features = encode_views(self.encoder, crops, training)
        *body, last = self.head.layers   # the MLP and L2 norm; the 65536-wide layer is fused with the loss
        student = encode_views(lambda x, training: _through(body, x, training), features, training)
        step = self.current_step()
        loss = dino_loss(student, last.normalized_kernel(), teacher, self.center, self.student_temperature,
                         self.teacher_temperature_at(step), matmul_dtype=last.matmul_dtype)
        local_sum = tf.add_n([tf.reduce_sum(t, 0) for t in teacher])   # no [2b, K] concatenated copy
        count = tf.cast(tf.shape(teacher[0])[0] * len(teacher), tf.float32)
        batch_mean = distribute.cross_replica_sum(local_sum) / distribute.cross_replica_sum(count)
        return Objective(loss, features=features[0], embeddings=features[0],
                         logs={"teacher_temperature": self.teacher_temperature_at(step)},
                         aux={"teacher_mean": batch_mean})

    def after_update(self, aux, step):
        self.momentum_update(cosine_momentum(self.momentum, step, self.total_steps))
        self.center.assign(updated_center(self.center, aux["teacher_mean"], self.center_momentum))


def _through(layers, x, training):
    for layer in layers:
        x = layer(x, training=training)
    return x
