"""A convolution whose input is ReLU(training batch norm) recomputes that input in the backward
pass instead of keeping it (``conv_recomputing_input``): gradients against the chain rule
re-derived in NumPy and against ordinary differentiation, and the graph TensorFlow runs (the
activation read by no gradient op, the recomputation not merged away, no extra convolution)."""
import collections
import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import forward_ops, pad_same
from tensorflow.python.eager import context

from ssl_tf.models import build_backbone, kernels as K, layers as L

EPS = L.BN_EPSILON


def _numpy_bn_relu_conv_grads(x, gamma, beta, k, stride, g):
    """Gradients of L = Σ g · conv(relu(γ·x̂ + β), k), x̂ = (x − μ)/√(σ² + ε) over the batch and pixels:
    dk[p, q] = Σ a_pad[n, i·s + p, j·s + q]ᵀ g[n, i, j]; da_pad[n, i·s + p, j·s + q] += g[n, i, j] k[p, q]ᵀ;
    dz = da · [γx̂ + β > 0]; dβ = Σ dz; dγ = Σ dz · x̂; dx = γ/√(σ² + ε) · (dz − mean(dz) − x̂ · mean(dz · x̂))."""
    axes = (0, 1, 2)
    mu, var = x.mean(axes), x.var(axes)
    xhat = (x - mu) / np.sqrt(var + EPS)
    z = gamma * xhat + beta
    a = np.maximum(z, 0)
    kh = k.shape[0]
    a_pad, out_h, out_w, top, left = pad_same(a, kh, kh, stride)
    dk = np.zeros_like(k)
    da_pad = np.zeros_like(a_pad)
    for i, j, p, q in itertools.product(range(out_h), range(out_w), range(kh), range(kh)):
        dk[p, q] += a_pad[:, i * stride + p, j * stride + q].T @ g[:, i, j]
        da_pad[:, i * stride + p, j * stride + q] += g[:, i, j] @ k[p, q].T
    h, w = x.shape[1:3]
    dz = da_pad[:, top:top + h, left:left + w] * (z > 0)
    dbeta, dgamma = dz.sum(axes), (dz * xhat).sum(axes)
    dx = gamma / np.sqrt(var + EPS) * (dz - dz.mean(axes) - xhat * (dz * xhat).mean(axes))
    return dx, dgamma, dbeta, dk


def _bn_relu_conv(stride):
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.ReLU()(L.bn("bn", False)(inputs))
    return keras.Model(inputs, L.conv(5, 3, stride, "conv")(a))


