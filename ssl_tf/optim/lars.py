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

from keras import ops

from ssl_tf.optim.sgd import SGD, excluded


class LARS(SGD):
    """SGD's momentum buffers and decay, with the trust ratio and the learning rate inside the momentum."""

    def __init__(self, learning_rate=0.3, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eeta: float = 1e-3, name: str = "lars", **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, weight_decay=weight_decay, name=name,
                         **kwargs)
        self.eeta = eeta

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = self.decayed_gradient(gradient, variable)
        v = self.velocities[self._get_variable_index(variable)]
        if not excluded(variable):
            w_norm = ops.sqrt(ops.sum(ops.square(variable)))
            g_norm = ops.sqrt(ops.sum(ops.square(g)))
            ratio = ops.where(ops.logical_and(w_norm > 0, g_norm > 0),
                              self.eeta * w_norm / ops.maximum(g_norm, 1e-30), ops.ones_like(w_norm))
            lr = lr * ratio
        self.assign(v, self.momentum * v + lr * g)
        self.assign_sub(variable, v)

    def get_config(self):
        return {**super().get_config(), "eeta": self.eeta}
