import numpy as np
import tensorflow as tf

from ssl_tf.data import ops, pipeline, shapes, views
from ssl_tf.data.sources import Examples

CFG = views.AugmentConfig(image_size=16, color_jitter=0.5, blur_p=0.5, solarize_p=0.2)


def _image(seed=0):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, (24, 20, 3), dtype=np.uint8))


def test_two_views_shape_dtype_range_and_determinism():
    v1, v2 = views.two_views(_image(), tf.constant([7, 3], tf.int64), CFG)
    for v in (v1, v2):
        assert v.shape == (16, 16, 3) and v.dtype == tf.float32
        assert float(tf.reduce_min(v)) >= 0.0 and float(tf.reduce_max(v)) <= 1.0
    assert not np.allclose(v1.numpy(), v2.numpy())
    w1, w2 = views.two_views(_image(), tf.constant([7, 3], tf.int64), CFG)
    np.testing.assert_array_equal(v1.numpy(), w1.numpy())
    np.testing.assert_array_equal(v2.numpy(), w2.numpy())
    u1, _ = views.two_views(_image(), tf.constant([7, 4], tf.int64), CFG)
    assert not np.allclose(v1.numpy(), u1.numpy())


def test_gaussian_blur_equals_separable_formula():
    rng = np.random.default_rng(0)
    img = rng.random((9, 9, 3)).astype(np.float32)
    sigma, ksize = 1.3, 5
    r = ksize // 2
    x = np.arange(-r, r + 1)
    k = np.exp(-x ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    padded = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    expected = np.zeros_like(img)
    for i in range(9):
        for j in range(9):
            patch = padded[i:i + ksize, j:j + ksize]
            expected[i, j] = np.einsum("a,b,abc->c", k, k, patch)
    got = ops.gaussian_blur(tf.constant(img), sigma, ksize).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_grayscale_solarize_and_center_crop():
    img = tf.constant(np.random.default_rng(1).random((8, 8, 3)).astype(np.float32))
    g = ops.grayscale(img).numpy()
    np.testing.assert_allclose(g[..., 0], g[..., 2])
    expected = img.numpy() @ np.array([0.2989, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(g[..., 0], expected, atol=1e-3)
    s = ops.solarize(img, 0.5).numpy()
    np.testing.assert_allclose(s, np.where(img.numpy() < 0.5, img.numpy(), 1 - img.numpy()))
    big = tf.constant(np.random.default_rng(2).integers(0, 256, (40, 60, 3), dtype=np.uint8))
    assert views.eval_view(big, 48).shape == (48, 48, 3)


def test_color_jitter_zero_strength_is_identity():
    img = tf.constant(np.random.default_rng(3).random((8, 8, 3)).astype(np.float32))
    out = ops.color_jitter(img, tf.constant([1, 2], tf.int64), 0.0)
    np.testing.assert_allclose(out.numpy(), img.numpy(), atol=1e-5)


def _examples(n=40):
    x, y = shapes.generate(n, seed=0, image_size=16)
    return Examples("t", y, 10, images=x)


def _collect(ds, steps):
    out = []
    for batch in ds.take(steps):
        out.append((batch["index"].numpy(), batch["views"][0].numpy()))
    return out


def test_train_stream_is_deterministic_resumable_and_covers_each_epoch():
    ex = _examples(40)
    fn = views.views_for("two_views", CFG)
    a = _collect(pipeline.train_stream(ex, fn, global_batch=8, seed=5), 10)
    b = _collect(pipeline.train_stream(ex, fn, global_batch=8, seed=5), 10)
    resumed = _collect(pipeline.train_stream(ex, fn, global_batch=8, seed=5, start_step=6), 4)
    for (ia, va), (ib, vb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(va, vb)
    for (ia, va), (ir, vr) in zip(a[6:], resumed):
        np.testing.assert_array_equal(ia, ir)
        np.testing.assert_array_equal(va, vr)
    first_epoch = np.concatenate([i for i, _ in a[:5]])
    assert sorted(first_epoch.tolist()) == list(range(40))      # a permutation of the data
    second_epoch = np.concatenate([i for i, _ in a[5:10]])
    assert not np.array_equal(first_epoch, second_epoch)        # reshuffled per epoch
    other = _collect(pipeline.train_stream(ex, fn, global_batch=8, seed=6), 1)
    assert not np.array_equal(other[0][0], a[0][0])


def test_train_stream_shards_global_batches_across_pipelines():
    ex = _examples(40)
    fn = views.views_for("two_views", CFG)
    whole = _collect(pipeline.train_stream(ex, fn, global_batch=8, seed=1), 3)
    parts = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid, num_replicas_in_sync=2)
        parts.append(_collect(pipeline.train_stream(ex, fn, global_batch=8, seed=1, input_context=ctx), 3))
    for step in range(3):
        joined = np.concatenate([parts[0][step][0], parts[1][step][0]])
        np.testing.assert_array_equal(joined, whole[step][0])
        np.testing.assert_array_equal(np.concatenate([parts[0][step][1], parts[1][step][1]]), whole[step][1])
