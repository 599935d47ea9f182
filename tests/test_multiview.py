"""CMC and PIRL: the shared memory bank, the Lab views and the split encoder, each loss against a
NumPy re-derivation of its paper's formula, the bank updates, 2 replicas == 1 device, the settings'
one-line errors, and a CMC run through the probes and export."""
import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import one_device_and_two_replicas_agree

from ssl_tf.config import Config, resolve
from ssl_tf.data import color, patches, pipeline, shapes, views
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import batch_contrastive, batch_info_nce, multiview_pairs
from ssl_tf.methods import METHODS
from ssl_tf.methods.base import MemoryBank
from ssl_tf.methods.cmc import VIEW_INPUTS, parse_views
from ssl_tf.methods.pirl import scaled_negatives
from ssl_tf.models import backbone_builder, build_backbone, view_backbones, view_encoder

N = 16          # training images, so bank rows
CFG = views.AugmentConfig(image_size=16, patch_size=8, color_jitter=0.5)


def _examples(n=N):
    x, y = shapes.generate(n, seed=0, image_size=16)
    return Examples("t", y, 10, images=x)


def _batch(recipe, n=4):
    return next(iter(pipeline.train_stream(_examples(), views.views_for(recipe, CFG), global_batch=n, seed=0)))


def _np_nce(f, bank, index, negatives, temperature, z=None):
    """NPID eq. 6-7 with P(i|v) = exp(v·f/T)/Z, noise P_n = 1/n and K draws: (loss, Z), Z = n·mean exp(...)
    on the first batch."""
    logits = np.concatenate([(f * bank[index]).sum(-1, keepdims=True),
                             np.einsum("bd,bkd->bk", f, bank[negatives])], 1) / temperature
    z = np.exp(logits).mean() * len(bank) if z is None else z
    p, noise = np.exp(logits) / z, negatives.shape[1] / len(bank)
    return -np.mean(np.log(p[:, 0] / (p[:, 0] + noise)) + np.log(noise / (p[:, 1:] + noise)).sum(1)), z


def _normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _fixed_draws(model, banks, k, seed=5):
    """Replace the banks' uniform draws by known rows, so NumPy can score the same negatives."""
    negatives = np.random.default_rng(seed).integers(0, N, [4, k])
    for bank in banks:
        bank.draw = lambda method, batch, count: tf.constant(negatives, tf.int64)
    return negatives


# -- the pieces ----------------------------------------------------------------------------------

def test_multiview_pairs_are_the_core_view_and_the_full_graph():
    assert multiview_pairs(2, "core") == multiview_pairs(2, "full") == [(0, 1)]
    assert multiview_pairs(4, "core") == [(0, 1), (0, 2), (0, 3)]
    assert multiview_pairs(4, "full") == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]


