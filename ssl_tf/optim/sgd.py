"""Momentum SGD with the weight decay inside the gradient, as the reference code of every SGD recipe
ssl_tf cites runs it (``torch.optim.SGD`` in MoCo, SimSiam, NPID, solo-learn and lightly; TF1's
``MomentumOptimizer`` on a loss with an L2 term in revisiting-self-supervised and FixMatch):

    d = g + λ·w                 (λ = weight decay; 0 for biases and norm parameters)
    v ← μ·v + d
    w ← w − lr·v

Keras' own ``SGD(weight_decay=λ)`` decays outside the momentum (w ← w − lr·λ·w): at μ = 0.9 its decay
is 1 − μ = a tenth of the reference code's for the same λ, a different recipe.
"""
from __future__ import annotations

import keras
from keras import ops


def excluded(variable) -> bool:
    """Biases and BN parameters: variables of rank 0 or 1, never decayed."""
    return len(variable.shape) <= 1


class SGD(keras.optimizers.Optimizer):
    def __init__(self, learning_rate=0.1, momentum: float = 0.9, weight_decay: float = 0.0, name: str = "sgd",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum
        self.l2_weight_decay = weight_decay     # not Keras' ``weight_decay``: that one is decoupled

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.velocities = [self.add_variable_from_reference(v, "velocity") for v in variables]

    def decayed_gradient(self, gradient, variable):
        """d = g + λ·w, in the variable's dtype (g alone for biases and norm parameters)."""
        d = ops.cast(gradient, variable.dtype)
        if self.l2_weight_decay and not excluded(variable):
            d = d + self.l2_weight_decay * variable
        return d

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        v = self.velocities[self._get_variable_index(variable)]
        self.assign(v, self.momentum * v + self.decayed_gradient(gradient, variable))
        self.assign_sub(variable, lr * v)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, weight_decay=self.l2_weight_decay)
        return config
