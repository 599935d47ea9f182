"""The CPU fast paths behind one switch (``ssl_tf.models.kernels``, ``--cpu_kernels``): on, the
traced graph uses them; off, Keras's plain layers; the same outputs, gradients and statistics."""
import numpy as np
import tensorflow as tf
from absl import flags
from helpers import assert_close_at_precision

from ssl_tf import cli
from ssl_tf.config import Config
from ssl_tf.models import build_backbone, kernels
from ssl_tf.runner import Runner


def _traced_step(model, x):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(model(x, training=True) ** 2)
        return y, tape.gradient(y, model.trainable_variables)
    graph = step.get_concrete_function(x).graph
    return step(x), {op.type for op in graph.get_operations()}


def test_the_switch_swaps_every_fast_path_for_keras_layers_with_the_same_numbers():
    assert kernels.enabled()
    x = tf.random.stateless_uniform([4, 16, 16, 3], [1, 2])   # ResNet-10 ends at 2×2: the small-conv case
    fast = build_backbone("resnet10", width=0.0625, image_size=16)
    initial = fast.get_weights()                                        # before the step moves the BN statistics
    (y_fast, g_fast), ops_fast = _traced_step(fast, x)
    with kernels.using(False):
        assert not kernels.enabled()
        plain = build_backbone("resnet10", width=0.0625, image_size=16)
        plain.set_weights(initial)
        (y_plain, g_plain), ops_plain = _traced_step(plain, x)
    assert kernels.enabled()                                             # restored after the block
    assert "FusedBatchNormV3" in ops_fast and "FusedBatchNormV3" not in ops_plain
    assert "FusedBatchNormGradV3" in ops_fast and "FusedBatchNormGradV3" not in ops_plain
    # the small-image convolutions became matrix products: fewer Conv2D ops on the fast path
    assert "MatMul" in ops_fast and "MatMul" not in ops_plain
    np.testing.assert_allclose(float(y_fast), float(y_plain), rtol=1e-4)
    for a, b in zip(g_fast, g_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-3 * float(tf.reduce_max(tf.abs(b))))
    moving = [(v.name, v.numpy()) for v in fast.non_trainable_variables]
    for (name, a), b in zip(moving, plain.non_trainable_variables):   # moving BN statistics after one step
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)


def test_cpu_kernels_flag_parses_and_the_runner_sets_the_switch(tmp_path):
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["ssl-tf", "--cpu_kernels=false"])
    assert cli.config_from_flags(fv).cpu_kernels is False
    try:
        run = Runner(Config(dataset="shapes:32,8", image_size=16, backbone="resnet10", width=0.0625, batch_size=8,
                            max_steps=2,
                            mode="pretrain", progress=False, plots=False, cpu_kernels=False,
                            model_dir=str(tmp_path)), log=lambda *a: None)
        assert not kernels.enabled()
        results = run.run()
        assert results["pretrain"]["steps"] == 2 and np.isfinite(results["pretrain"]["final"]["loss"])
        assert results["config"]["cpu_kernels"] is False
    finally:
        kernels.use(True)


def test_inference_in_bf16_agrees_across_the_switch():
    """Frozen BN (inference) of a bf16 backbone takes the same switch, to bf16 accuracy."""
    x = tf.random.stateless_uniform([2, 16, 16, 3], [3, 4])
    fast = build_backbone("resnet10", width=0.0625, image_size=16, precision="mixed_bfloat16")
    with kernels.using(False):
        plain = build_backbone("resnet10", width=0.0625, image_size=16, precision="mixed_bfloat16")
        plain.set_weights(fast.get_weights())
        expected = plain(x, training=False)
    got = fast(x, training=False)
    assert got.dtype == expected.dtype == tf.float32
    assert_close_at_precision(got, expected, "mixed_bfloat16")
