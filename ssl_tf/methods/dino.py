"""DINO (Caron et al. 2021, Alg. 1): self-distillation with no labels.

A student (backbone + DINO head) sees 2 global and ``num_local_crops`` local crops (batched by
resolution, one pass each); the teacher, an EMA of the student (momentum 0.996 → 1 on a
cosine), sees the 2 global crops. The teacher's outputs are centred (centre updated with
momentum 0.9 from the global-batch mean) and sharpened with a temperature warmed up linearly
from 0.04 to 0.07; the student's temperature is 0.1. The head's last layer learns from the second
epoch on (main_dino.py ``--freeze_last_layer 1``). Evaluation and export use the teacher's
backbone, as the paper does. With ``precision='mixed_bfloat16'`` the head computes in bfloat16
too (its 2048-wide MLP and 65536-wide last layer were 17 % of a ResNet-18 step). The student's
last layer is fused with the loss (``losses.linear_soft_cross_entropy``): its [views × b, 65536]
logits are formed one view at a time and never kept for the backward pass.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.data import views
from ssl_tf.losses import dino_loss, teacher_entropy, updated_center
from ssl_tf.methods.base import Objective, SSLMethod, after, clone_network, encode_views
from ssl_tf.methods.settings import MomentumParams, check, param, register
from ssl_tf.models import dino_head
from ssl_tf.optim import cosine_momentum, linear_warmup_value


@register("dino", family="joint")
class DINO(SSLMethod):
    view_recipe = "multi_crop"
    eval_encoder_attr = "teacher_encoder"

    # DINO (facebookresearch/dino main_dino.py): AdamW 5e-4 × batch/256, wd 0.04, 10 warm-up epochs, global
    # crops from 40% of the area.
    recipe = dict(optimizer="adamw", learning_rate=5e-4, weight_decay=0.04, crop_min_scale=0.4)

    @dataclasses.dataclass
    class Params(MomentumParams):
        target_momentum: float = param(0.996, "Momentum of the teacher, rising to 1 on a cosine.",
                                       source="main_dino.py --momentum_teacher 0.996")
        dino_out_dim: int = param(65536, "Output dimension K of the head.", source="main_dino.py --out_dim")
        student_temperature: float = param(0.1, "Student temperature.", source="DINO §3.1: 0.1")
        teacher_temperature: float = param(0.07, "Teacher temperature after warm-up.",
                                           source="main_dino.py --teacher_temp 0.07")
        warmup_teacher_temperature: float = param(0.04, "Teacher temperature at step 0.",
                                                  source="main_dino.py --warmup_teacher_temp 0.04")
        teacher_warmup_epochs: float = param(30, "Epochs of the linear teacher-temperature warm-up.",
                                             source="main_dino.py --warmup_teacher_temp_epochs 30")
        center_momentum: float = param(0.9, "Momentum of the teacher-output centre.", source="DINO §3.1: 0.9")
        num_local_crops: int = param(6, "Local crops per image besides the 2 global ones.",
                                     source="main_dino.py --local_crops_number")
        local_crop_size: Optional[int] = param(None, "Local crop side (96 at 224 px; default image_size × 96/224, "
                                                     "half the image at <= 32 px).", source="DINO §3.1: 96")
        dino_head_bn: bool = param(False, "Batch norm after the head's hidden layers.",
                                   source="main_dino.py --use_bn_in_head (False); True in lightly's CIFAR-10 benchmark")
        freeze_last_layer_epochs: float = param(1, "Epochs during which the head's last layer gets no gradient.",
                                                source="main_dino.py --freeze_last_layer 1")
        local_crop_scale: float = param(0.4, "Local crops cover 5%% to this fraction of the image; global crops "
                                             "from this to 100%% (--crop_min_scale).",
                                        source="main_dino.py --local_crops_scale 0.05 0.4")

        def resolve(self, shared):
            if self.local_crop_size is None:
                self.local_crop_size = views.local_crop_side(shared.image_size)

        def validate(self, shared):
            super().validate(shared)
            check(self.dino_out_dim >= 2, "dino_out_dim", self.dino_out_dim, "must be >= 2")
            for flag in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
                check(getattr(self, flag) > 0, flag, getattr(self, flag), "must be > 0")
            for flag in ("teacher_warmup_epochs", "freeze_last_layer_epochs"):
                check(getattr(self, flag) >= 0, flag, getattr(self, flag), "must be >= 0")
            check(0 <= self.center_momentum < 1, "center_momentum", self.center_momentum, "must be in [0, 1)")
            check(self.num_local_crops >= 0, "num_local_crops", self.num_local_crops, "must be >= 0")
            check(self.local_crop_size >= 4, "local_crop_size", self.local_crop_size, "must be >= 4")
            check(0.05 < self.local_crop_scale <= 1, "local_crop_scale", self.local_crop_scale, "must be in (0.05, 1]")

        def augment(self):
            return dict(num_local_crops=self.num_local_crops, local_size=self.local_crop_size,
                        local_crop_scale=(0.05, self.local_crop_scale))

    def __init__(self, encoder, num_classes=0, out_dim=65536, momentum=0.996, student_temperature=0.1,
                 teacher_temperature=0.07, warmup_teacher_temperature=0.04, teacher_warmup_epochs=30,
                 center_momentum=0.9, head_bn=False, freeze_last_layer_epochs=1, ema_bn_stats=False,
                 precision="float32", **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.momentum, self.ema_bn_stats = momentum, ema_bn_stats
        self.student_temperature, self.teacher_temperature = student_temperature, teacher_temperature
        self.warmup_teacher_temperature, self.teacher_warmup_epochs = warmup_teacher_temperature, teacher_warmup_epochs
        self.center_momentum, self.freeze_last_layer_epochs = center_momentum, freeze_last_layer_epochs
        self.head = dino_head(out_dim, precision=precision, batch_norm=head_bn)
        self.head.build(encoder.output_shape)
        self.teacher_encoder = clone_network(encoder)
        self.teacher_head = clone_network(self.head)
        self.center = self.add_weight(shape=(out_dim,), initializer="zeros", trainable=False, name="center",
                                      aggregation="only_first_replica")

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, out_dim=p.dino_out_dim, momentum=p.target_momentum,
                   student_temperature=p.student_temperature, teacher_temperature=p.teacher_temperature,
                   warmup_teacher_temperature=p.warmup_teacher_temperature,
                   teacher_warmup_epochs=p.teacher_warmup_epochs, center_momentum=p.center_momentum,
                   head_bn=p.dino_head_bn, freeze_last_layer_epochs=p.freeze_last_layer_epochs,
                   ema_bn_stats=p.ema_bn_stats, precision=shared.precision)

    @property
    def target_pairs(self):
        return [(self.teacher_encoder, self.encoder), (self.teacher_head, self.head)]

    def teacher_temperature_at(self, step):
        return linear_warmup_value(self.warmup_teacher_temperature, self.teacher_temperature, step,
                                   round(self.teacher_warmup_epochs * self.steps_per_epoch))

    def objective(self, batch, training):
        global_views, local_views = batch["views"]                     # [b, 2, S, S, 3], [b, n, s, s, 3]
        crops = [global_views[:, 0], global_views[:, 1]] + [local_views[:, i] for i in range(local_views.shape[1])]
        # both global views through the teacher's backbone and head in one batch, as the student's: the
        # head's batch norm (--dino_head_bn) sees 2b images (main_dino.py's MultiCropWrapper)
        teacher = encode_views(self.teacher_head, encode_views(self.teacher_encoder, crops[:2], training), training)
        teacher = [tf.stop_gradient(tf.cast(t, tf.float32)) for t in teacher]
        crops = after(teacher, *crops)                      # the teacher's forward first (base.after)
        features = encode_views(self.encoder, crops, training)
        *body, last = self.head.layers   # the MLP and L2 norm; the 65536-wide layer is fused with the loss
        student = encode_views(lambda x, training: _through(body, x, training), features, training)
        step = self.current_step()
        temperature = self.teacher_temperature_at(step)
        loss = dino_loss(student, self.last_layer_kernel(last, step), teacher, self.center, self.student_temperature,
                         temperature, matmul_dtype=last.matmul_dtype)
        local_sum = tf.add_n([tf.reduce_sum(t, 0) for t in teacher])   # no [2b, K] concatenated copy
        count = tf.cast(tf.shape(teacher[0])[0] * len(teacher), tf.float32)
        batch_mean = distribute.cross_replica_sum(local_sum) / distribute.cross_replica_sum(count)
        return Objective(loss, features=features[0], embeddings=features[0],
                         logs={"teacher_temperature": temperature,
                               # ln K: uniform for every image (no signal); 0: one prototype for all
                               "teacher_entropy": teacher_entropy(teacher[:1], self.center, temperature)},
                         aux={"teacher_mean": batch_mean})

    def last_layer_kernel(self, last, step):
        """The head's normalised last layer, without gradient for its first ``freeze_last_layer_epochs``
        (main_dino.py cancels its gradient in the first epoch: the prototypes wait for the backbone).
        A zero gradient leaves its direction fixed: momentum and weight decay only rescale v."""
        kernel = last.normalized_kernel()
        frozen_steps = round(self.freeze_last_layer_epochs * self.steps_per_epoch)
        if not frozen_steps:
            return kernel
        learns = tf.cast(step >= frozen_steps, kernel.dtype)
        fixed = tf.stop_gradient(kernel)
        return fixed + learns * (kernel - fixed)

    def after_update(self, aux, step):
        self.momentum_update(cosine_momentum(self.momentum, step, self.total_steps))
        self.center.assign(updated_center(self.center, aux["teacher_mean"], self.center_momentum))


def _through(layers, x, training):
    for layer in layers:
        x = layer(x, training=training)
    return x
