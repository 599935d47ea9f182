"""``--optimizer`` registry."""
from __future__ import annotations

import keras

from ssl_tf.errors import SSLTFError
from ssl_tf.optim.lars import LARS
from ssl_tf.optim.schedules import (  # noqa: F401
    LR_SCALINGS,
    WarmupCosine,
    cosine_momentum,
    ema_decay_at,
    linear_warmup_value,
    scale_learning_rate,
)
from ssl_tf.optim.sgd import SGD

OPTIMIZERS = ("lars", "sgd", "adam", "adamw")
NO_DECAY = ["bias", "gamma", "beta"]   # Keras variable names of biases and BN parameters


def build_optimizer(name: str, learning_rate, weight_decay: float = 0.0, momentum: float = 0.9):
    """LARS, SGD (momentum, weight decay in the gradient as torch.optim.SGD), Adam (no decay) or AdamW
    (decoupled decay); BN and bias never decayed."""
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay=weight_decay)
    if name == "sgd":
        return SGD(learning_rate, momentum=momentum, weight_decay=weight_decay)    # excludes rank <= 1 itself
    if name == "adam":
        opt = keras.optimizers.Adam(learning_rate)
    elif name == "adamw":
        opt = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    else:
        raise SSLTFError(f"--optimizer={name}: unknown; accepted: {', '.join(OPTIMIZERS)}")
    if weight_decay and name == "adamw":
        opt.exclude_from_weight_decay(var_names=NO_DECAY)
    return opt
