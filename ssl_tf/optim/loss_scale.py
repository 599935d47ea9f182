"""Dynamic loss scaling for ``--precision=mixed_float16`` (Micikevicius et al. 2018, "Mixed
Precision Training", §3.2; the schedule of Keras's ``LossScaleOptimizer``).

float16 gradients underflow below 6e-8: the loss is multiplied by a scale S before the backward
pass and the gradients divided by S afterwards. A step whose gradients are not all finite is
skipped and halves S; ``growth_interval`` finite steps in a row double it."""
from __future__ import annotations

import tensorflow as tf

INITIAL_SCALE = 2.0 ** 15
GROWTH_INTERVAL = 2000
FACTOR = 2.0


def next_loss_scale(scale, good_steps, finite, growth_interval: int = GROWTH_INTERVAL, factor: float = FACTOR):
    """(scale, good_steps) after a step whose gradients were ``finite`` (a bool tensor):
        finite and good_steps + 1 = growth_interval -> (factor·scale, 0)
        finite otherwise                            -> (scale, good_steps + 1)
        not finite                                  -> (max(scale / factor, 1), 0)"""
    finite = tf.convert_to_tensor(finite, tf.bool)
    grow = tf.logical_and(finite, good_steps + 1 >= growth_interval)
    new_scale = tf.where(finite, tf.where(grow, scale * factor, scale), tf.maximum(scale / factor, 1.0))
    new_good = tf.where(tf.logical_and(finite, tf.logical_not(grow)), good_steps + 1, tf.zeros_like(good_steps))
    return new_scale, new_good


def all_finite(tensors):
    """True when every element of every (non-None) tensor is finite."""
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)
