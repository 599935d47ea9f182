"""LARS (You et al. 2017) as used by SimCLR, written for Keras 3.

For each variable w with gradient g (heavy-ball momentum m, coefficient η = ``eeta``):

    d  = g + λ·w                              (λ = weight decay; 0 for excluded variables)
    r  = η·||w|| / ||d||   if ||w|| > 0 and ||d|| > 0, else 1   (r = 1 for excluded variables)
    v ← m·v + lr·r·d
    w ← w − v

Excluded from both weight decay and the trust ratio: every variable of rank <= 1 (biases
and batch-norm scales/offsets), as SimCLR excludes ``bias`` and ``batch_normalization``.
"""
from __future__ import annotations

import keras
from keras import ops


def excluded(variable) -> bool:
    """Biases and BN parameters: variables of rank 0 or 1."""
    return len(variable.shape) <= 1


class LARS(keras.optimizers.Optimizer):
    def __init__(self, learning_rate=0.3, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eeta: float = 1e-3, name: str = "lars", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.lars_weight_decay = weight_decay
        self.eeta = eeta

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = [self.add_variable_from_reference(v, "velocity") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        v = self.velocities[self._get_variable_index(variable)]
        if not excluded(variable):
            g = g + self.lars_weight_decay * variable
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            ratio = ops.where(ops.logical_and(w_norm > 0, g_norm > 0),
                              self.eeta * w_norm / ops.maximum(g_norm, 1e-30), ops.ones_like(w_norm))
            lr = lr * ratio
        self.assign(v, self.momentum * v + lr * g)
        self.assign_sub(variable, v)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, weight_decay=self.lars_weight_decay, eeta=self.eeta)
        return config
