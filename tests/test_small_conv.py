"""``small_conv2d`` (a convolution of a small image as one matrix product) against the convolution
re-derived in NumPy, its gradients against ``tf.nn.conv2d``'s, and the layer that chooses it."""
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import forward_ops, pad_same

from ssl_tf.models import kernels as K, layers as L
from ssl_tf.models.resnet import resnet


def _numpy_conv(x, kernel, stride, padding):
    """y[n, i, j, o] = Σ_(a, b, c) x_pad[n, i·s + a, j·s + b, c] · k[a, b, c, o], x_pad zero-padded as
    TensorFlow's SAME (total max((out − 1)·s + k − size, 0), the smaller half first) or VALID (none)."""
    n, h, w, c = x.shape
    kh, kw, _, o = kernel.shape
    if padding == "same":
        x, out_h, out_w, _, _ = pad_same(x, kh, kw, stride)
    else:
        out_h, out_w = (h - kh) // stride + 1, (w - kw) // stride + 1
    y = np.zeros((n, out_h, out_w, o))
    for i, j, a, b in itertools.product(range(out_h), range(out_w), range(kh), range(kw)):
        y[:, i, j] += x[:, i * stride + a, j * stride + b] @ kernel[a, b]
    return y


CASES = [((2, 2), 3, 1, "same"), ((1, 1), 3, 1, "same"), ((1, 2), 3, 1, "same"), ((4, 4), 3, 2, "same"),
         ((3, 3), 3, 2, "same"), ((4, 4), 3, 1, "same"), ((3, 5), 3, 1, "valid"), ((2, 2), 1, 1, "same"),
         ((5, 5), 1, 2, "same")]


@pytest.mark.parametrize("hw,k,stride,padding", CASES)
def test_small_conv2d_follows_the_convolution_formula_and_its_gradients(hw, k, stride, padding):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, *hw, 5))
    kernel = rng.normal(size=(k, k, 5, 4))
    want = _numpy_conv(x, kernel, stride, padding)
    xt, kt = tf.constant(x, tf.float32), tf.constant(kernel, tf.float32)
    upstream = tf.constant(rng.normal(size=want.shape), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([xt, kt])
        got = K.small_conv2d(xt, kt, stride, padding)
        ref = tf.nn.conv2d(xt, kt, stride, padding.upper())
        loss, ref_loss = tf.reduce_sum(got * upstream), tf.reduce_sum(ref * upstream)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    for g, r in zip(tape.gradient(loss, [xt, kt]), tape.gradient(ref_loss, [xt, kt])):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_small_conv2d_keeps_half_precision(dtype):
    rng = np.random.default_rng(1)
    x, kernel = rng.normal(size=(4, 2, 2, 8)), rng.normal(size=(3, 3, 8, 6)) * 0.3
    got = K.small_conv2d(tf.constant(x, dtype), tf.constant(kernel, dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), _numpy_conv(x, kernel, 1, "same"), atol=0.1)


@pytest.mark.parametrize("h,w,kernel,stride,pays", [
    (2, 2, (3, 3), 1, True), (1, 1, (3, 3), 1, True), (4, 4, (3, 3), 2, True),   # out ≤ 4 pixels, h·w ≤ 18
    (4, 4, (3, 3), 1, False),      # 16 output pixels: oneDNN's convolution is as fast there
    (4, 4, (1, 1), 2, False),      # a 1×1 kernel: the product would do 16× the work
    (2, 2, (1, 1), 1, False), (8, 8, (3, 3), 2, False), (None, 2, (3, 3), 1, False)])
def test_small_conv_pays_only_for_tiny_outputs_at_bounded_cost(h, w, kernel, stride, pays):
    assert K.small_conv_pays(h, w, kernel, stride, "same") is pays


def test_small_conv_pays_never_for_an_empty_valid_output():
    assert K.small_conv_pays(2, 2, (3, 3), 1, "valid") is False   # (2 − 3) + 1 = 0 rows
    assert K.small_conv_pays(3, 3, (3, 3), 1, "valid") is True


def test_a_resnet_on_16px_crops_runs_its_last_stage_as_matrix_products_with_the_same_result():
    """ResNet-18 on 16-px images ends at 2×2: the last stage's 3×3 convolutions (the stride-2 one
    from 4×4 included) become products; features and gradients equal Keras's own Conv2D's."""
    keras.utils.set_random_seed(0)
    model = resnet(18, 0.125, 32)
    x = tf.random.stateless_uniform([6, 16, 16, 3], [0, 1])

    def features_and_grads(images):
        with tf.GradientTape() as tape:
            y = model(images, training=True)
            loss = tf.reduce_sum(y * tf.range(y.shape[-1], dtype=y.dtype))
        return y, tape.gradient(loss, model.trainable_variables)

    graph = tf.function(features_and_grads).get_concrete_function(tf.TensorSpec(x.shape)).graph
    types = [op.type for op in forward_ops(graph)]
    assert types.count("Conv2D") == 20 - 4   # 20 convolutions, 4 of them (stage 4's 3×3) as products
    assert "GatherV2" in types
    y, grads = features_and_grads(x)
    original = L.Conv2D.convolution_op
    try:
        L.Conv2D.convolution_op = keras.layers.Conv2D.convolution_op
        y_ref, grads_ref = features_and_grads(x)
    finally:
        L.Conv2D.convolution_op = original
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), rtol=1e-4, atol=1e-5)
    for g, r in zip(grads, grads_ref):
        np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-3, atol=1e-4 * float(tf.reduce_max(tf.abs(r))))


def test_the_conv_layer_round_trips_through_its_config():
    layer = L.conv(8, 3, 2, "c")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(clone) is L.Conv2D and clone.get_config() == layer.get_config()
