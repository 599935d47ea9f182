"""Layers shared by backbones and heads, and the helpers every backbone uses."""
from __future__ import annotations

import contextlib
import itertools

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from ssl_tf import distribute

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
INPUT_MODES = ("rgb", "lightness")


@keras.saving.register_keras_serializable("ssl_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalisation; with ``sync=True`` its training statistics span every replica's batch
    (SimCLR's global BN) through ``distribute.moments``. Keras's ``synchronized=True`` failed the
    2-replica weight-equality test (tests/test_distribute.py); this passes it.

    Wherever the statistics are this replica's own (``sync=False``; the runner turns global BN on
    only over several replicas) or frozen (inference, ``trainable=False``), the layer runs
    TensorFlow's fused kernel (``FusedBatchNormV3`` and its gradient) instead of Keras's elementwise
    graph: one pass for the forward, one for the backward, only the input kept for the gradient, and
    bfloat16 activations normalised without a float32 copy (issue 7: faster, less memory; the
    numbers are in MEASURED.md). The moving variance follows the biased batch variance on both
    paths (as Keras's), so one device and several replicas keep the same statistics; the fused
    kernel uses ε ≥ 1.001e-5."""

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
        return (self.fused and mask is None and not self.renorm and rank in (2, 4) and self.axis in (-1, rank - 1)
                and isinstance(training, (bool, type(None)))
                and not (self.sync and bool(training) and self.trainable))

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
        shape = tf.shape(x)
        if x.shape.rank == 2:
            x = x[:, None, None, :]
        channels = x.shape[-1]
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=self.epsilon,
                                                                 is_training=True)
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
            variance = variance * (n - 1.0) / n   # the kernel's is unbiased; Keras's (and the sync path's) is not
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean=tf.convert_to_tensor(self.moving_mean),
                                                       variance=tf.convert_to_tensor(self.moving_variance),
                                                       epsilon=self.epsilon, is_training=False)
        if inputs.shape.rank == 2:
            y = tf.reshape(y, shape)
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


def _out_size(size: int, kernel: int, stride: int, padding: str) -> tuple[int, int]:
    """(output size, padding before) of one spatial axis, as TensorFlow's SAME / VALID define them."""
    if padding == "valid":
        return (size - kernel) // stride + 1, 0
    out = -(-size // stride)
    return out, max((out - 1) * stride + kernel - size, 0) // 2


def small_conv2d(x, kernel, stride: int = 1, padding: str = "same"):
    """A 2-D convolution of a small image as one matrix product: output pixel (i, j) is
    Σ_(p, q) x[p, q] · kernel[p − i·stride + pad_top, q − j·stride + pad_left] over the input
    pixels whose tap falls inside the kernel, so the whole convolution is x reshaped to
    [batch, h·w·c] times a [h·w·c, out_h·out_w·filters] matrix assembled from the kernel's taps
    (zeros where no tap applies). Same result as ``tf.nn.conv2d`` (NHWC, static h, w); cheaper where
    the output has a handful of pixels: oneDNN runs a 3×3 convolution of a 2×2 image at a third of
    the speed it reaches on larger ones (issue 7: DINO's 16-px crops end ResNet-18 at 2×2)."""
    _, h, w, c = x.shape
    kh, kw, _, filters = kernel.shape
    out_h, top = _out_size(h, kh, stride, padding)
    out_w, left = _out_size(w, kw, stride, padding)
    tap = np.full([h * w, out_h * out_w], kh * kw, np.int32)   # index kh·kw = the zero block
    for p, q, i, j in itertools.product(range(h), range(w), range(out_h), range(out_w)):
        a, b = p - i * stride + top, q - j * stride + left
        if 0 <= a < kh and 0 <= b < kw:
            tap[p * w + q, i * out_w + j] = a * kw + b
    taps = tf.concat([tf.reshape(kernel, [kh * kw, c, filters]), tf.zeros([1, c, filters], kernel.dtype)], 0)
    matrix = tf.reshape(tf.transpose(tf.gather(taps, tap), [0, 2, 1, 3]), [h * w * c, out_h * out_w * filters])
    y = tf.matmul(tf.reshape(x, [-1, h * w * c]), matrix)
    return tf.reshape(y, [-1, out_h, out_w, filters])


def small_conv_pays(h, w, kernel, stride: int, padding: str) -> bool:
    """Whether ``small_conv2d`` beats oneDNN's convolution (measured, MEASURED.md session 13): the
    output has 1 to 4 pixels and the product does at most twice the convolution's multiply-adds
    (h·w ≤ 2·kh·kw: a 1×1 kernel only on images of 1 or 2 pixels). Unknown sizes: no."""
    if h is None or w is None:
        return False
    kh, kw = kernel
    out_h, _ = _out_size(h, kh, stride, padding)
    out_w, _ = _out_size(w, kw, stride, padding)
    return out_h >= 1 and out_w >= 1 and out_h * out_w <= 4 and h * w <= 2 * kh * kw


def bn_relu_source(a):
    """The training batch norm that ``a`` is the ReLU of: (x, scale, offset, mean, variance, epsilon)
    when the graph tensor ``a`` is ``Relu(FusedBatchNormV3(x, scale, offset, is_training=True))``
    in NHWC (``BatchNorm``'s fused path followed by a ReLU), else None (eager tensors, other ops)."""
    if tf.executing_eagerly() or not hasattr(a, "op") or a.op.type != "Relu":
        return None
    bn_op = a.op.inputs[0].op
    if (bn_op.type != "FusedBatchNormV3" or not bn_op.get_attr("is_training")
            or bn_op.get_attr("data_format") != b"NHWC" or bn_op.get_attr("exponential_avg_factor") != 1.0):
        return None
    return (*bn_op.inputs[:5], bn_op.get_attr("epsilon"))


def conv_recomputing_input(conv_fn, a, source, kernel):
    """``conv_fn(a, kernel)`` where ``a = relu(batch_norm(x))`` (``source``, from ``bn_relu_source``),
    differentiated without keeping ``a`` when the convolution is its only reader: the backward
    recomputes ``a`` from x (one normalisation pass) and runs the batch norm's, the ReLU's and the
    convolution's own gradients on the copy, so ``a`` stays out of the backward graph and its memory
    is freed once the forward has used it (issue 7: one of a basic ResNet block's four saved
    activations). When anything else reads ``a`` (a residual shortcut, a second convolution) it is
    kept anyway, and the gradient goes to ``a`` through the ordinary path. Same numbers either way."""
    x, scale, offset, mean, variance, epsilon = source
    ours = set()   # the ops this call adds that read ``a``; filled in below, read in the backward pass

    @tf.custom_gradient
    def run(a, x, scale, offset, kernel):
        def grad(dy):
            if set(a.consumers()) - ours:   # ``a`` is kept for another reader: use it
                with tf.GradientTape() as tape:
                    tape.watch([a, kernel])
                    out = conv_fn(a, kernel)   # only its gradient is used: the op itself is pruned
                da, dkernel = tape.gradient(out, [a, kernel], output_gradients=dy)
                return [da, None, None, None, dkernel]
            # x again, but only once dy exists: the recomputation runs in the backward pass and is not
            # merged with the forward's identical ops (Grappler removes duplicate computations)
            with tf.control_dependencies([dy]):
                x_again = tf.identity(x)
            with tf.GradientTape() as tape:
                tape.watch([x_again, scale, offset, kernel])
                y = tf.raw_ops.FusedBatchNormV3(x=x_again, scale=scale, offset=offset, mean=mean, variance=variance,
                                                epsilon=epsilon, is_training=True)[0]
                out = conv_fn(tf.nn.relu(y), kernel)   # only its gradient is used: the op itself is pruned
            return [None, *tape.gradient(out, [x_again, scale, offset, kernel], output_gradients=dy)]
        return conv_fn(a, kernel), grad

    before = set(a.consumers())
    out = run(a, x, scale, offset, tf.convert_to_tensor(kernel))
    ours.update(set(a.consumers()) - before)
    return out


@keras.saving.register_keras_serializable("ssl_tf")
class Conv2D(keras.layers.Conv2D):
    """Keras's Conv2D (same weights, same config) that runs ``small_conv2d`` when the traced input's
    height and width are known and small enough for it to pay (``small_conv_pays``), and, when its
    input is the ReLU of a training batch norm, recomputes that input in the backward pass instead
    of keeping it (``conv_recomputing_input``; ``recompute = False`` turns it off)."""

    recompute = True

    def _convolve(self, inputs, kernel):
        strides = tuple(self.strides)
        if (self.data_format == "channels_last" and tuple(self.dilation_rate) == (1, 1) and self.groups == 1
                and strides[0] == strides[1] and len(inputs.shape) == 4
                and small_conv_pays(inputs.shape[1], inputs.shape[2], tuple(self.kernel_size), strides[0],
                                    self.padding)):
            return small_conv2d(inputs, kernel, strides[0], self.padding)
        return super().convolution_op(inputs, kernel)

    def convolution_op(self, inputs, kernel):
        source = bn_relu_source(inputs) if self.recompute else None
        if source is None:
            return self._convolve(inputs, kernel)
        return conv_recomputing_input(self._convolve, inputs, source, kernel)


def conv(filters, kernel, stride, name, use_bias=False):
    return Conv2D(filters, kernel, stride, padding="same", use_bias=use_bias, kernel_initializer="he_normal",
                  name=name)


def image_input(input_mode: str = "rgb"):
    """(keras.Input of RGB images in [0, 1], the tensor the network starts from)."""
    if input_mode not in INPUT_MODES:
        raise ValueError(f"input_mode={input_mode}: accepted {INPUT_MODES}")
    inputs = keras.Input((None, None, 3), name="images")
    return inputs, (Lightness(name="lightness")(inputs) if input_mode == "lightness" else inputs)


def channels(base: int, width: float) -> int:
    return max(1, int(round(base * width)))
