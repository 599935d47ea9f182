import keras
import numpy as np
import tensorflow as tf

from ssl_tf.optim import LARS, SGD, WarmupCosine, build_optimizer, scale_learning_rate


def numpy_lars(w, grads, lr, momentum, wd, eeta, excluded):
    v = np.zeros_like(w)
    for g in grads:
        d = g if excluded else g + wd * w
        if not excluded:
            wn, dn = np.linalg.norm(w), np.linalg.norm(d)
            ratio = eeta * wn / dn if (wn > 0 and dn > 0) else 1.0
        else:
            ratio = 1.0
        v = momentum * v + lr * ratio * d
        w = w - v
    return w


def test_lars_matches_formula_and_excludes_bias():
    rng = np.random.default_rng(0)
    kernel0 = rng.normal(size=(4, 3)).astype(np.float32)
    bias0 = rng.normal(size=(3,)).astype(np.float32)
    kernel, bias = keras.Variable(kernel0), keras.Variable(bias0)
    opt = LARS(learning_rate=0.5, momentum=0.9, weight_decay=0.1, eeta=0.01)
    opt.build([kernel, bias])
    gk = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    gb = [rng.normal(size=(3,)).astype(np.float32) for _ in range(3)]
    for a, b in zip(gk, gb):
        opt.apply_gradients([(tf.constant(a), kernel), (tf.constant(b), bias)])
    np.testing.assert_allclose(kernel.numpy(), numpy_lars(kernel0, gk, 0.5, 0.9, 0.1, 0.01, False),
                               rtol=1e-5, atol=1e-6)
    # rank-1 variables (bias, BN gamma/beta): plain momentum SGD, no decay, no trust ratio
    np.testing.assert_allclose(bias.numpy(), numpy_lars(bias0, gb, 0.5, 0.9, 0.1, 0.01, True), rtol=1e-5, atol=1e-6)


def test_lars_zero_weights_use_unit_trust_ratio():
    w = keras.Variable(np.zeros((2, 2), np.float32))
    opt = LARS(learning_rate=0.1, momentum=0.0, weight_decay=0.0)
    opt.build([w])
    opt.apply_gradients([(tf.ones((2, 2)), w)])
    np.testing.assert_allclose(w.numpy(), -0.1 * np.ones((2, 2)))


def test_warmup_cosine_schedule_values():
    s = WarmupCosine(peak=2.0, warmup_steps=10, total_steps=110)
    np.testing.assert_allclose(float(s(0)), 0.0)
    np.testing.assert_allclose(float(s(5)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(s(10)), 2.0, rtol=1e-6)
    np.testing.assert_allclose(float(s(60)), 1.0, rtol=1e-5)      # half-way through the cosine
    np.testing.assert_allclose(float(s(110)), 0.0, atol=1e-6)


def test_learning_rate_scaling_rules():
    assert scale_learning_rate(0.3, 4096, "linear") == 0.3 * 16
    np.testing.assert_allclose(scale_learning_rate(0.075, 4096, "sqrt"), 0.075 * 64)
    assert scale_learning_rate(0.1, 512, "none") == 0.1


def test_sgd_weight_decay_skips_bn_and_bias():
    layer = keras.layers.BatchNormalization()
    layer.build((None, 3))
    dense = keras.layers.Dense(3)
    dense.build((None, 3))
    variables = dense.trainable_variables + layer.trainable_variables
    before = [v.numpy().copy() for v in variables]
    opt = build_optimizer("sgd", 0.1, weight_decay=0.5)
    opt.apply_gradients([(tf.zeros_like(v), v) for v in variables])
    changed = [not np.allclose(b, v.numpy()) for b, v in zip(before, variables)]
    # kernel decays; bias, gamma, beta untouched under zero gradient
    assert changed == [True, False, False, False]


def numpy_sgd(w, grads, lrs, momentum, wd):
    """torch.optim.SGD's update (dampening 0, no Nesterov): d = g + wd·w; v = m·v + d; w -= lr·v."""
    v = np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        v = momentum * v + g + wd * w
        w = w - lr * v
    return w


def test_sgd_decays_inside_the_gradient_as_torch_sgd():
    rng = np.random.default_rng(1)
    kernel0, bias0 = rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    kernel, bias = keras.Variable(kernel0), keras.Variable(bias0)
    lrs = [0.5, 0.3, 0.1, 0.05]
    step = keras.Variable(0, dtype="int64", trainable=False)
    opt = SGD(learning_rate=lambda: tf.gather(tf.constant(lrs), step), momentum=0.9, weight_decay=0.1)
    opt.build([kernel, bias])
    gk = [rng.normal(size=(4, 3)).astype(np.float32) for _ in lrs]
    gb = [rng.normal(size=(3,)).astype(np.float32) for _ in lrs]
    for a, b in zip(gk, gb):
        opt.apply_gradients([(tf.constant(a), kernel), (tf.constant(b), bias)])
        step.assign_add(1)
    np.testing.assert_allclose(kernel.numpy(), numpy_sgd(kernel0, gk, lrs, 0.9, 0.1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bias.numpy(), numpy_sgd(bias0, gb, lrs, 0.9, 0.0), rtol=1e-5, atol=1e-6)
    # Keras' decoupled decay would differ: under a zero gradient at momentum 0.9 the decay compounds
    # through the velocity, 1 + 0.9 = 1.9 times lr·wd·w by the second step
    w = keras.Variable(np.ones((2, 2), np.float32))
    opt = build_optimizer("sgd", 0.1, weight_decay=0.5, momentum=0.9)
    for _ in range(2):
        opt.apply_gradients([(tf.zeros((2, 2)), w)])
    w1 = 1 - 0.1 * 0.5
    np.testing.assert_allclose(w.numpy(), w1 - 0.1 * (0.9 * 0.5 + 0.5 * w1), rtol=1e-6)
