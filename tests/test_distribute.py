"""MirroredStrategy over 2 logical CPUs == one device, for the same global batch."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_replica_steps

from ssl_tf import distribute
from ssl_tf.data import pipeline, shapes, views
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import nt_xent
from ssl_tf.methods import SimCLR
from ssl_tf.models import build_backbone
from ssl_tf.optim import LARS

CFG = views.AugmentConfig(image_size=16, color_jitter=0.5)


def _examples():
    x, y = shapes.generate(32, seed=0, image_size=16)
    return Examples("t", y, 10, images=x)


def _train(strategy, init_weights=None, steps=2, global_batch=8):
    """``steps`` train steps fed exactly as the runner feeds them (one pipeline, static per-replica batches)."""
    ex, fn = _examples(), views.views_for("two_views", CFG)
    batch = next(iter(pipeline.train_stream(ex, fn, global_batch=global_batch, seed=0)))
    keras.utils.set_random_seed(0)
    with strategy.scope():
        # global BN on one device too: the same statistics path, so only the distribution differs
        encoder = build_backbone("resnet10", width=0.125, image_size=16, synchronized_bn=True)
        model = SimCLR(encoder, 10, temperature=0.5, proj_dim=8, synchronized_bn=True)
        model.build_with(batch, LARS(0.3 * global_batch / 256, weight_decay=1e-6), keras.optimizers.SGD(0.1))
        if init_weights is not None:
            model.set_weights(init_weights)
    init = [w.copy() for w in model.get_weights()]
    losses = run_replica_steps(strategy, model, ex, fn, global_batch, steps,
                               eager=isinstance(strategy, tf.distribute.OneDeviceStrategy))   # the reference: eager
    return init, model.get_weights(), losses


def test_two_replicas_match_one_device():
    """The full train step (global BN, gathered negatives, LARS at SimCLR's 0.3 x batch/256, probe)
    on 2 replicas gives the one-device losses and updated weights, over two steps. (At 50x that
    learning rate the float32 rounding differences of the sums grow past 1e-5 by the second step.)"""
    init, one_w, one_logs = _train(tf.distribute.OneDeviceStrategy("/cpu:0"), steps=2)
    _, two_w, two_logs = _train(distribute.make_strategy("mirrored"), init_weights=init, steps=2)
    for step in range(2):
        for key in ("loss", "contrast_acc", "probe_loss", "probe_acc"):
            np.testing.assert_allclose(one_logs[step][key], two_logs[step][key], rtol=1e-5, atol=1e-5,
                                       err_msg=f"step {step} {key}")
    moved = max(float(np.abs(w - i).max()) for w, i in zip(one_w, init))
    assert moved > 1e-3   # the steps really changed the weights
    for a, b in zip(one_w, two_w):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_global_bn_moments_match_one_device():
    """``distribute.moments`` over 2 replicas equals the moments of the whole batch, gradients included."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(8, 3, 3, 5)) * 4 + 10).astype(np.float32)
    w = rng.normal(size=(2, 5)).astype(np.float32)
    init = rng.normal(size=(5,)).astype(np.float32)

    def objective(v, scale):
        mean, var = distribute.moments(v * scale + scale ** 2, [0, 1, 2])
        return tf.reduce_sum(w[0] * mean + w[1] * tf.sqrt(var))
    scale_one = tf.Variable(init)
    with tf.GradientTape() as tape:
        expected = objective(tf.constant(x), scale_one)
    expected_grad = tape.gradient(expected, scale_one).numpy()
    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
        scale_two = tf.Variable(init)
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices(x).batch(8))

    @tf.function
    def run(v):
        def replica(v):
            with tf.GradientTape() as tape:
                value = objective(v, scale_two)
                scaled = value / distribute.num_replicas()
            return value, tape.gradient(scaled, scale_two)
        return strategy.experimental_local_results(strategy.run(replica, args=(v,)))
    results = run(next(iter(ds)))
    for value, _ in results:
        np.testing.assert_allclose(float(value), float(expected), rtol=1e-6)
    grad = sum(g.numpy() for _, g in results)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