def test_batch_info_nce_matches_numpy_and_moco_v3_is_it_times_2t():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=(6, 5)).astype(np.float32)
    logits = _normalise(q) @ _normalise(k).T / 0.2
    labels = np.arange(3) + 3
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -log_p[np.arange(3), labels].mean()
    out = batch_info_nce(q, k, 0.2, offset=3)
    np.testing.assert_allclose(float(out.loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(batch_contrastive(q, k, 0.2, offset=3).loss), expected * 0.4, rtol=1e-5)


def test_memory_bank_nce_and_update_follow_npid():
    rng = np.random.default_rng(1)
    bank = MemoryBank(N, 6, momentum=0.5)
    rows = bank.rows.numpy().copy()
    f = _normalise(rng.normal(size=(4, 6))).astype(np.float32)
    index, negatives = np.array([0, 3, 7, 9]), rng.integers(0, N, [4, 5])
    loss, z = bank.loss(tf.constant(f), index, negatives, 0.07)
    expected, z_np = _np_nce(f, rows, index, negatives, 0.07)
    np.testing.assert_allclose([float(loss), float(z)], [expected, z_np], rtol=1e-4)
    bank.update(tf.constant(index), tf.constant(f), z)
    np.testing.assert_allclose(bank.rows.numpy()[index], _normalise(0.5 * rows[index] + 0.5 * f), rtol=1e-5)
    assert float(bank.z.numpy()) == pytest.approx(z_np, rel=1e-4)
    kept, _ = bank.loss(tf.constant(f), index, negatives, 0.07)       # Z kept from now on
    np.testing.assert_allclose(float(kept), _np_nce(f, bank.rows.numpy(), index, negatives, 0.07, z_np)[0],
                               rtol=1e-4)


def test_lab_views_are_the_colour_channels_and_the_encoder_concatenates_them():
    image = np.random.default_rng(2).random([2, 8, 8, 3]).astype(np.float32)
    lab = color.rgb_to_lab(image).numpy()
    keras.utils.set_random_seed(0)
    builder = backbone_builder("resnet10", width=0.25)
    ab = builder(8, "batch", "ab", 0.5)
    assert ab.get_layer("lab_ab").compute_output_shape((None, 8, 8, 3)) == (None, 8, 8, 2)
    probe = keras.Model(ab.input, ab.get_layer("lab_ab").output)
    np.testing.assert_allclose(probe(image).numpy(), lab[..., 1:] / color.AB_RANGE, rtol=1e-5, atol=1e-6)
    b_only = keras.Model(*(lambda m: (m.input, m.get_layer("lab_b").output))(builder(8, "batch", "b", 0.5)))
    np.testing.assert_allclose(b_only(image).numpy(), lab[..., 2:] / color.AB_RANGE, rtol=1e-5, atol=1e-6)
    assert ab.output_shape[-1] == build_backbone("resnet10", width=0.125).output_shape[-1]   # half the width
    names = ["L", "ab"]
    encoder = view_encoder([builder(8, "batch", VIEW_INPUTS[v], 0.5) for v in names], names)
    parts = view_backbones(encoder)
    assert [p.name for p in parts] == ["view_L", "view_ab"]
    np.testing.assert_allclose(encoder(image).numpy(),
                               np.concatenate([parts[0](image).numpy(), parts[1](image).numpy()], -1), rtol=1e-5)
    grey = np.repeat(image.mean(-1, keepdims=True), 3, -1)          # ab ~ 0: only the L half may stay alike
    assert not np.allclose(parts[1](image).numpy(), parts[1](grey).numpy(), atol=1e-4)


def test_shuffled_tiles_give_each_image_its_own_order_of_the_same_tiles():
    t = tf.reshape(tf.range(8 * 9 * 2, dtype=tf.float32), [8, 9, 2])
    out = patches.shuffled_tiles(t, tf.random.stateless_uniform([8, 9], [3, 4])).numpy()
    np.testing.assert_array_equal(np.sort(out[..., 0], 1), t.numpy()[..., 0])      # a permutation per image …
    np.testing.assert_array_equal(out[..., 1] - out[..., 0], 1.0)                   # … moving whole tiles
    assert len({tuple(np.argsort(row[:, 0])) for row in out}) == 8                  # 8 images, 8 orders


def test_pirl_view_is_an_image_and_its_independently_augmented_jigsaw_tiles():
    image, tiles = views.pirl_pair(tf.constant(shapes.generate(1, seed=3, image_size=16)[0][0]),
                                   tf.constant([1, 2]), CFG)
    assert image.shape == (16, 16, 3) and tiles.shape == (9, 8, 8, 3)
    assert 0 <= float(tf.reduce_min(tiles)) and float(tf.reduce_max(tiles)) <= 1 + 1e-6


# -- CMC -------------------------------------------------------------------------------------------

def _cmc(views_="L,ab", graph="core", loss="nce", k=6, sync=False):
    keras.utils.set_random_seed(0)
    builder = backbone_builder("resnet10", width=0.125, synchronized_bn=sync)
    names = parse_views(views_)
    encoder = view_encoder([builder(16, "batch", VIEW_INPUTS[v], 0.5) for v in names], names)
    return METHODS["cmc"](encoder, 10, num_examples=N, graph=graph, loss=loss, dim=8, nce_k=k)


@pytest.mark.parametrize("views_,graph", [("L,ab", "core"), ("L,a,b", "full"), ("L,a,b", "core")])
def test_cmc_loss_is_the_sum_over_its_pairs_of_the_two_way_bank_nce(views_, graph):
    model, batch = _cmc(views_, graph), _batch("crop_flip")
    negatives = _fixed_draws(model, model.banks, 6)
    loss = float(model.objective(batch, training=False).loss)
    x, index = batch["views"], batch["index"].numpy()
    f = [_normalise(head(b(x, training=False)).numpy()) for head, b in zip(model.heads, model.backbones)]
    rows = [bank.rows.numpy() for bank in model.banks]
    z, expected = [None] * len(f), 0.0
    for a, b in multiview_pairs(len(f), graph):
        for anchor, other in ((a, b), (b, a)):
            term, z[anchor] = _np_nce(f[other], rows[anchor], index, negatives, 0.07, z[anchor])
            expected += term
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_cmc_infonce_contrasts_the_views_across_the_batch():
    model, batch = _cmc(loss="infonce"), _batch("crop_flip")
    assert model.banks == []
    loss = float(model.objective(batch, training=False).loss)
    x = batch["views"]
    f = [_normalise(head(b(x, training=False)).numpy()) for head, b in zip(model.heads, model.backbones)]

    def ce(q, k):
        logits = q @ k.T / 0.07
        return -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(1)))
    np.testing.assert_allclose(loss, ce(f[0], f[1]) + ce(f[1], f[0]), rtol=1e-4)


