"""MirroredStrategy over 2 logical CPUs == one device, for the same global batch."""
import numpy as np
import keras
import pytest
import tensorflow as tf

from ssl_tf.data import views, pipeline, shapes
from ssl_tf.data.sources import Examples
from ssl_tf.methods import SimCLR
from ssl_tf.models import build_backbone
from ssl_tf.optim import LARS
from ssl_tf import distribute
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import nt_xent

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
        encoder = build_backbone("resnet18", width=0.125, image_size=16,
                                 synchronized_bn=strategy.num_replicas_in_sync > 1)
        model = SimCLR(encoder, 10, temperature=0.5, proj_dim=8, synchronized_bn=strategy.num_replicas_in_sync > 1)
        model.build_with(batch, LARS(0.5, weight_decay=1e-4), keras.optimizers.SGD(0.1))
        if init_weights is not None:
            model.set_weights(init_weights)
    init = [w.copy() for w in model.get_weights()]
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.train_stream(ex, fn, global_batch=global_batch, seed=0, input_context=ctx))

    @tf.function
    def step(b):
        logs = strategy.run(model.train_step, args=(b,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}
    it = iter(ds)
    losses = [{k: float(v) for k, v in step(next(it)).items()} for _ in range(steps)]
    return init, model.get_weights(), losses


def test_two_replicas_match_one_device_in_the_forward_step():
    """The full train step (sync BN, gathered negatives, probe) gives the one-device loss on 2 replicas."""
    init, one_w, one_logs = _train(tf.distribute.OneDeviceStrategy("/cpu:0"), steps=1)
    _, two_w, two_logs = _train(distribute.make_strategy("mirrored"), init_weights=init, steps=1)
    for key in ("loss", "contrast_acc", "probe_loss", "probe_acc"):
        np.testing.assert_allclose(one_logs[0][key], two_logs[0][key], rtol=1e-5, atol=1e-5)
    moved = max(float(np.abs(w - i).max()) for w, i in zip(one_w, init))
    assert moved > 1e-4   # the step really changed the weights


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
