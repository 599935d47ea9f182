"""BatchNorm's fused path (FusedBatchNormV3) against the batch-norm formula re-derived in NumPy."""
import numpy as np
import pytest
import tensorflow as tf

from ssl_tf.models.layers import BatchNorm

EPS, MOMENTUM = 1e-5, 0.9


def _numpy_batch_norm(x, w, gamma, beta):
    """Training-mode BN of ``x`` (channels last) and the gradients of sum(w · y):
    x̂ = (x − μ)/√(σ² + ε), y = γ x̂ + β;  ∂x = γ/√(σ² + ε) · (w − mean(w) − x̂ · mean(w x̂)),
    ∂γ = Σ w x̂, ∂β = Σ w (means and sums over every axis but the channels)."""
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    inv = 1.0 / np.sqrt(var + EPS)
    xhat = (x - mean) * inv
    y = gamma * xhat + beta
    dx = gamma * inv * (w - w.mean(axes) - xhat * (w * xhat).mean(axes))
    return y, dx, (w * xhat).sum(axes), w.sum(axes), mean, var


@pytest.mark.parametrize("shape", [(6, 5, 5, 4), (24, 4)])
@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_follows_the_formula(shape, policy):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, shape)
    w = rng.normal(size=shape)
    gamma, beta = rng.normal(1.0, 0.2, shape[-1]), rng.normal(0.0, 0.5, shape[-1])
    layer = BatchNorm(momentum=MOMENTUM, epsilon=EPS, dtype=policy)
    layer.build(shape)
    layer.gamma.assign(gamma.astype(np.float32))
    layer.beta.assign(beta.astype(np.float32))
    bf16 = policy == "mixed_bfloat16"
    xin = tf.constant(x, tf.bfloat16 if bf16 else tf.float32)
    if bf16:   # the formula on what the layer really sees: bfloat16 input and incoming gradient
        x = xin.numpy().astype(np.float64)
        w = tf.cast(tf.constant(w, tf.bfloat16), tf.float64).numpy()

    @tf.function
    def train(xin):
        with tf.GradientTape() as tape:
            tape.watch(xin)
            y = layer(xin, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * w.astype(np.float32))
        return (y, *tape.gradient(loss, [xin, layer.gamma, layer.beta]))

    graph = train.get_concrete_function(xin).graph
    fused = [op for op in graph.get_operations() if op.type == "FusedBatchNormV3"]
    assert len(fused) == 1 and fused[0].get_attr("T") == (tf.bfloat16 if bf16 else tf.float32)   # no float32 copy
    assert any(op.type == "FusedBatchNormGradV3" for op in graph.get_operations())

    y, dx, dgamma, dbeta = train(xin)
    ref_y, ref_dx, ref_dgamma, ref_dbeta, mean, var = _numpy_batch_norm(x, w, gamma, beta)
    tol = 2e-2 if bf16 else 2e-5   # bfloat16 output and input gradient: 8-bit mantissa
    assert y.dtype == (tf.bfloat16 if bf16 else tf.float32)
    np.testing.assert_allclose(np.float32(y), ref_y, rtol=tol, atol=tol * 3)
    np.testing.assert_allclose(np.float32(dx), ref_dx, rtol=tol, atol=tol * np.abs(ref_dx).max())
    sums = 1e-2 if bf16 else 1e-4
    np.testing.assert_allclose(dgamma, ref_dgamma, rtol=sums, atol=sums * np.abs(ref_dgamma).max())
    np.testing.assert_allclose(dbeta, ref_dbeta, rtol=sums, atol=sums * np.abs(ref_dbeta).max())
    # moving statistics: m·old + (1 − m)·batch, with the biased batch variance (as Keras's path)
    np.testing.assert_allclose(layer.moving_mean.numpy(), (1 - MOMENTUM) * mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), MOMENTUM + (1 - MOMENTUM) * var, rtol=1e-4)

    # inference: the moving statistics, not the batch's
    mm, mv = layer.moving_mean.numpy(), layer.moving_variance.numpy()
    inference = np.float32(layer(xin, training=False))
    np.testing.assert_allclose(inference, gamma * (x - mm) / np.sqrt(mv + EPS) + beta, rtol=tol, atol=tol * 3)


def test_frozen_batch_norm_uses_moving_statistics_and_trains_nothing():
    layer = BatchNorm(momentum=MOMENTUM, epsilon=EPS)
    layer.build((8, 3))
    layer.moving_mean.assign([1.0, 2.0, 3.0])
    layer.trainable = False
    x = np.random.default_rng(1).normal(size=(8, 3)).astype(np.float32)
    y = layer(x, training=True)
    np.testing.assert_allclose(y, (x - [1.0, 2.0, 3.0]) / np.sqrt(1.0 + EPS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_mean.numpy(), [1.0, 2.0, 3.0])


def test_fused_and_keras_paths_agree_inside_a_backbone():
    """The whole ResNet's output and gradients: fused kernel vs Keras's elementwise reference."""
    import keras

    from ssl_tf.models import build_backbone
    x = tf.constant(np.random.default_rng(2).random((8, 16, 16, 3)), tf.float32)
    results = []
    try:
        for fused in (True, False):
            BatchNorm.fused = fused
            keras.utils.set_random_seed(0)
            net = build_backbone("resnet10", width=0.125, image_size=16)
            with tf.GradientTape() as tape:
                y = net(x, training=True)
                loss = tf.reduce_sum(y * tf.range(y.shape[-1], dtype=tf.float32))
            results.append((y.numpy(), tape.gradient(loss, net.trainable_variables)[0].numpy()))
    finally:
        BatchNorm.fused = True
    (y1, g1), (y2, g2) = results
    np.testing.assert_allclose(y1, y2, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g1, g2, rtol=1e-3, atol=1e-3 * np.abs(g2).max())