def test_gathered_nt_xent_gradients_match_one_device():
    """Gradients through ``distribute.gather`` (loss / replicas, summed by the optimizer) are exact."""
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(8, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
    w_one = tf.Variable(rng.normal(size=(4, 4)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = nt_xent(tf.constant(z1) @ w_one, tf.constant(z2) @ w_one, 0.2).loss
    expected = tape.gradient(loss, w_one).numpy()
    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
        w_two = tf.Variable(w_one.numpy())
    ds = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((z1, z2)).batch(8))

    @tf.function
    def grads(a, b):
        def replica(a, b):
            with tf.GradientTape() as tape:
                x, y = a @ w_two, b @ w_two
                offset = distribute.replica_id() * tf.shape(x)[0]
                local = nt_xent(x, y, 0.2, distribute.gather(x), distribute.gather(y), offset=offset).loss
                scaled = local / distribute.num_replicas()
            return tape.gradient(scaled, w_two)
        return strategy.reduce("SUM", strategy.run(replica, args=(a, b)), axis=None)
    (a, b), = list(ds)
    np.testing.assert_allclose(grads(a, b).numpy(), expected, atol=1e-5)


def test_helpers_are_identity_outside_replicas():
    x = tf.constant([[1.0, 2.0]])
    assert distribute.num_replicas() == 1 and int(distribute.replica_id()) == 0
    np.testing.assert_array_equal(distribute.gather(x).numpy(), x.numpy())


def test_make_strategy_choices_and_errors(monkeypatch):
    assert isinstance(distribute.make_strategy("auto"), tf.distribute.OneDeviceStrategy)
    assert distribute.make_strategy("mirrored").num_replicas_in_sync == 2
    with pytest.raises(SSLTFError, match="accepted: auto"):
        distribute.make_strategy("ring")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(SSLTFError, match="TF_CONFIG"):
        distribute.make_strategy("multi_worker")


def test_tpu_strategy_without_a_tpu_fails_fast_with_one_line(monkeypatch):
    import time
    for name in (None, "no-such-tpu-xyz", "grpc://localhost:1"):
        t0 = time.time()
        with pytest.raises(SSLTFError, match="no TPU found") as e:
            distribute.make_strategy("tpu", name)
        assert "\n" not in str(e.value) and time.time() - t0 < 60, name


def test_thread_flags_size_tensorflows_pools_before_it_starts(tmp_path):
    """--intra_op_threads/--inter_op_threads reach TensorFlow through the Runner (a fresh process:
    the pools can only be sized before TensorFlow's first op)."""
    import subprocess
    import sys
    code = ("import tensorflow as tf\n"
            "from ssl_tf.config import Config\n"
            "from ssl_tf.runner import Runner\n"
            f"Runner(Config(dataset='shapes:20,10', intra_op_threads=1, inter_op_threads=1, progress=False, "
            f"model_dir={str(tmp_path)!r}), log=lambda *a: None)\n"
            "tf.constant(1.0) + 1.0\n"
            "print(tf.config.threading.get_intra_op_parallelism_threads(), "
            "tf.config.threading.get_inter_op_parallelism_threads())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "1 1"


def test_thread_flags_after_tensorflow_started_are_refused_naming_the_flag():
    tf.constant(1.0) + 1.0                    # the runtime is up (as in any test process)
    distribute.set_threads(0, 0)              # TensorFlow's defaults: nothing to change
    current = tf.config.threading.get_inter_op_parallelism_threads()
    with pytest.raises(SSLTFError, match=rf"^--inter_op_threads={current + 3}: TensorFlow is already initialised"):
        distribute.set_threads(0, current + 3)
    assert tf.config.threading.get_inter_op_parallelism_threads() == current
