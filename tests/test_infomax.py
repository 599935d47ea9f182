"""The mutual-information family: CPC v2's patch grid, per-patch augmentation, masked context
network, InfoNCE (against NumPy), the objective's indexing in every direction, 2 replicas == 1
device, its settings' one-line errors, and the patch-grid encoder through the probes and export."""
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import one_device_and_two_replicas_agree

from ssl_tf.config import Config, resolve
from ssl_tf.data import ops, patches, pipeline, shapes, views
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import MI_ESTIMATORS, cpc_info_nce
from ssl_tf.methods import METHODS
from ssl_tf.models import build_backbone, cpc_context, patch_grid_encoder
from ssl_tf.models.patch_grid import grid_backbone

CFG = views.AugmentConfig(image_size=16, cpc_patch_size=4, cpc_patch_stride=2, color_jitter=0.5)


def _examples(n=16):
    x, y = shapes.generate(n, seed=0, image_size=16)
    return Examples("t", y, 10, images=x)


def _cpc(directions=4, sync=False, **kw):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet10", width=0.0625, image_size=4, norm="layer")
    encoder = patch_grid_encoder(backbone, 4, 2)
    return METHODS["cpc_v2"](encoder, 10, grid=7, offsets=(3, 4, 5), directions=directions, context_blocks=2,
                             context_hidden=8, target_dim=6, **kw)


def _batch(n=4, seed=0):
    fn = views.views_for("cpc_patches", CFG)
    return next(iter(pipeline.train_stream(_examples(), fn, global_batch=n, seed=seed)))


# -- the grid and its augmentation ---------------------------------------------------------------

def test_overlapping_grid_cuts_the_patches_slicing_would():
    x = np.random.default_rng(0).random([2, 16, 16, 3]).astype(np.float32)
    grid = patches.overlapping_grid(tf.constant(x), 4, 2).numpy()
    assert grid.shape == (2, 7, 7, 4, 4, 3) and patches.overlapping_side(16, 4, 2) == 7
    for i, j in [(0, 0), (3, 5), (6, 6)]:
        np.testing.assert_array_equal(grid[:, i, j], x[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4])
    assert patches.overlapping_side(32, 8, 4) == 7 and patches.overlapping_side(256, 64, 32) == 7   # CPC's 7×7


def test_cpc_view_gives_the_grid_of_independently_augmented_patches():
    image = (np.random.default_rng(1).random([16, 16, 3]) * 255).astype(np.uint8)
    tiles = views.cpc_patches(tf.constant(image), tf.constant([1, 2]), CFG).numpy()
    assert tiles.shape == (49, 4, 4, 3) and tiles.min() >= 0 and tiles.max() <= 1 + 1e-6
    # colour dropping (p = 1): every patch is one channel, the two others flat up to 1/100 noise
    spread = tiles.reshape(49, 16, 3).std(1)                  # [patch, channel]
    flat = np.sort(spread, 1)[:, :2] <= 0.03 * np.sort(spread, 1)[:, 2:] + 1e-6
    assert flat.all()
    again = views.cpc_patches(tf.constant(image), tf.constant([1, 3]), CFG).numpy()
    assert not np.allclose(tiles, again)


def test_patchwise_ops_act_on_each_patch_alone():
    tiles = tf.random.stateless_uniform([64, 4, 4, 3], [0, 1])
    flipped = ops.patchwise_flip(tiles, tf.constant([0, 2])).numpy()
    same = np.all(flipped == tiles.numpy(), axis=(1, 2, 3))
    mirrored = np.all(flipped == tiles.numpy()[:, :, ::-1], axis=(1, 2, 3))
    assert np.all(same | mirrored) and 10 < same.sum() < 54            # about half, patch by patch
    grey = ops.patchwise_grayscale(tiles, tf.constant([0, 3]), 0.5).numpy()
    is_grey = np.all(np.ptp(grey, axis=-1) < 1e-6, axis=(1, 2))
    assert 10 < is_grey.sum() < 54
    dropped = ops.patchwise_color_drop(tiles, tf.constant([0, 4]), 1.0).numpy()
    kept = np.isclose(dropped, tiles.numpy()).all(axis=(1, 2))            # [patch, channel]
    assert (kept.sum(1) == 1).all()                                      # exactly one channel survives
    assert np.array_equal(ops.patchwise_color_drop(tiles, tf.constant([0, 4]), 0.0).numpy(), tiles.numpy())


# -- the encoder, the context network, the loss --------------------------------------------------