@pytest.mark.parametrize("stride", [1, 2])
def test_bn_relu_conv_gradients_follow_the_chain_rule(stride):
    keras.utils.set_random_seed(stride)
    model = _bn_relu_conv(stride)
    rng = np.random.default_rng(stride)
    x = rng.normal(1.0, 2.0, (4, 8, 8, 3)).astype(np.float32)
    gamma, beta = rng.normal(1.0, 0.5, 3).astype(np.float32), rng.normal(0.0, 0.5, 3).astype(np.float32)
    bn, conv = model.get_layer("bn"), model.get_layer("conv")
    bn.gamma.assign(gamma)
    bn.beta.assign(beta)
    g = rng.normal(size=(4, -(-8 // stride), -(-8 // stride), 5)).astype(np.float32)
    taken = []
    source = K.bn_relu_source

    @tf.function
    def grads(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(model(x, training=True) * g)
        return tape.gradient(loss, [x, bn.gamma, bn.beta, conv.kernel])

    try:
        K.bn_relu_source = lambda a: taken.append(source(a)) or taken[-1]
        got = grads(tf.constant(x))
    finally:
        K.bn_relu_source = source
    assert taken and taken[-1] is not None   # the recomputing path ran
    want = _numpy_bn_relu_conv_grads(x.astype(np.float64), gamma, beta, conv.kernel.numpy().astype(np.float64),
                                     stride, g.astype(np.float64))
    for got_i, want_i in zip(got, want):
        np.testing.assert_allclose(got_i.numpy(), want_i, rtol=1e-3, atol=1e-4 * np.abs(want_i).max())


def _gradient_graph(model, shape):
    @tf.function
    def f(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return tape.gradient(loss, model.trainable_variables)
    return f, f.get_concrete_function(tf.TensorSpec(shape)).graph


def _bn_relu_outputs(graph):
    """The forward pass's ReLU(batch norm) outputs (not the backward's recomputations)."""
    return [op.outputs[0] for op in forward_ops(graph)
            if op.type == "Relu" and op.inputs[0].op.type == "FusedBatchNormV3"]


GRADIENT_OPS = {"Conv2DBackpropFilter", "ReluGrad", "FusedBatchNormGradV3"}


@pytest.mark.parametrize("recompute", [True, False])
def test_only_the_activations_another_layer_reads_stay_in_the_backward_graph(recompute):
    """ResNet-18 v1: the stem's BN-ReLU output also feeds the first residual shortcut (kept); each
    block's inner BN-ReLU output feeds only the next convolution (8 of them: not kept)."""
    keras.utils.set_random_seed(0)
    try:
        L.Conv2D.recompute = recompute
        _, graph = _gradient_graph(build_backbone("resnet18", width=0.125, image_size=16), [4, 16, 16, 3])
    finally:
        L.Conv2D.recompute = True
    read_by_backward = [a for a in _bn_relu_outputs(graph) if {c.type for c in a.consumers()} & GRADIENT_OPS]
    assert len(_bn_relu_outputs(graph)) == 9
    assert len(read_by_backward) == (1 if recompute else 9)
    # every batch norm is differentiated exactly once (the stem's through the ordinary path only)
    assert [op.type for op in graph.get_operations()].count("FusedBatchNormGradV3") == 20


def _executed_op_counts(f, x):
    """Op types of the graph TensorFlow runs for ``f(x)``, after Grappler's optimisations (pruning,
    deduplication, fusion)."""
    context.enable_run_metadata()
    try:
        f(x)
        metadata = context.export_run_metadata()
    finally:
        context.disable_run_metadata()
    return collections.Counter(node.op for fg in metadata.function_graphs for node in fg.post_optimization_graph.node)


def test_the_recomputation_runs_once_per_kept_activation_and_adds_no_convolution():
    counts = {}
    keras.utils.set_random_seed(0)
    model = build_backbone("resnet18", width=0.125, image_size=16)
    try:
        for recompute in (True, False):
            L.Conv2D.recompute = recompute
            f, _ = _gradient_graph(model, [4, 16, 16, 3])
            counts[recompute] = _executed_op_counts(f, tf.zeros([4, 16, 16, 3]))
    finally:
        L.Conv2D.recompute = True
    on, off = counts[True], counts[False]
    norms = ("FusedBatchNormV3", "_FusedBatchNormEx")
    assert sum(on[t] for t in norms) == sum(off[t] for t in norms) + 8   # 8 recomputed, none merged away
    for t in ("Conv2D", "MatMul", "FusedBatchNormGradV3", "Conv2DBackpropFilter", "Conv2DBackpropInput"):
        assert on[t] == off[t], t   # the backward's own forward convolutions are pruned


@pytest.mark.parametrize("backbone,policy", [("resnet18", "float32"), ("resnet50v2", "float32"),
                                             ("vgg19", "float32"), ("revnet50", "float32"),
                                             ("resnet18", "mixed_bfloat16")])
def test_backbone_gradients_and_statistics_equal_ordinary_differentiation(backbone, policy):
    """v1 basic blocks (the 2×2 last stage through ``small_conv2d``), v2 bottlenecks (a pre-activation
    read by the shortcut's projection and the first convolution: the ordinary path), VGG, bfloat16."""
    x = tf.random.stateless_uniform([4, 16, 16, 3], [1, 2])
    results = []
    try:
        for recompute in (True, False):
            L.Conv2D.recompute = recompute
            keras.utils.set_random_seed(0)
            model = build_backbone(backbone, width=0.125, image_size=16, precision=policy)
            w = tf.random.stateless_normal([model.output_shape[-1]], [3, 4])

            @tf.function
            def step(x):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(tf.cast(model(x, training=True), tf.float32) * w)
                return tape.gradient(loss, model.trainable_variables)
            grads = step(x)
            stats = [v.numpy() for v in model.non_trainable_variables]
            results.append(([g.numpy() for g in grads], stats))
    finally:
        L.Conv2D.recompute = True
    (g_on, s_on), (g_off, s_off) = results
    tol = 2e-2 if policy == "mixed_bfloat16" else 1e-4
    for a, b in zip(g_on + s_on, g_off + s_off):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * max(np.abs(b).max(), 1e-6))


def test_eager_calls_keep_the_ordinary_path():
    a = tf.nn.relu(tf.constant([[[[1.0, -1.0]]]]))
    assert K.bn_relu_source(a) is None
