"""ssl_tf's CPU fast paths, behind one switch.

Each computes what a plain Keras layer computes (the tests compare them to Keras's graph and to
NumPy) in fewer passes or with less memory, measured on 2-core CPUs (benchmarks/levers.md):

* ``fused_batch_norm``: TensorFlow's fused kernel (``FusedBatchNormV3`` and its gradient) instead of
  Keras's elementwise graph: one pass forward, one backward, only the input kept for the gradient,
  bfloat16 activations normalised without a float32 copy;
* ``small_conv2d`` (where ``small_conv_pays``): a convolution with 1 to 4 output pixels as one
  matrix product (DINO's 16-px crops end ResNet-18 at 2×2, where oneDNN runs a third as fast);
* ``conv_recomputing_input`` (with ``bn_relu_source``): a convolution of relu(batch_norm(x)) that
  recomputes its input in the backward pass instead of keeping it.

``use(False)`` — ``--cpu_kernels=false`` — turns all three off, so the layers run Keras's plain
graph. The switch is read when a layer is traced: set it before building or calling a model.
"""
from __future__ import annotations

import contextlib
import itertools

import numpy as np
import tensorflow as tf

_state = {"enabled": True}


def enabled() -> bool:
    """Whether the layers take the fast paths below (default: yes)."""
    return _state["enabled"]


def use(on: bool):
    """Turn the fast paths on or off for every layer traced from now on."""
    _state["enabled"] = bool(on)


@contextlib.contextmanager
def using(on: bool):
    """``use(on)`` inside the block, the previous setting after it."""
    previous = enabled()
    use(on)
    try:
        yield
    finally:
        use(previous)


def fused_batch_norm(inputs, gamma, beta, moving_mean, moving_variance, epsilon: float, training: bool):
    """Batch normalisation of NHWC (or [batch, C]) ``inputs`` by ``FusedBatchNormV3``: with the batch's
    statistics when ``training`` (returned as (mean, biased variance) for the moving averages), else
    with the moving ones (returned as None). ``gamma`` / ``beta`` None: 1 / 0. The kernel uses
    ε ≥ 1.001e-5."""
    x = inputs if inputs.dtype in (tf.float32, tf.bfloat16, tf.float16) else tf.cast(inputs, tf.float32)
    shape = tf.shape(x)
    if x.shape.rank == 2:
        x = x[:, None, None, :]
    channels = x.shape[-1]
    gamma = tf.convert_to_tensor(gamma) if gamma is not None else tf.ones([channels], tf.float32)
    beta = tf.convert_to_tensor(beta) if beta is not None else tf.zeros([channels], tf.float32)
    if training:
        y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=epsilon, is_training=True)
        n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), tf.float32)
        statistics = (mean, variance * (n - 1.0) / n)   # the kernel's variance is unbiased; Keras's is not
    else:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, mean=tf.convert_to_tensor(moving_mean),
                                                   variance=tf.convert_to_tensor(moving_variance),
                                                   epsilon=epsilon, is_training=False)
        statistics = None
    if inputs.shape.rank == 2:
        y = tf.reshape(y, shape)
    return y, statistics


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
    the speed it reaches on larger ones (DINO's 16-px crops end ResNet-18 at 2×2)."""
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
    """Whether ``small_conv2d`` beats oneDNN's convolution (measured on an Intel Xeon, benchmarks/levers.md): the
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
    is freed once the forward has used it (one of a basic ResNet block's four saved
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