def test_patch_grid_encoder_is_the_mean_of_the_backbone_over_the_patches():
    backbone = build_backbone("resnet10", width=0.0625, image_size=4, norm="layer")
    encoder = patch_grid_encoder(backbone, 4, 2)
    assert grid_backbone(encoder) is backbone
    assert not any("BatchNorm" in type(layer).__name__ for layer in backbone.layers)      # CPC v2: layer norm
    x = np.random.default_rng(0).random([3, 16, 16, 3]).astype(np.float32)
    want = np.stack([np.mean([backbone(x[n:n + 1, 2 * i:2 * i + 4, 2 * j:2 * j + 4]).numpy()[0]
                              for i in range(7) for j in range(7)], 0) for n in range(3)])
    np.testing.assert_allclose(encoder(x).numpy(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="not a patch-grid encoder"):
        grid_backbone(backbone)


def test_context_network_sees_no_row_below():
    net = cpc_context(5, hidden=8, blocks=3)
    x = np.random.default_rng(0).normal(size=[2, 7, 7, 5]).astype(np.float32)
    base = net(x).numpy()
    for row in range(1, 7):
        y = x.copy()
        y[:, row:] += np.random.default_rng(row).normal(size=y[:, row:].shape)
        out = net(y).numpy()
        np.testing.assert_array_equal(out[:, :row], base[:, :row])       # rows above: untouched
        assert np.abs(out[:, row] - base[:, row]).max() > 1e-4            # its own row: seen
    # and a context row sees the rows above it (up to ``blocks`` rows up)
    y = x.copy()
    y[:, 2] += 1.0
    assert np.abs(net(y).numpy()[:, 5] - base[:, 5]).max() > 1e-4


def _np_info_nce(pred, targets, positive):
    logits = pred @ targets.T
    logits = logits - logits.max(1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(len(pred)), positive].mean()


def test_cpc_info_nce_matches_numpy_value_and_gradient():
    rng = np.random.default_rng(0)
    pred, targets = rng.normal(size=[6, 4]).astype(np.float32), rng.normal(size=[10, 4]).astype(np.float32)
    positive = rng.integers(0, 10, 6)
    p = tf.Variable(pred)
    with tf.GradientTape() as tape:
        out = cpc_info_nce(p, tf.constant(targets), positive)
    np.testing.assert_allclose(out.loss.numpy(), _np_info_nce(pred, targets, positive), rtol=1e-5)
    logits = pred @ targets.T
    soft = np.exp(logits - logits.max(1, keepdims=True))
    soft /= soft.sum(1, keepdims=True)
    want = (soft @ targets - targets[positive]) / len(pred)             # ∂/∂ẑ of the mean −log softmax
    np.testing.assert_allclose(tape.gradient(out.loss, p).numpy(), want, rtol=1e-4, atol=1e-6)
    assert np.isclose(out.accuracy.numpy(), np.mean(logits.argmax(1) == positive))


@pytest.mark.parametrize("directions", [1, 4])
def test_cpc_objective_predicts_the_rows_below_in_every_turned_grid(directions):
    """The objective against a NumPy loop over images, rows, columns, offsets and turns, built from
    the model's own sub-networks: wrong positives, offsets or rotations change the number."""
    model = _cpc(directions)
    batch = _batch()
    got = model.objective(batch, training=False)
    grid = model.patch_vectors(batch["views"], False).numpy()              # [b, 7, 7, F]
    z = model.target_proj(grid).numpy()
    total = 0.0
    for t, predictors in zip(model.turns, model.predictors):
        g_t, z_t = np.rot90(grid, t, axes=(1, 2)), np.rot90(z, t, axes=(1, 2))
        context = model.context(np.ascontiguousarray(g_t)).numpy()
        targets = z_t.reshape(-1, z.shape[-1])
        for k, predict in zip(model.offsets, predictors):
            preds, positive = [], []
            for n in range(grid.shape[0]):
                for i in range(7 - k):
                    for j in range(7):
                        preds.append(0.1 * predict(context[n:n + 1, i, j]).numpy()[0])
                        positive.append(n * 49 + (i + k) * 7 + j)
            total += _np_info_nce(np.array(preds), targets, np.array(positive))
    np.testing.assert_allclose(got.loss.numpy(), total, rtol=1e-4)
    assert got.features.shape == (4, grid.shape[-1]) and got.embeddings.shape == (4 * 49, 6)
    np.testing.assert_allclose(got.features.numpy(), grid.mean((1, 2)), rtol=1e-5, atol=1e-6)


def test_cpc_loss_falls_on_a_fixed_batch():
    model = _cpc(2)
    batch = _batch()
    model.build_with(batch, keras.optimizers.Adam(3e-3))
    step = tf.function(model.train_step)
    losses = [float(step(batch)["loss"]) for _ in range(25)]
    # from chance (6 tasks × ln 196 = 31.7): the 0.1-scaled predictions start near it and leave it slowly
    assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.15, losses


def _one_device_and_two_replicas_agree(make_model, recipe):
    one_device_and_two_replicas_agree(make_model, views.views_for(recipe, CFG), _examples())


def test_two_replicas_match_one_device():
    _one_device_and_two_replicas_agree(lambda: _cpc(2), "cpc_patches")


# -- settings ------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings,flag", [
    (dict(image_size=16, cpc_patch_size=20), "--cpc_patch_size=20"),
    (dict(image_size=16, cpc_predict_steps=5), "--cpc_predict_steps=5"),
    (dict(image_size=16, cpc_directions=3), "--cpc_directions=3"),
    (dict(image_size=16, backbone="vit_tiny"), "--cpc_layer_norm=True"),
    (dict(image_size=16, cpc_color_drop=1.5), "--cpc_color_drop=1.5"),
])
def test_cpc_settings_refuse_what_cannot_work_in_one_line(settings, flag):
    with pytest.raises(SSLTFError) as e:
        resolve(Config(method="cpc_v2", dataset="shapes", **settings))
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_cpc_defaults_follow_the_paper_at_the_image_size():
    cfg = resolve(Config(method="cpc_v2", dataset="shapes", image_size=32))
    p = cfg.params
    assert (p.cpc_patch_size, p.cpc_patch_stride, p.cpc_skip_steps, p.cpc_predict_steps) == (8, 4, 2, 3)
    assert (p.cpc_directions, p.cpc_context_blocks, p.cpc_target_dim, p.cpc_layer_norm) == (4, 5, 64, True)
    big = resolve(Config(method="cpc_v2", dataset="shapes", image_size=256)).params
    assert (big.cpc_patch_size, big.cpc_patch_stride) == (64, 32)                 # CPC's 7×7 grid at 256 px