def test_cmc_each_view_bank_follows_its_own_view():
    model, batch = _cmc(), _batch("crop_flip")
    model.build_with(batch, keras.optimizers.SGD(0.01))
    index, x = batch["index"].numpy(), batch["views"]
    before = [bank.rows.numpy().copy() for bank in model.banks]
    f = [_normalise(head(b(x, training=True)).numpy()) for head, b in zip(model.heads, model.backbones)]
    model.train_step(batch)
    for bank, rows, fi in zip(model.banks, before, f):
        np.testing.assert_allclose(bank.rows.numpy()[index], _normalise(0.5 * rows[index] + 0.5 * fi),
                                   rtol=1e-4, atol=1e-5)
        assert float(bank.z.numpy()) > 0
    assert not np.allclose(model.banks[0].rows.numpy()[index], model.banks[1].rows.numpy()[index])


def test_cmc_two_replicas_match_one_device():
    one_device_and_two_replicas_agree(lambda: _cmc(sync=True), views.views_for("crop_flip", CFG), _examples())


@pytest.mark.parametrize("flag,value", [("cmc_views", "L,xyz"), ("cmc_views", "L"), ("cmc_views", "ab,ab"),
                                        ("cmc_view_width", 1.5), ("cmc_graph", "ring"), ("cmc_loss", "hinge")])
def test_cmc_settings_refuse_what_cannot_work_in_one_line(flag, value):
    with pytest.raises(SSLTFError) as e:
        resolve(Config(method="cmc", dataset="shapes", **{flag: value}))
    assert str(e.value).startswith(f"--{flag}={value}") and "\n" not in str(e.value)


@pytest.mark.slow
def test_cmc_end_to_end_probes_and_exports_rgb_to_both_views(cli, tmp_path):
    run = str(tmp_path / "run")
    out = cli("--method=cmc", "--dataset=shapes:48,24", "--image_size=16", "--width=0.125", "--batch_size=8",
              "--epochs=1", "--nce_k=16", "--mode=pretrain,linear_eval,knn,export", "--eval_epochs=2",
              "--progress=false", "--plots=false", f"--model_dir={run}")
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.load(open(os.path.join(run, "results.json")))
    assert res["pretrain"]["steps"] == 6 and "nce_z_1" in res["pretrain"]["final"]
    assert 0 <= res["linear_eval"]["top1"] <= 100 and 0 <= res["knn"]["top1"] <= 100
    loaded = tf.saved_model.load(res["export"]["path"])
    images = np.random.default_rng(0).random([2, 16, 16, 3]).astype(np.float32)
    feats = list(loaded.signatures["serving_default"](tf.constant(images)).values())[0]
    half = build_backbone("resnet10", width=0.0625).output_shape[-1]           # each view: half of x0.125
    assert feats.shape == (2, res["export"]["feature_dim"]) and res["export"]["feature_dim"] == 2 * half


# -- PIRL ------------------------------------------------------------------------------------------

