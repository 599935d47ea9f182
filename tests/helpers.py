"""Shared test helpers (imported by test modules; pytest puts this directory on sys.path)."""
import keras
import numpy as np
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.data import pipeline, shapes
from ssl_tf.data.sources import Examples


def shapes_examples(n=16, image_size=16):
    """``n`` labelled images of the built-in shapes dataset (seed 0)."""
    x, y = shapes.generate(n, seed=0, image_size=image_size)
    return Examples("t", y, 10, images=x)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def run_replica_steps(strategy, model, examples, view_fn, global_batch, steps, eager=False):
    """``steps`` training steps of a built ``model`` under ``strategy`` on the seeded stream of
    ``examples``; the replica-mean logs of each step as floats. ``eager``: without tracing the step
    (one device only: the reference a traced multi-replica run is compared with)."""
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.train_stream(examples, view_fn, global_batch=global_batch, seed=0, input_context=ctx))

    def step(b):
        logs = strategy.run(model.train_step, args=(b,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}
    step = step if eager else tf.function(step)
    it = iter(ds)
    return [{k: float(v) for k, v in step(next(it)).items()} for _ in range(steps)]


def one_device_and_two_replicas_agree(make_model, view_fn, examples):
    """Train ``make_model()`` 2 steps on a global batch of 4 on one device and on 2 replicas from the same
    weights: the negatives are gathered over replicas (and banks written from the gathered batch), so
    losses and every weight agree."""
    def train(strategy, init=None):   # the one-device reference runs eagerly: a trace is most of the cost
        batch = next(iter(pipeline.train_stream(examples, view_fn, global_batch=4, seed=0)))
        with strategy.scope():
            model = make_model()
            model.build_with(batch, keras.optimizers.SGD(0.01, momentum=0.9))
            if init is not None:
                model.set_weights(init)
        start = [w.copy() for w in model.get_weights()]
        eager = isinstance(strategy, tf.distribute.OneDeviceStrategy)
        return start, run_replica_steps(strategy, model, examples, view_fn, 4, 2, eager=eager), model.get_weights()

    init, one_logs, one_w = train(tf.distribute.OneDeviceStrategy("/cpu:0"))
    _, two_logs, two_w = train(distribute.make_strategy("mirrored"), init)
    for a, b in zip(one_logs, two_logs):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
    assert max(float(np.abs(a - b).max()) for a, b in zip(one_w, init)) > 1e-4
    # float32 rounding of BN on 2-image replica batches: ~2e-5 after 2 steps; a memory bank's Z (a sum
    # of ~1e4 exponentials, added in another order across replicas): ~1.5e-5 relative
    for a, b in zip(one_w, two_w):
        np.testing.assert_allclose(a, b, rtol=5e-5, atol=5e-5)


def forward_ops(graph):
    """The ops a traced ``GradientTape`` step creates before its first gradient op (the forward pass;
    ``get_operations`` lists ops in creation order)."""
    ops = graph.get_operations()
    return ops[:next((i for i, op in enumerate(ops) if op.name.startswith("gradient_tape/")), len(ops))]


def pad_same(x, kh, kw, stride):
    """NHWC ``x`` zero-padded as TensorFlow's SAME (total max((out − 1)·s + k − size, 0) per axis, the
    smaller half first): (padded, out_h, out_w, pad_top, pad_left)."""
    _, h, w, _ = x.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    ph, pw = max((out_h - 1) * stride + kh - h, 0), max((out_w - 1) * stride + kw - w, 0)
    return np.pad(x, [(0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)]), out_h, out_w, ph // 2, pw // 2


# Unit roundoff of each precision's compute dtype: float32 keeps 24 significant bits, bfloat16 8.
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "mixed_bfloat16": 2.0 ** -8, "mixed_float16": 2.0 ** -11}


def assert_close_at_precision(actual, expected, precision, ulps=8):
    """``actual`` equals ``expected`` to within ``ulps`` roundings of ``precision``'s compute dtype,
    scaled by each row's largest magnitude: a network computed in bf16 along two kernel paths (the
    SavedModel graph and the in-process function pick different oneDNN / Eigen kernels depending on
    the CPU) differs by a few bf16 roundings of its largest activations, not by float32's 1e-5."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    u = UNIT_ROUNDOFF[precision]
    scale = np.max(np.abs(expected), axis=-1, keepdims=True) + 1e-30
    err = np.abs(actual - expected)
    bound = np.broadcast_to(ulps * u * scale if precision != "float32" else 1e-5 + 1e-5 * np.abs(expected), err.shape)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert np.all(err <= bound), (f"{precision}: |difference| {err[worst]:.3g} at {worst} exceeds {bound[worst]:.3g} "
                                  f"({ulps} roundings of 2^{np.log2(u):.0f} × the row's max |value|)")