@pytest.mark.slow
def test_cpc_v2_end_to_end_probes_fine_tunes_and_exports_the_grid_mean(cli, tmp_path):
    run = str(tmp_path / "run")
    out = cli("--method=cpc_v2", "--dataset=shapes:48,24", "--image_size=16", "--width=0.0625", "--batch_size=8",
              "--epochs=1", "--cpc_context_hidden=16", "--mode=pretrain,linear_eval,knn,finetune,export",
              "--eval_epochs=2", "--ft_epochs=1", "--progress=false", "--plots=false", f"--model_dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.load(open(os.path.join(run, "results.json")))
    assert res["pretrain"]["steps"] == 6 and "cpc_acc" in res["pretrain"]["final"]
    assert 0 <= res["linear_eval"]["top1"] <= 100 and 0 <= res["finetune"]["100%"]["top1"] <= 100
    loaded = tf.saved_model.load(res["export"]["path"])
    images = np.random.default_rng(0).random([2, 16, 16, 3]).astype(np.float32)
    feats = list(loaded.signatures["serving_default"](tf.constant(images)).values())[0]
    assert feats.shape == (2, res["export"]["feature_dim"])
    layerwise = cli("--method=cpc_v2", "--dataset=shapes:48,24", "--image_size=16", "--width=0.0625",
                    "--cpc_context_hidden=16", "--mode=layerwise_eval", f"--model_dir={run}")
    assert layerwise.returncode == 2 and "--mode=layerwise_eval" in layerwise.stderr
    assert "Traceback" not in layerwise.stderr


# -- Deep InfoMax --------------------------------------------------------------------------------

def _softplus(x):
    return np.logaddexp(0.0, x)


def _np_mi(scores, estimator, offset):
    """DIM's three estimators (Hjelm et al. 2019, eqs. 2, 4, 5) by loops over the pairs."""
    n, big_n, m = scores.shape
    pos = np.array([[scores[i, offset + i, loc] for loc in range(m)] for i in range(n)])
    neg = np.array([scores[i, j, loc] for i in range(n) for j in range(big_n) if j != offset + i
                    for loc in range(m)])
    if estimator == "jsd":
        return np.mean(-_softplus(-pos)) - np.mean(_softplus(neg))
    if estimator == "dv":
        return np.mean(pos) - np.log(np.mean(np.exp(neg)))
    total = []
    for i in range(n):
        others = [scores[i, j, loc] for j in range(big_n) if j != offset + i for loc in range(m)]
        for loc in range(m):
            logits = np.array([pos[i, loc]] + others)
            total.append(pos[i, loc] - np.log(np.sum(np.exp(logits))))
    return np.mean(total)


@pytest.mark.parametrize("estimator", MI_ESTIMATORS)
def test_dim_estimators_match_numpy_value_and_gradient(estimator):
    from ssl_tf.losses import mi_lower_bound, pair_scores
    rng = np.random.default_rng(1)
    g, local = rng.normal(size=[3, 5]), rng.normal(size=[6, 4, 5])        # 3 local globals, 6 gathered images
    scores = np.einsum("id,jld->ijl", g, local)
    np.testing.assert_allclose(pair_scores(tf.constant(g), tf.constant(local)).numpy(), scores, rtol=1e-6)
    s = tf.Variable(scores)
    with tf.GradientTape() as tape:
        value = mi_lower_bound(s, estimator, offset=3)                     # this replica's images are 3, 4, 5
    np.testing.assert_allclose(value.numpy(), _np_mi(scores, estimator, 3), rtol=1e-6)
    grad, eps = tape.gradient(value, s).numpy(), 1e-6
    for idx in [(0, 3, 1), (2, 5, 3), (1, 0, 2), (0, 4, 0)]:               # positives and negatives
        up, down = scores.copy(), scores.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric = (_np_mi(up, estimator, 3) - _np_mi(down, estimator, 3)) / (2 * eps)
        np.testing.assert_allclose(grad[idx], numeric, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="estimator"):
        mi_lower_bound(s, "mine", 0)


def test_dim_prior_matching_losses_and_the_frozen_discriminator():
    from ssl_tf.losses import discriminator_loss, generator_loss
    from ssl_tf.methods.deep_infomax import frozen
    from ssl_tf.models import prior_discriminator
    real, fake = np.array([[2.0], [-1.0]]), np.array([[0.5], [3.0], [-2.0]])
    np.testing.assert_allclose(discriminator_loss(real, fake).numpy(),
                               _softplus(-real).mean() + _softplus(fake).mean(), rtol=1e-6)
    np.testing.assert_allclose(generator_loss(fake).numpy(), _softplus(-fake).mean(), rtol=1e-6)
    d = prior_discriminator()
    x = tf.Variable(tf.random.uniform([4, 6]))
    d(x)
    with tf.GradientTape(persistent=True) as tape:
        held, live = generator_loss(frozen(d, x)), generator_loss(d(x))
    np.testing.assert_allclose(held.numpy(), live.numpy(), rtol=1e-6)                 # the same function …
    assert all(g is None for g in tape.gradient(held, d.trainable_variables))         # … that cannot move D
    np.testing.assert_allclose(tape.gradient(held, x).numpy(), tape.gradient(live, x).numpy(), rtol=1e-5)


def _dim(sync=False, **kw):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet10", width=0.25, image_size=16, synchronized_bn=sync)
    return METHODS["deep_infomax"](backbone, 10, mi_units=16, global_dim=8, image_size=16, synchronized_bn=sync,
                                   **kw)


def _dim_batch(n=4):
    return next(iter(pipeline.train_stream(_examples(), views.views_for("crop_flip", CFG), global_batch=n, seed=0)))


def test_dim_objective_is_the_estimate_on_its_own_embeddings():
    model = _dim(estimator="infonce", alpha=0.5, gamma=0.0)
    batch = _dim_batch()
    got = model.objective(batch, training=False)
    local_map, h = model.maps(batch["views"], training=False)
    y = model.global_head(h).numpy()
    g = model.global_mi(y).numpy()
    c = local_map.shape[-1]
    local = model.local_mi(local_map.numpy().reshape(-1, c)).numpy().reshape(4, -1, g.shape[-1])
    whole = model.map_mi(local_map.numpy().reshape(4, -1)).numpy()[:, None]
    want = -_np_mi(np.einsum("id,jld->ijl", g, local), "infonce", 0) \
        - 0.5 * _np_mi(np.einsum("id,jld->ijl", g, whole), "infonce", 0)
    np.testing.assert_allclose(got.loss.numpy(), want, rtol=1e-4)
    assert local.shape[1] == 16                                              # block3 at 16 px: a 4×4 map


def test_dim_learns_on_a_fixed_batch_with_its_prior():
    model = _dim()
    batch = _dim_batch(8)
    model.build_with(batch, keras.optimizers.Adam(1e-3))
    step = tf.function(model.train_step)
    logs = [step(batch) for _ in range(15)]
    mi = [float(x["local_mi"]) for x in logs]
    assert np.all(np.isfinite(mi)) and np.mean(mi[-3:]) > np.mean(mi[:3]) + 0.05, mi     # the bound rises
    assert "prior_d_loss" in logs[-1]


def test_dim_two_replicas_match_one_device():
    # the prior's uniform draws differ per replica by design: left out
    _one_device_and_two_replicas_agree(lambda: _dim(sync=True, gamma=0.0), "crop_flip")


@pytest.mark.parametrize("make,flag,settings", [
    (lambda: _dim(local_layer="block9"), "--dim_local_layer=block9", dict(method="deep_infomax", dim_beta=0.0)),
    (lambda: _amdim(large_layer="conv9"), "--amdim_large_layer=conv9", dict(method="amdim", amdim_clip=0.0)),
])
def test_dim_and_amdim_refuse_a_layer_their_backbone_lacks_in_one_line(make, flag, settings):
    with pytest.raises(SSLTFError) as e:
        make()
    assert str(e.value).startswith(flag) and "block3" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(SSLTFError, match=f"--{list(settings)[1]}="):
        resolve(Config(dataset="shapes", **settings))
    if settings["method"] == "deep_infomax":
        with pytest.raises(SSLTFError, match="--dim_estimator=mine"):
            resolve(Config(method="deep_infomax", dataset="shapes", dim_estimator="mine"))


# -- AMDIM ---------------------------------------------------------------------------------------

def _np_amdim(src, trg, offset, clip, reg_weight):
    raw = np.einsum("id,jmd->ijm", src, trg) / np.sqrt(src.shape[-1])
    return -_np_mi(clip * np.tanh(raw / clip), "infonce", offset), reg_weight * np.mean(raw ** 2)


def test_amdim_nce_matches_numpy_value_and_gradient():
    from ssl_tf.losses import amdim_nce
    rng = np.random.default_rng(2)
    src, trg = rng.normal(size=[2, 4]) * 3, rng.normal(size=[5, 3, 4]) * 3         # large scores: clipping acts
    s = tf.Variable(src)
    with tf.GradientTape() as tape:
        nce, reg = amdim_nce(s, tf.constant(trg), offset=2, clip=2.0, reg_weight=0.05)
        total = nce + reg
    want = _np_amdim(src, trg, 2, 2.0, 0.05)
    np.testing.assert_allclose([nce.numpy(), reg.numpy()], want, rtol=1e-6)
    grad, eps = tape.gradient(total, s).numpy(), 1e-6
    for idx in [(0, 1), (1, 3)]:
        up, down = src.copy(), src.copy()
        up[idx] += eps
        down[idx] -= eps
        numeric = (sum(_np_amdim(up, trg, 2, 2.0, 0.05)) - sum(_np_amdim(down, trg, 2, 2.0, 0.05))) / (2 * eps)
        np.testing.assert_allclose(grad[idx], numeric, rtol=1e-4)


def _amdim(sync=False, **kw):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet10", width=0.25, image_size=16, synchronized_bn=sync)
    return METHODS["amdim"](backbone, 10, rkhs=16, synchronized_bn=sync, **kw)


def _two_view_batch(n=4):
    return next(iter(pipeline.train_stream(_examples(), views.views_for("two_views", CFG), global_batch=n, seed=0)))


def test_amdim_objective_predicts_across_views_and_scales():
    """The loss against NumPy on the model's own embeddings: 1-5, 1-7 and 5-5 in both directions."""
    model = _amdim(clip=5.0)
    batch = _two_view_batch()
    got = model.objective(batch, training=False)
    x = tf.concat(batch["views"], 0)
    g, small, large, _ = (t.numpy() for t in model.embed(x, False))
    where = model.source_locations(4, small.shape[1]).numpy()
    total = 0.0
    for a, b in ((slice(0, 4), slice(4, 8)), (slice(4, 8), slice(0, 4))):
        one = small[a][np.arange(4), where]
        for src, trg in ((g[a], small[b]), (g[a], large[b]), (one, small[b])):
            total += 0.5 * sum(_np_amdim(src, trg, 0, 5.0, 0.05))
    np.testing.assert_allclose(got.loss.numpy(), total, rtol=1e-4)
    assert small.shape[1] == 4 and large.shape[1] == 16           # block4 2×2 and block3 4×4 at 16 px


def test_amdim_learns_on_a_fixed_batch():
    model = _amdim()
    batch = _two_view_batch(8)
    model.build_with(batch, keras.optimizers.Adam(1e-3))
    step = tf.function(model.train_step)
    losses = [float(step(batch)["loss"]) for _ in range(12)]
    assert np.all(np.isfinite(losses)) and np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses


def test_amdim_two_replicas_match_one_device():
    _one_device_and_two_replicas_agree(lambda: _amdim(sync=True), "two_views")
