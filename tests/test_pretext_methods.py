"""Pretext methods train (loss falls on a tiny fixed set), S4L composes its losses, backbones and
layer-wise evaluation return what they name."""
import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.data import pipeline, shapes, views
from ssl_tf.data.sources import Examples
from ssl_tf.eval import layerwise
from ssl_tf.eval.layerwise import pool_features, pooled_side
from ssl_tf.methods import METHODS, Colorization, Exemplar, Jigsaw, S4LRotation, names  # noqa: F401
from ssl_tf.models import BACKBONES, build_backbone, representation_layers

CFG = views.AugmentConfig(image_size=16, patch_size=8, num_copies=4, color_jitter=0.5)
ARGS = {"jigsaw": dict(num_permutations=24, perm_subset_size=6, head_hidden=32, jigsaw_plus=True),
        "relative_patch_location": dict(head_hidden=32), "exemplar": dict(embed_dim=16),
        "s4l_exemplar": dict(embed_dim=16), "bownet": dict(words=16, kmeans_images=32, image_size=16, cutmix_p=0.0)}


def _examples(n=32):
    x, y = shapes.generate(n, seed=0, image_size=16)
    return Examples("t", y, 10, images=x)


def _batch(method_cls, n=16, seed=0, unlabelled_from=None):
    ex = _examples(n)
    if unlabelled_from is not None:
        ex.labels[unlabelled_from:] = -1
    fn = views.views_for(method_cls.view_recipe, CFG)
    return next(iter(pipeline.train_stream(ex, fn, global_batch=n, seed=seed)))


def _method(name, strategy=None, **extra):
    keras.utils.set_random_seed(0)
    cls = METHODS[name]
    enc = build_backbone("resnet10", width=0.125, image_size=16, input_mode=cls.encoder_input)
    return cls(enc, 10, **{**ARGS.get(name, {}), **extra})


