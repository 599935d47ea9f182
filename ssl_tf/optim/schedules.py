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
