"""Learning-rate scaling and the warmup + cosine schedule (SimCLR appendix B.1)."""
from __future__ import annotations

import math

import keras
from keras import ops

from ssl_tf.errors import SSLTFError

LR_SCALINGS = ("linear", "sqrt", "none")


def scale_learning_rate(base_lr: float, global_batch: int, scaling: str = "linear") -> float:
    """linear: lr × batch/256 (SimCLR, Goyal et al. 2017); sqrt: lr × √batch (SimCLR's small-batch rule); none."""
    if scaling == "linear":
        return base_lr * global_batch / 256.0
    if scaling == "sqrt":
        return base_lr * math.sqrt(global_batch)
    if scaling == "none":
        return base_lr
    raise SSLTFError(f"--lr_scaling={scaling}: unknown; accepted: {', '.join(LR_SCALINGS)}")


@keras.saving.register_keras_serializable("ssl_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = max(int(total_steps), 1)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warm = float(max(self.warmup_steps, 1))
        warmup = self.peak * step / warm
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * self.peak * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < self.warmup_steps, warmup, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def cosine_momentum(base: float, step, total_steps: int, final: float = 1.0):
    """BYOL's target-decay schedule (Grill et al. 2020, §3.2), also DINO's and MoCo v3's:
    τ_k = final − (final − base)·(cos(πk/K) + 1)/2, rising from ``base`` at k = 0 to ``final`` at K."""
    progress = ops.clip(ops.cast(step, "float32") / float(max(int(total_steps), 1)), 0.0, 1.0)
    return final - (final - base) * (ops.cos(math.pi * progress) + 1.0) / 2.0


def ema_decay_at(decay: float, step):
    """The weight-EMA decay at ``step`` with warm-up: min(d, (1 + t)/(10 + t)), as TensorFlow's
    ``ExponentialMovingAverage(num_updates=t)``: the average follows the weights closely at first, so a
    short run's EMA model is not stuck near its random initialisation (0.999 keeps 90% of it for 100 steps)."""
    t = ops.cast(step, "float32")
    return ops.minimum(float(decay), (1.0 + t) / (10.0 + t))


def linear_warmup_value(start: float, end: float, step, warmup_steps: int):
    """``start`` → ``end`` linearly over ``warmup_steps``, then ``end`` (DINO's teacher temperature)."""
    progress = ops.clip(ops.cast(step, "float32") / float(max(int(warmup_steps), 1)), 0.0, 1.0)
    return start + (end - start) * progress