# BigBiGAN's E/G loss is one side of a game and need not fall: tests/test_bigbigan.py checks its step
@pytest.mark.parametrize("name", [n for n in names("pretext") if n != "bigbigan"])
def test_loss_decreases_on_a_tiny_fixed_batch(name, monkeypatch, tmp_path):
    monkeypatch.setenv("SSL_TF_CACHE", str(tmp_path))
    model = _method(name)
    model.prepare(_examples(), log=lambda *a: None)       # BoWNet's k-means (its random-init teacher here)
    batch = _batch(type(model))
    model.build_with(batch, keras.optimizers.Adam(3e-3))
    step = tf.function(model.train_step)
    losses = [float(step(batch)["loss"]) for _ in range(25)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses


def test_exemplar_embeddings_are_normalised_per_example():
    model = _method("exemplar")
    views_ = _batch(Exemplar)["views"]
    loss, features, z = model.ssl_objective(views_, training=False)
    assert z.shape == (16 * 4, 16) and features.shape[0] == 16
    np.testing.assert_allclose(np.linalg.norm(z.numpy(), axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(np.linalg.norm(z.numpy(), axis=0), 1.0)      # not over the batch axis


def test_s4l_is_supervised_plus_weighted_self_supervised_on_labelled_only():
    model = _method("s4l_rotation", ssl_weight=0.7)
    batch = _batch(S4LRotation, unlabelled_from=8)
    out = model.objective(batch, training=False)
    np.testing.assert_allclose(float(out.loss), float(out.logs["supervised_loss"]) + 0.7 * float(out.logs["ssl_loss"]),
                               rtol=1e-6)
    # the supervised term averages over the 8 labelled images only
    labelled = batch["label"].numpy() >= 0
    assert labelled.sum() == 8
    logits = model.supervised_head(out.features).numpy()[labelled]
    labels = batch["label"].numpy()[labelled]
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(float(out.logs["supervised_loss"]), -logp[np.arange(8), labels].mean(), rtol=1e-5)
    batch["label"] = tf.fill(tf.shape(batch["label"]), tf.constant(-1, batch["label"].dtype))
    none = model.objective(batch, training=False)
    assert float(none.logs["supervised_loss"]) == 0.0


def test_jigsaw_batch_permutation_subset_changes_per_step(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_TF_CACHE", str(tmp_path))
    model = _method("jigsaw")
    model.build_with(_batch(Jigsaw), keras.optimizers.SGD(0.0))
    perms, labels = model.arrangements(training=True)
    assert perms.shape == (6, 9)
    np.testing.assert_array_equal(perms.numpy(), model.permutations.numpy()[labels.numpy()])
    model.optimizer.iterations.assign(1)
    _, labels2 = model.arrangements(training=True)
    assert set(labels.numpy()) != set(labels2.numpy())
    assert len(set(labels.numpy()) | set(labels2.numpy())) > 6     # over steps, more of the set is used
    _, fixed = model.arrangements(training=False)
    np.testing.assert_array_equal(fixed.numpy(), np.arange(6))


def test_jigsaw_per_image_sampling_arranges_each_images_tiles_in_its_own_labelled_orders(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_TF_CACHE", str(tmp_path))
    model = _method("jigsaw", perm_sampling="image", jigsaw_plus=False)
    model.build_with(_batch(Jigsaw), keras.optimizers.SGD(0.0))
    h = tf.random.stateless_normal([5, 9, 3], [1, 2])
    inputs, labels = model.arrange(h, training=True)
    assert inputs.shape == (5 * 6, 9 * 3) and labels.shape == (5 * 6,)
    perms, x, y = model.permutations.numpy(), inputs.numpy(), labels.numpy()
    for row in range(30):             # row i·k + j: image i's tiles in the order of its j-th label
        np.testing.assert_array_equal(x[row], h.numpy()[row // 6][perms[y[row]]].reshape(-1))
    assert len({tuple(r) for r in y.reshape(5, 6)}) == 5         # each image has its own draws,
    assert all(len(set(r)) == 6 for r in y.reshape(5, 6))         # k distinct ones
    model.optimizer.iterations.assign(1)
    assert not np.array_equal(model.arrange(h, training=True)[1].numpy(), y)
    fixed_x, fixed_y = model.arrange(h, training=False)          # outside training: the batch's fixed subset
    np.testing.assert_array_equal(fixed_y.numpy(), np.tile(np.arange(6), 5))
    np.testing.assert_array_equal(fixed_x.numpy()[7], h.numpy()[1][perms[1]].reshape(-1))


def test_jigsaw_per_image_sampling_trains_and_two_replicas_draw_what_one_device_does(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_TF_CACHE", str(tmp_path))
    model = _method("jigsaw", perm_sampling="image", jigsaw_plus=False)
    batch = _batch(Jigsaw)
    model.build_with(batch, keras.optimizers.Adam(3e-3))
    step = tf.function(model.train_step)
    losses = [float(step(batch)["loss"]) for _ in range(25)]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    h = tf.random.stateless_normal([4, 9, 3], [3, 4])
    _, one = model.arrange(h, training=True)
    strategy = distribute.make_strategy("mirrored")
    halves = strategy.experimental_distribute_values_from_function(lambda ctx: h[2 * ctx.replica_id_in_sync_group:][:2])
    two = strategy.run(lambda x: model.arrange(x, training=True)[1], args=(halves,))
    np.testing.assert_array_equal(np.concatenate([t.numpy() for t in strategy.experimental_local_results(two)]),
                                  one.numpy())
    with pytest.raises(ValueError, match="--perm_sampling=images: unknown"):
        _method("jigsaw", perm_sampling="images")


def test_colorization_encoder_sees_only_lightness_and_counts_bins_across_replicas():
    enc = build_backbone("resnet10", width=0.125, image_size=16, input_mode="lightness")
    rgb = np.random.default_rng(0).random([2, 16, 16, 3]).astype(np.float32)
    gray = np.repeat(rgb.mean(-1, keepdims=True), 3, -1)
    from ssl_tf.data import color
    same_l = color.lab_to_rgb(tf.concat([color.rgb_to_lab(rgb)[..., :1], tf.zeros([2, 16, 16, 2])], -1)).numpy()
    np.testing.assert_allclose(enc(rgb).numpy(), enc(same_l).numpy(), atol=2e-3)
    assert not np.allclose(enc(rgb).numpy(), enc(gray).numpy(), atol=2e-3)

    strategy = distribute.make_strategy("mirrored")
    ex, fn = _examples(16), views.views_for("crop_flip", CFG)
    with strategy.scope():
        model = _method("colorization")
        model.build_with(next(iter(pipeline.train_stream(ex, fn, global_batch=8, seed=0))), keras.optimizers.SGD(0.01))
    ds = strategy.distribute_datasets_from_function(
        lambda ctx: pipeline.train_stream(ex, fn, global_batch=8, seed=0, input_context=ctx))

    @tf.function
    def step(b):
        return strategy.run(model.train_step, args=(b,))
    it = iter(ds)
    step(next(it))
    step(next(it))
    # 2 steps x 8 images x (16/4)^2 target pixels, counted once although two replicas add their sums
    assert float(tf.reduce_sum(model.bin_counts)) == 2 * 8 * 16


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbones_name_their_layers_and_scale_with_width(name):
    narrow = build_backbone(name, width=0.125, image_size=16)
    wide = build_backbone(name, width=0.25, image_size=16)
    names = representation_layers(narrow)
    assert names[-1] in ("pooled", "fc7") and {"block1", "block4"} <= set(names)
    assert wide.output_shape[-1] == 2 * narrow.output_shape[-1]
    assert narrow(np.zeros([2, 16, 16, 3], np.float32)).shape == (2, narrow.output_shape[-1])


def test_revnet_units_are_reversible():
    from ssl_tf.models.revnet import reversible_unit
    inp = keras.Input((4, 4, 8))
    model = keras.Model(inp, reversible_unit(inp, 8, "u", False))
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype(np.float32)
    y = model(x).numpy()
    f = keras.Model(model.get_layer("u_split").output[1], model.get_layer("u_y1").input[1])
    g = keras.Model(model.get_layer("u_y1").output, model.get_layer("u_y2").input[1])
    y1, y2 = y[..., :4], y[..., 4:]
    x2 = y2 - g(y1).numpy()
    x1 = y1 - f(x2).numpy()
    np.testing.assert_allclose(np.concatenate([x1, x2], -1), x, atol=1e-4)


def test_pooling_keeps_at_most_the_feature_budget():
    assert pooled_side(32, 32, 16, 9000) == (23, 23) and 23 * 23 * 16 <= 9000
    assert pooled_side(4, 4, 64, 9000) == (4, 4)
    x = tf.random.normal([3, 8, 8, 10])
    out = pool_features(x, 90).numpy()
    assert out.shape == (3, 90)
    np.testing.assert_allclose(pool_features(x, 10).numpy(), tf.reduce_mean(x, [1, 2]).numpy(), atol=1e-5)


@pytest.mark.parametrize("name", ["resnet18", "vgg19"])
def test_layerwise_eval_returns_one_accuracy_per_named_layer(name):
    ex = _examples(40)
    enc = build_backbone(name, width=0.125, image_size=16)
    rows = layerwise(enc, ex.subset(np.arange(30)), ex.subset(np.arange(30, 40)), 10, image_size=16,
                     max_features=300, epochs=2, batch_size=16)
    assert [r["layer"] for r in rows] == representation_layers(enc)
    assert all(r["features"] <= 300 or r["features"] == r["shape"][-1] for r in rows)
    assert all(0 <= r["top1"] <= 100 for r in rows)


def test_layer_groups_keep_the_budget_and_a_group_at_a_time_gives_the_same_probes(monkeypatch):
    lw = importlib.import_module("ssl_tf.eval.layerwise")   # the package exports the function of that name
    enc = build_backbone("resnet18", width=0.125, image_size=16)
    names = representation_layers(enc)
    sizes = {n: 300 for n in names}
    assert lw.layer_groups(names, sizes, 30, budget_bytes=1e12) == [names]
    single = lw.layer_groups(names, sizes, 30, budget_bytes=1)
    assert single == [[n] for n in names]                       # too small for any two: one layer each
    ex = _examples(40)
    train, test = ex.subset(np.arange(30)), ex.subset(np.arange(30, 40))
    together = layerwise(enc, train, test, 10, image_size=16, max_features=300, epochs=2, batch_size=16)
    passes = []
    real = lw.extract_layers
    monkeypatch.setattr(lw, "extract_layers", lambda *a, **k: passes.append(list(a[2])) or real(*a, **k))
    monkeypatch.setattr(lw, "layer_groups", lambda *a, **k: [[n] for n in names])
    apart = layerwise(enc, train, test, 10, image_size=16, max_features=300, epochs=2, batch_size=16)
    assert passes == [[n] for n in names for _ in (0, 1)]       # train and test of one layer, then the next
    assert [r["top1"] for r in apart] == [r["top1"] for r in together]


def test_jigsaw_plus_replaces_up_to_two_tiles_with_another_images(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_TF_CACHE", str(tmp_path))
    model = _method("jigsaw")
    emb = tf.constant(np.arange(32 * 9, dtype=np.float32).reshape(32, 9, 1))    # unique value per (image, tile)
    mixed = model.mix_embeddings(emb, training=True).numpy()
    other = np.roll(emb.numpy(), 1, axis=0)
    replaced = mixed != emb.numpy()
    np.testing.assert_array_equal(mixed[replaced], other[replaced])             # foreign tiles: the other image's
    counts = replaced.reshape(32, 9).sum(1)
    assert counts.max() <= 2 and set(counts) == {0, 1, 2}
    positions = np.nonzero(replaced.reshape(32, 9))[1]
    assert len(set(positions)) > 3                                               # at random positions
    np.testing.assert_array_equal(model.mix_embeddings(emb, training=False).numpy(), emb.numpy())
