"""Layers shared by backbones and heads, and the helpers every backbone uses."""
from __future__ import annotations

import keras
from keras import layers

from ssl_tf import distribute

BN_MOMENTUM = 0.9   # SimCLR's BATCH_NORM_DECAY
BN_EPSILON = 1e-5
INPUT_MODES = ("rgb", "lightness")


@keras.saving.register_keras_serializable("ssl_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalisation; with ``sync=True`` its training statistics span every replica's batch
    (SimCLR's global BN) through ``distribute.moments``. Keras's ``synchronized=True`` failed the
    2-replica weight-equality test (tests/test_distribute.py); this passes it."""

    def __init__(self, sync: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.sync = sync

    def _moments(self, inputs, mask):
        if not self.sync or mask is not None:
            return super()._moments(inputs, mask)
        return distribute.moments(inputs, self._reduction_axes)

    def get_config(self):
        return {**super().get_config(), "sync": self.sync}


@keras.saving.register_keras_serializable("ssl_tf")
class Lightness(keras.layers.Layer):
    """RGB in [0, 1] -> the CIE L channel in [0, 1] (colorization's encoder input); always computed
    in float32 (the colour conversion), also inside a mixed-precision backbone."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, images):
        from ssl_tf.data.color import lightness
        return lightness(images)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


@keras.saving.register_keras_serializable("ssl_tf")
class ChannelSplit(keras.layers.Layer):
    """Split the channels into two halves (RevNet's x1, x2); a named layer, so networks holding it
    clone and deserialise without Python lambdas (safe_mode)."""

    def call(self, x):
        half = x.shape[-1] // 2
        return x[..., :half], x[..., half:]

    def compute_output_shape(self, shape):
        half = shape[-1] // 2
        return tuple(shape[:-1]) + (half,), tuple(shape[:-1]) + (shape[-1] - half,)


def bn(name, sync):
    return BatchNorm(sync=sync, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def conv(filters, kernel, stride, name, use_bias=False):
    return layers.Conv2D(filters, kernel, stride, padding="same", use_bias=use_bias,
                         kernel_initializer="he_normal", name=name)


def image_input(input_mode: str = "rgb"):
    """(keras.Input of RGB images in [0, 1], the tensor the network starts from)."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode={input_mode}: accepted {INPUT_MODES}")
    inputs = keras.Input((None, None, 3), name="images")
    return inputs, (Lightness(name="lightness")(inputs) if input_mode == "lightness" else inputs)


def channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))
