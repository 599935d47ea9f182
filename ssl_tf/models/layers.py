"""Layers shared by backbones and heads, and the helpers every backbone uses."""
from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.models import kernels

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")   # mixed_float16: with dynamic loss scaling


def compute_dtype(precision: str) -> str:
    """The activations' dtype under ``precision``: float32, bfloat16 or float16."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r}: unknown; accepted: {', '.join(PRECISIONS)}")
    return precision.replace("mixed_", "")


@contextlib.contextmanager
def dtype_policy(name: str):
    """Layers constructed inside use the Keras dtype policy ``name``; the previous global policy is
    restored on exit (the policy is captured when a layer is constructed)."""
    compute_dtype(name)   # refuses unknown names
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


BN_MOMENTUM = 0.9   # SimCLR's BATCH_NORM_DECAY
BN_EPSILON = 1e-5
INPUT_MODES = ("rgb", "lightness", "ab", "a", "b")   # the RGB image itself, or Lab channels of it
NORMS = ("batch", "layer")
_norm = ["batch"]


@contextlib.contextmanager
def normalization(kind: str):
    """Backbones built inside normalise with ``kind``: "batch" (BN), or "layer": layer norm over each
    example's whole map (H, W, C), with a per-channel scale and offset — GroupNorm with one group
    (Wu & He 2018, §3.1). CPC v2 (Hénaff et al. 2020, §4.1) replaces BN by layer norm because batch
    statistics let patches of one image see each other."""
    if kind not in NORMS:
        raise ValueError(f"normalization: {kind!r} is not one of {NORMS}")
    _norm.append(kind)
    try:
        yield
    finally:
        _norm.pop()


@keras.saving.register_keras_serializable("ssl_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalisation; with ``sync=True`` its training statistics span every replica's batch
    (SimCLR's global BN) through ``distribute.moments``. Keras's ``synchronized=True`` failed the
    2-replica weight-equality test (tests/test_distribute.py); this passes it.

    Wherever the statistics are this replica's own (``sync=False``; the runner turns global BN on
    only over several replicas) or frozen (inference, ``trainable=False``), and the CPU kernels are
    on (``kernels.enabled()``), the layer runs ``kernels.fused_batch_norm`` instead of Keras's
    elementwise graph. The moving variance follows the biased batch variance on both paths (as
    Keras's), so one device and several replicas keep the same statistics."""

    fused = True   # False: Keras's elementwise graph everywhere (the reference the fused path is tested against)

    def __init__(self, sync: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.sync = sync

    def _moments(self, inputs, mask):
        if not self.sync or mask is not None:
            return super()._moments(inputs, mask)
        return distribute.moments(inputs, self._reduction_axes)

    def _fusable(self, inputs, training, mask) -> bool:
        rank = inputs.shape.rank
        return (self.fused and kernels.enabled() and mask is None and not self.renorm and rank in (2, 4)
                and self.axis in (-1, rank - 1)
                and isinstance(training, (bool, type(None)))
                and not (self.sync and bool(training) and self.trainable))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        update = bool(training) and self.trainable
        y, statistics = kernels.fused_batch_norm(
            inputs, self.gamma if self.scale else None, self.beta if self.center else None,
            self.moving_mean, self.moving_variance, self.epsilon, training=update)
        if update:
            mean, variance = statistics
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(y, self.compute_dtype)

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
class LabChannels(keras.layers.Layer):
    """RGB in [0, 1] -> chosen chromatic channels of CIE Lab ("ab", "a" or "b"), each divided by
    ``color.AB_RANGE`` to about [-1, 1] (CMC's colour views); float32, as ``Lightness``."""

    def __init__(self, channels: str = "ab", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.channels = channels

    def call(self, images):
        from ssl_tf.data.color import AB_RANGE, rgb_to_lab
        lab = rgb_to_lab(images)
        return tf.gather(lab, ["Lab".index(c) for c in self.channels], axis=-1) / AB_RANGE

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], len(self.channels))

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


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
    """The backbones' normalisation layer: BN, or layer norm inside ``normalization("layer")``."""
    if _norm[-1] == "layer":
        return keras.layers.GroupNormalization(groups=1, epsilon=BN_EPSILON, name=name)
    return BatchNorm(sync=sync, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


@keras.saving.register_keras_serializable("ssl_tf")
class Conv2D(keras.layers.Conv2D):
    """Keras's Conv2D (same weights, same config) that, while the CPU kernels are on
    (``kernels.enabled()``), runs ``kernels.small_conv2d`` when the traced input's height and width
    are known and small enough for it to pay (``kernels.small_conv_pays``), and, when its input is
    the ReLU of a training batch norm, recomputes that input in the backward pass instead of keeping
    it (``kernels.conv_recomputing_input``; ``recompute = False`` turns that one off alone)."""

    recompute = True

    def _convolve(self, inputs, kernel):
        strides = tuple(self.strides)
        if (kernels.enabled() and self.data_format == "channels_last" and tuple(self.dilation_rate) == (1, 1)
                and self.groups == 1 and strides[0] == strides[1] and len(inputs.shape) == 4
                and kernels.small_conv_pays(inputs.shape[1], inputs.shape[2], tuple(self.kernel_size), strides[0],
                                            self.padding)):
            return kernels.small_conv2d(inputs, kernel, strides[0], self.padding)
        return super().convolution_op(inputs, kernel)

    def convolution_op(self, inputs, kernel):
        source = kernels.bn_relu_source(inputs) if self.recompute and kernels.enabled() else None
        if source is None:
            return self._convolve(inputs, kernel)
        return kernels.conv_recomputing_input(self._convolve, inputs, source, kernel)


def conv(filters, kernel, stride, name, use_bias=False):
    return Conv2D(filters, kernel, stride, padding="same", use_bias=use_bias, kernel_initializer="he_normal",
                  name=name)


def image_input(input_mode: str = "rgb"):
    """(keras.Input of RGB images in [0, 1], the tensor the network starts from)."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode={input_mode}: accepted {INPUT_MODES}")
    inputs = keras.Input((None, None, 3), name="images")
    if input_mode == "rgb":
        return inputs, inputs
    if input_mode == "lightness":
        return inputs, Lightness(name="lightness")(inputs)
    return inputs, LabChannels(input_mode, name=f"lab_{input_mode}")(inputs)


def channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))
