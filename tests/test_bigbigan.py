"""BigBiGAN: spectral normalisation against an SVD, the hinge losses against NumPy re-derivations (value
and gradient), the networks' paths, the step (D, then E and G, then G's EMA), 2 replicas against one
device, a resumed run against an uninterrupted one, the samples, the exported generator and the one-line
errors."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import one_device_and_two_replicas_agree, shapes_examples

from ssl_tf.config import Config, resolve
from ssl_tf.data import ops, pipeline, views
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import bigbigan_discriminator_loss, bigbigan_encoder_generator_loss, discriminator_accuracy
from ssl_tf.methods import METHODS
from ssl_tf.models import build_backbone, gan
from ssl_tf.models.layers import BatchNorm

RNG = np.random.default_rng(0)
CFG = views.AugmentConfig(image_size=16)
SMALL = dict(latent_dim=8, channels=8, mlp_units=16, mlp_depth=3)


# -- spectral normalisation ---------------------------------------------------------------------

def test_spectral_normalize_is_one_power_iteration_and_converges_to_the_largest_singular_value():
    w, u = RNG.normal(size=(6, 4)).astype(np.float32), RNG.normal(size=(1, 4)).astype(np.float32)
    normalized, u_new, sigma = gan.spectral_normalize(tf.constant(w), tf.constant(u))
    v = u @ w.T
    v /= np.linalg.norm(v)
    expected_u = v @ w / np.linalg.norm(v @ w)                       # Miyato et al. 2018, algorithm 1
    np.testing.assert_allclose(u_new.numpy(), expected_u, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(sigma), (v @ w @ expected_u.T).item(), rtol=1e-5)
    np.testing.assert_allclose(normalized.numpy(), w / float(sigma), rtol=1e-5)
    est = tf.constant(u)
    for _ in range(50):
        normalized, est, sigma = gan.spectral_normalize(tf.constant(w), est)
    np.testing.assert_allclose(float(sigma), np.linalg.svd(w, compute_uv=False)[0], rtol=1e-4)
    np.testing.assert_allclose(np.linalg.svd(normalized.numpy(), compute_uv=False)[0], 1.0, rtol=1e-4)
    # σ's gradient flows through w only (u and v held fixed): d σ / d w = vᵀ u
    wt = tf.Variable(w)
    with tf.GradientTape() as tape:
        sigma = gan.spectral_normalize(wt, tf.constant(u))[2]
    np.testing.assert_allclose(tape.gradient(sigma, wt).numpy(), v.T @ expected_u, rtol=1e-5, atol=1e-6)


def test_spectral_norm_layers_divide_the_kernel_by_sigma_and_move_u_only_when_training():
    dense, conv = gan.SNDense(5), gan.SNConv2D(3, 3)
    x, image = RNG.normal(size=(2, 4)).astype(np.float32), RNG.normal(size=(1, 6, 6, 2)).astype(np.float32)
    dense.build((None, 4))
    conv.build((None, 6, 6, 2))
    for layer, inputs, forward in ((dense, x, lambda k: x @ k + dense.bias.numpy()),
                                   (conv, image, lambda k: tf.nn.conv2d(image, k, 1, "SAME").numpy()
                                    + conv.bias.numpy())):
        kernel, u = layer.kernel.numpy(), layer.sn_u.numpy()
        sigma = float(gan.spectral_normalize(tf.constant(kernel.reshape(-1, kernel.shape[-1])), tf.constant(u))[2])
        np.testing.assert_allclose(layer(inputs, training=False).numpy(), forward(kernel / sigma), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_array_equal(layer.sn_u.numpy(), u)              # inference leaves u alone
        layer(inputs, training=True)
        assert not np.allclose(layer.sn_u.numpy(), u)


# -- the losses ---------------------------------------------------------------------------------

def _np_losses(real, fake):
    """BigBiGAN eq. 3–5: ℓ_D = Σ_s h(y·s), h(t) = max(0, 1 − t); ℓ_EG = y·Σ_s s; y = +1 data, −1 samples."""
    hinge = lambda t: np.maximum(0.0, 1.0 - t)                                    # noqa: E731
    d = np.mean(sum(hinge(s) for s in real)) + np.mean(sum(hinge(-s) for s in fake))
    eg = np.mean(sum(real)) - np.mean(sum(fake))
    return d, eg


def test_bigbigan_losses_match_the_papers_hinge_and_its_gradient():
    real = [RNG.normal(scale=2.0, size=6).astype(np.float32) for _ in range(3)]
    fake = [RNG.normal(scale=2.0, size=6).astype(np.float32) for _ in range(3)]
    r, f = [tf.Variable(s) for s in real], [tf.Variable(s) for s in fake]
    with tf.GradientTape(persistent=True) as tape:
        d, eg = bigbigan_discriminator_loss(r, f), bigbigan_encoder_generator_loss(r, f)
    expected_d, expected_eg = _np_losses(real, fake)
    np.testing.assert_allclose(float(d), expected_d, rtol=1e-6)
    np.testing.assert_allclose(float(eg), expected_eg, rtol=1e-5, atol=1e-6)
    for s, v in zip(real, r):   # d ℓ_D / d s = −1/b where the data pair's score is inside the margin (s < 1)
        np.testing.assert_allclose(tape.gradient(d, v).numpy(), -(s < 1).astype(np.float32) / 6.0, atol=1e-7)
        np.testing.assert_allclose(tape.gradient(eg, v).numpy(), np.full(6, 1 / 6.0), rtol=1e-6)
    for s, v in zip(fake, f):   # … and +1/b where the sample pair's score is above −1
        np.testing.assert_allclose(tape.gradient(d, v).numpy(), (s > -1).astype(np.float32) / 6.0, atol=1e-7)
        np.testing.assert_allclose(tape.gradient(eg, v).numpy(), np.full(6, -1 / 6.0), rtol=1e-6)
    acc = discriminator_accuracy(r, f)
    for tag, a, b in zip(("x", "z", "xz"), real, fake):
        np.testing.assert_allclose(float(acc[f"d_acc_{tag}"]), (np.sum(a > 0) + np.sum(b < 0)) / 12.0)


# -- the networks and the step --------------------------------------------------------------------

@pytest.mark.parametrize("size", [16, 32])
def test_generator_and_discriminator_shapes_and_paths(size):
    g = gan.generator(8, size, 8)
    images = g(tf.random.normal([3, 8]), training=False).numpy()
    assert images.shape == (3, size, size, 3) and images.min() >= 0.0 and images.max() <= 1.0
    d = gan.discriminator(size, 8, 8, 16, 3)
    x, x2 = tf.random.uniform([3, size, size, 3]), tf.random.uniform([3, size, size, 3])
    z, z2 = tf.random.normal([3, 8]), tf.random.normal([3, 8])
    s_x, s_z, s_xz = (t.numpy() for t in d([x, z]))
    a_x, a_z, a_xz = (t.numpy() for t in d([x, z2]))     # another z: s_x (image path only) stays
    b_x, b_z, b_xz = (t.numpy() for t in d([x2, z]))     # another x: s_z (latent path only) stays
    assert s_x.shape == s_z.shape == s_xz.shape == (3,)
    np.testing.assert_allclose(a_x, s_x, rtol=1e-5)
    np.testing.assert_allclose(b_z, s_z, rtol=1e-5)
    assert not np.allclose(a_z, s_z) and not np.allclose(b_x, s_x)
    assert not np.allclose(a_xz, s_xz) and not np.allclose(b_xz, s_xz)   # the joint path sees both


def _tiny_encoder(sync):
    """conv, (synced) BN, ReLU, pool: what the replica test needs of a backbone, at a fraction of its trace."""
    x = keras.Input((16, 16, 3))
    h = BatchNorm(sync=sync)(keras.layers.Conv2D(4, 3, strides=2, use_bias=False)(x))
    return keras.Model(x, keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(h)))


def _bigbigan(sync=False, tiny=False, **kw):
    keras.utils.set_random_seed(0)
    backbone = (_tiny_encoder(sync) if tiny else
                build_backbone("resnet10", width=0.125, image_size=16, synchronized_bn=sync))
    return METHODS["bigbigan"](backbone, 10, image_size=16, synchronized_bn=sync, **{**SMALL, **kw})


def test_the_step_trains_d_then_e_and_g_then_moves_the_generators_ema():
    model = _bigbigan(d_steps=1, ema_decay=0.5)
    batch = next(iter(pipeline.train_stream(shapes_examples(8), views.views_for("flip", CFG), global_batch=8,
                                            seed=0)))
    model.build_with(batch, keras.optimizers.Adam(1e-3))
    assert (model.optimizer.beta_1, model.optimizer.beta_2) == (0.0, 0.999)       # BigGAN's Adam
    assert (model.d_optimizer.beta_1, model.d_optimizer.learning_rate.numpy()) == (0.0, np.float32(2e-4))
    networks = {"D": model.discriminator, "E": model.encoder, "E head": model.latent_head, "G": model.generator}
    before = {k: [w.copy() for w in n.get_weights()] for k, n in networks.items()}
    ema_before = model.generator_ema.get_weights()
    logs = tf.function(model.train_step)(batch)
    for k, n in networks.items():
        moved = [not np.array_equal(a, b) for a, b in zip(before[k], n.get_weights())]
        assert any(moved), f"{k} did not train"
    assert int(model.d_optimizer.iterations) == 1 and int(model.optimizer.iterations) == 1
    decay = min(0.5, 1 / 10)                             # TensorFlow's EMA warm-up at step 0: (1 + 0)/(10 + 0)
    for e, old, g in zip(model.generator_ema.get_weights(), ema_before, model.generator.get_weights()):
        np.testing.assert_allclose(e, decay * old + (1 - decay) * g, rtol=1e-5, atol=1e-6)
    assert {"loss", "d_loss", "d_acc_x", "d_acc_z", "d_acc_xz", "embedding_std", "probe_acc"} <= set(logs)
    # the logged losses are the formulas on the scores of the step's last draw
    assert np.isfinite(float(logs["loss"])) and float(logs["d_loss"]) >= 0.0
    images = model.epoch_images(batch)
    assert images["samples"].shape == (64, 16, 16, 3)
    recon = images["reconstructions"].numpy()          # the batch's 8 images, each beside G(E(x))
    np.testing.assert_array_equal(recon[0::2], batch["views"].numpy())
    assert recon.shape == (16, 16, 16, 3) and ops.image_grid(recon, 8).shape == (32, 128, 3)


@pytest.mark.parametrize("stochastic", [True, False])
def test_the_encoder_samples_its_gaussian_or_gives_its_mean(stochastic):
    model = _bigbigan(tiny=True, stochastic_encoder=stochastic)
    x = tf.random.stateless_uniform([32, 16, 16, 3], [1, 2])
    h, mean, raw = model.gaussian(x, False)
    _, mean2, z = model.encode(x, False, salt=3)
    np.testing.assert_allclose(mean2.numpy(), mean.numpy(), rtol=1e-6)
    eps = (z - mean) / tf.nn.softplus(raw)              # z = μ + softplus(σ̂)·ε with ε ~ N(0, I), or z = μ
    if stochastic:
        assert abs(float(tf.math.reduce_std(eps)) - 1.0) < 0.3 and float(tf.reduce_max(tf.abs(eps))) > 0.5
    else:
        np.testing.assert_array_equal(z.numpy(), mean.numpy())


def test_two_replicas_match_one_device():
    one_device_and_two_replicas_agree(lambda: _bigbigan(sync=True, tiny=True, d_steps=1, mlp_depth=1),
                                      views.views_for("flip", CFG),
                                      shapes_examples(16))


# -- the runner: resume, samples, the generator's SavedModel ----------------------------------------

def _run(tmp, name, **kw):
    from ssl_tf.runner import Runner
    cfg = Config(method="bigbigan", dataset="shapes:48,16", image_size=16, backbone="resnet10", width=0.0625,
                 batch_size=8, epochs=2, progress=False, plots=False, deterministic=True, checkpoint_every=2,
                 random_baseline=False, model_dir=str(tmp / name), gan_latent_dim=8, gan_channels=8,
                 gan_mlp_units=16, gan_mlp_depth=2, gan_d_steps=1, gan_grid=4, **kw)
    lines = []
    return Runner(cfg, log=lines.append).run(), lines


@pytest.mark.slow
def test_a_resumed_run_ends_on_the_uninterrupted_weights_and_exports_the_generator(tmp_path):
    whole, _ = _run(tmp_path, "whole", mode="pretrain")
    _run(tmp_path, "cut", mode="pretrain", max_steps=5)
    resumed, lines = _run(tmp_path, "cut", mode="pretrain")
    assert any("resumed from" in line for line in lines)
    pre = whole["pretrain"]
    assert pre["steps"] == resumed["pretrain"]["steps"] == 12
    # G, E, D, both Adams and G's EMA restored: the same weights, bit for bit
    assert resumed["pretrain"]["weights_sha256"] == pre["weights_sha256"]
    assert {"d_loss", "d_acc_x", "d_acc_z", "d_acc_xz"} <= set(pre["final"])
    samples = sorted(os.listdir(tmp_path / "whole" / "samples"))
    assert samples == [f"{k}_{s:08d}.png" for k in ("reconstructions", "samples") for s in (6, 12)]
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "whole" / "samples" / "samples_00000012.png")))
    assert png.shape == (4 * 16, 4 * 16, 3)
    path = pre["exports"]["export_generator"]
    assert path == str(tmp_path / "whole" / "export_generator")
    code = ("import sys, json, numpy as np, tensorflow as tf; m = tf.saved_model.load(sys.argv[1]); "
            "x = m.signatures['serving_default'](z=tf.random.normal([2, 8]))['images'].numpy(); "
            "print(json.dumps([list(x.shape), float(x.min()), float(x.max())]))")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    shape, low, high = json.loads(out.stdout.strip().splitlines()[-1])
    assert shape == [2, 16, 16, 3] and 0.0 <= low <= high <= 1.0


# -- settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("settings,flag", [
    (dict(image_size=24), "--image_size=24"),
    (dict(image_size=32, optimizer="sgd"), "--optimizer=sgd"),
    (dict(image_size=32, precision="mixed_bfloat16"), "--precision=mixed_bfloat16"),
    (dict(image_size=32, gan_d_steps=0), "--gan_d_steps=0"),
    (dict(image_size=32, gan_beta2=1.0), "--gan_beta2=1.0"),
    (dict(image_size=32, gan_encoder_depth=-1), "--gan_encoder_depth=-1"),
])
def test_settings_refuse_what_cannot_work_in_one_line(settings, flag):
    with pytest.raises(SSLTFError) as e:
        resolve(Config(method="bigbigan", dataset="npz:x.npz", **settings))
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_defaults_follow_bigbigan_and_biggans_cifar_configuration():
    c = resolve(Config(method="bigbigan", dataset="npz:x.npz"), 32)
    assert (c.optimizer, c.learning_rate, c.lr_schedule, c.lr_scaling, c.weight_decay) == ("adam", 2e-4, "constant",
                                                                                            "none", 0.0)
    p = c.params
    assert (p.gan_latent_dim, p.gan_channels, p.gan_d_steps, p.gan_d_learning_rate) == (120, 256, 4, 2e-4)
    assert (p.gan_beta1, p.gan_beta2, p.gan_ema_decay, p.gan_stochastic_encoder) == (0.0, 0.999, 0.9999, True)
    assert resolve(Config(method="bigbigan", dataset="shapes"), 32).image_size == 32   # not the demo's 24