def _pirl(k=6, lam=0.5, sync=False, loss="nce"):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet10", width=0.125, image_size=16, synchronized_bn=sync)
    return METHODS["pirl"](backbone, 10, num_examples=N, dim=8, nce_k=k, lam=lam, loss=loss)


@pytest.mark.parametrize("lam", [0.5, 0.8])
def test_pirl_loss_weighs_the_jigsaw_and_image_nce_against_the_image_bank(lam):
    model, batch = _pirl(lam=lam), _batch("pirl_pair")
    negatives = _fixed_draws(model, [model.bank], 6)
    out = model.objective(batch, training=False)
    (images, tiles), index = batch["views"], batch["index"].numpy()
    f = _normalise(model.image_head(model.encoder(images, training=False)).numpy())
    g = _normalise(model.jigsaw_embedding(tiles, training=False).numpy())   # same step, same tile order
    rows = model.bank.rows.numpy()
    image_term, z = _np_nce(f, rows, index, negatives, 0.07)
    jigsaw_term, _ = _np_nce(g, rows, index, negatives, 0.07, z)
    np.testing.assert_allclose(float(out.loss), lam * jigsaw_term + (1 - lam) * image_term, rtol=1e-4)
    np.testing.assert_allclose([float(out.logs["image_nce"]), float(out.logs["jigsaw_nce"])],
                               [image_term, jigsaw_term], rtol=1e-4)


def test_pirl_infonce_contrasts_jigsaw_and_image_embeddings_across_the_batch_both_ways():
    model, batch = _pirl(lam=0.8, loss="infonce"), _batch("pirl_pair")
    assert model.bank is None
    out = model.objective(batch, training=False)
    images, tiles = batch["views"]
    f = _normalise(model.image_head(model.encoder(images, training=False)).numpy())
    g = _normalise(model.jigsaw_embedding(tiles, training=False).numpy())   # same step, same tile order

    def ce(q, k):
        logits = q @ k.T / 0.07
        return -np.mean(np.diag(logits) - np.log(np.exp(logits).sum(1)))
    np.testing.assert_allclose(float(out.loss), 0.8 * ce(g, f) + 0.2 * ce(f, g), rtol=1e-4)
    model.build_with(batch, keras.optimizers.SGD(0.01))
    before = model.image_head.kernel.numpy().copy()
    assert np.isfinite(float(model.train_step(batch)["loss"]))
    assert not np.allclose(model.image_head.kernel.numpy(), before)


def test_pirl_bank_follows_the_image_embedding_and_negatives_scale_with_the_data():
    model, batch = _pirl(), _batch("pirl_pair")
    model.build_with(batch, keras.optimizers.SGD(0.01))
    index, (images, _) = batch["index"].numpy(), batch["views"]
    rows = model.bank.rows.numpy().copy()
    f = _normalise(model.image_head(model.encoder(images, training=True)).numpy())
    model.train_step(batch)
    np.testing.assert_allclose(model.bank.rows.numpy()[index], _normalise(0.5 * rows[index] + 0.5 * f),
                               rtol=1e-4, atol=1e-5)
    assert scaled_negatives(1281167) == 32000 and scaled_negatives(45000) == 1124
    assert METHODS["pirl"](build_backbone("resnet10", width=0.125), num_examples=45000).nce_k == 1124


def test_pirl_two_replicas_match_one_device():
    # 6-px patches: the grid is the 16-px image enlarged 2× (as 16-px patches at 32 px). 8-px patches
    # come from a 3× enlargement of flat shapes, nearly constant, and the stem BN's tiny variance there
    # turns float32 rounding into 4e-4 weight differences after 2 steps.
    cfg = dataclasses.replace(CFG, patch_size=6)
    one_device_and_two_replicas_agree(lambda: _pirl(sync=True), views.views_for("pirl_pair", cfg), _examples())


@pytest.mark.parametrize("flag,value", [("pirl_lambda", 1.5), ("nce_k", 0), ("nce_m", 1.0)])
def test_pirl_settings_refuse_what_cannot_work_in_one_line(flag, value):
    with pytest.raises(SSLTFError) as e:
        resolve(Config(method="pirl", dataset="shapes", **{flag: value}))
    assert str(e.value).startswith(f"--{flag}={value}") and "\n" not in str(e.value)
