"""Unit level: semi-supervised losses against NumPy, RandAugment, FixMatch/MixMatch
batches and steps, frozen probes and fine-tuning, plots and the report table."""
import json
import os
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssl_tf import losses
from ssl_tf.data import randaugment, views
from ssl_tf.data.sources import Examples
from ssl_tf.eval import augmented_probe, extract, plots, report
from ssl_tf.methods import Classifier, FixMatch, MixMatch
from ssl_tf.models import build_backbone, freeze_through, head_prefix, projection_head

RNG = np.random.default_rng(0)


def softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def log_softmax(x):
    return np.log(softmax(x))


# ---------------------------------------------------------------- losses
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.0])
def test_distillation_loss_matches_numpy(temperature):
    t, s = RNG.normal(size=(6, 5)).astype(np.float32), RNG.normal(size=(6, 5)).astype(np.float32)
    expected = np.mean(-np.sum(softmax(t / temperature) * log_softmax(s / temperature), -1))
    got = losses.distillation_loss(t, s, temperature)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    with tf.GradientTape() as tape:     # the teacher gets no gradient
        tt = tf.Variable(t)
        loss = losses.distillation_loss(tt, s, temperature)
    assert tape.gradient(loss, tt) is None


def test_fixmatch_masks_exactly_the_samples_below_threshold():
    weak = RNG.normal(size=(32, 4)).astype(np.float32) * 3
    strong = RNG.normal(size=(32, 4)).astype(np.float32)
    threshold = float(np.median(softmax(weak).max(-1)))     # half the batch on each side
    loss, mask = losses.fixmatch_unlabelled_loss(weak, strong, threshold)
    q = softmax(weak)
    expected_mask = (q.max(-1) >= threshold).astype(np.float32)
    np.testing.assert_array_equal(mask.numpy(), expected_mask)
    assert 0 < expected_mask.sum() < 32
    ce = -log_softmax(strong)[np.arange(32), q.argmax(-1)]
    np.testing.assert_allclose(loss, np.mean(ce * expected_mask), rtol=1e-5)


def test_sharpen_mixup_and_mixmatch_losses_match_their_formulas():
    p = softmax(RNG.normal(size=(5, 4))).astype(np.float32)
    expected = p ** 2 / np.sum(p ** 2, -1, keepdims=True)          # T = 0.5
    np.testing.assert_allclose(losses.sharpen(p, 0.5), expected, rtol=1e-5)

    x1, x2 = RNG.normal(size=(5, 3, 3, 3)).astype(np.float32), RNG.normal(size=(5, 3, 3, 3)).astype(np.float32)
    p2 = softmax(RNG.normal(size=(5, 4))).astype(np.float32)
    lam = losses.mixup_lambda(tf.constant([1, 2], tf.int64), 5, 0.75).numpy()
    assert np.all(lam >= 0.5) and np.all(lam <= 1.0)
    mx, mp = losses.mixup(x1, p, x2, p2, lam)
    np.testing.assert_allclose(mx, lam[:, None, None, None] * x1 + (1 - lam[:, None, None, None]) * x2, rtol=1e-5)
    np.testing.assert_allclose(mp, lam[:, None] * p + (1 - lam[:, None]) * p2, rtol=1e-5)

    logits_x, logits_u = RNG.normal(size=(5, 4)).astype(np.float32), RNG.normal(size=(7, 4)).astype(np.float32)
    q = softmax(RNG.normal(size=(7, 4))).astype(np.float32)
    lx, lu = losses.mixmatch_losses(p, logits_x, q, logits_u)
    np.testing.assert_allclose(lx, np.mean(-np.sum(p * log_softmax(logits_x), -1)), rtol=1e-5)
    np.testing.assert_allclose(lu, np.mean(np.sum((q - softmax(logits_u)) ** 2, -1)) / 4, rtol=1e-5)


def test_mixup_lambda_follows_beta_then_max():
    lam = losses.mixup_lambda(tf.constant([3, 4], tf.int64), 20000, 0.75).numpy()
    # E[max(λ, 1−λ)] for λ ~ Beta(α, α) from NumPy's own Beta sampler
    ref = np.random.default_rng(1).beta(0.75, 0.75, 200000)
    np.testing.assert_allclose(lam.mean(), np.maximum(ref, 1 - ref).mean(), atol=0.01)


# ---------------------------------------------------------------- RandAugment and views
def test_randaugment_ops_keep_range_and_match_formulas():
    x = tf.constant(RNG.uniform(size=(16, 16, 3)), tf.float32)
    for op in randaugment.OPS:
        for m in (0.0, 0.5, 1.0):
            y = op(x, tf.constant(m))
            assert y.shape == x.shape and float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 1.0, op
    levels = np.round(x.numpy() * 255).astype(np.int32)
    np.testing.assert_allclose(randaugment.posterize(x, tf.constant(0.0)), ((levels >> 4) << 4) / 255.0, atol=1e-6)
    np.testing.assert_allclose(randaugment.solarize(x, tf.constant(0.3)),
                               np.where(x.numpy() >= 0.3, 1 - x.numpy(), x.numpy()), atol=1e-6)
    stretched = randaugment.autocontrast(x * 0.5 + 0.2, tf.constant(0.0)).numpy()
    np.testing.assert_allclose(stretched.min((0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(stretched.max((0, 1)), 1.0, atol=1e-6)
    np.testing.assert_allclose(randaugment.brightness(x, tf.constant(1.0)), x.numpy() * 0.95, atol=1e-6)


def test_weak_strong_views_are_seeded_and_differ():
    image = tf.constant(RNG.integers(0, 256, (16, 16, 3)), tf.uint8)
    cfg = views.AugmentConfig(image_size=16)
    seed = tf.constant([5, 6], tf.int64)
    w1, s1 = views.weak_strong(image, seed, cfg)
    w2, s2 = views.weak_strong(image, seed, cfg)
    np.testing.assert_array_equal(w1, w2)
    np.testing.assert_array_equal(s1, s2)
    assert float(tf.reduce_mean(tf.abs(w1 - s1))) > 0.01
    assert views.weak_views(image, seed, dataclasses_replace(cfg, num_guesses=3)).shape == (3, 16, 16, 3)


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


# ---------------------------------------------------------------- FixMatch / MixMatch
def tiny_examples(n=40, classes=4, labelled_every=4):
    images = RNG.integers(0, 256, (n, 16, 16, 3)).astype(np.uint8)
    labels = np.arange(n) % classes
    shown = np.where(np.arange(n) % labelled_every == 0, labels, -1)
    return Examples("tiny", shown.astype(np.int64), classes, images=images)


def tiny_encoder():
    return build_backbone("resnet10", width=0.0625, image_size=16)


def test_semi_stream_gives_b_labelled_and_mu_b_unlabelled():
    ex = tiny_examples()
    model = FixMatch(tiny_encoder(), 4, mu=3)
    batch = next(iter(model.input_stream(ex, views.AugmentConfig(image_size=16), global_batch=4, seed=0)))
    assert batch["labelled"]["views"].shape == (4, 16, 16, 3)
    assert np.all(batch["labelled"]["label"].numpy() >= 0)
    assert np.all(batch["labelled"]["index"].numpy() < 10)          # indices into the 10 labelled images
    weak, strong = batch["unlabelled"]["views"]
    assert weak.shape == strong.shape == (12, 16, 16, 3)
    assert model.batches_per_epoch(ex, 4) == 40 // 12


@pytest.mark.parametrize("cls, warmup", [(FixMatch, False), (MixMatch, False), (FixMatch, True)])
def test_semi_step_trains_the_model_and_moves_the_ema_by_its_formula(cls, warmup):
    keras.utils.set_random_seed(0)
    ex = tiny_examples()
    model = cls(tiny_encoder(), 4, mu=2, ema_decay=0.9, ema_warmup=warmup,
                **({"threshold": 0.0} if cls is FixMatch else {}))
    model.total_steps = 10
    batch = next(iter(model.input_stream(ex, views.AugmentConfig(image_size=16), global_batch=4, seed=0)))
    model.build_with(batch, keras.optimizers.SGD(0.1))
    ema_before = [v.numpy().copy() for v in model.ema_encoder.trainable_weights]
    online_before = [v.numpy().copy() for v in model.encoder.trainable_weights]
    logs = model.train_step(batch)
    assert np.isfinite(float(logs["loss"]))
    moved = [not np.allclose(a, v.numpy()) for a, v in zip(online_before, model.encoder.trainable_weights)]
    assert any(moved)
    d = min(0.9, (1 + 0) / (10 + 0)) if warmup else 0.9     # step 0: the warm-up's 0.1, else the decay
    for before, ema, online in zip(ema_before, model.ema_encoder.trainable_weights, model.encoder.trainable_weights):
        np.testing.assert_allclose(ema.numpy(), d * before + (1 - d) * online.numpy(), rtol=1e-5, atol=1e-7)
    if cls is FixMatch:
        assert float(logs["mask_rate"]) == 1.0          # threshold 0: every pseudo-label kept
    ids = {id(v) for v in model.method_variables}
    assert not ids & {id(v) for v in model.ema_encoder.weights}


def test_mixmatch_unlabelled_weight_ramps_up_linearly():
    model = MixMatch(tiny_encoder(), 4, unlabelled_weight=75.0, rampup=0.5)
    model.total_steps = 100
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.optimizer.build(model.encoder.trainable_variables)
    model.optimizer.iterations.assign(10)
    np.testing.assert_allclose(float(model.unlabelled_weight_now()), 75.0 * 10 / 50, rtol=1e-6)
    model.optimizer.iterations.assign(80)
    assert float(model.unlabelled_weight_now()) == 75.0


# ---------------------------------------------------------------- frozen encoders
def test_probe_in_inference_mode_leaves_bn_statistics_unchanged():
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder()
    encoder(tf.random.uniform([8, 16, 16, 3]), training=True)     # non-trivial moving statistics
    before = [w.copy() for w in encoder.get_weights()]
    ex = tiny_examples(labelled_every=1)
    res = augmented_probe(encoder, ex, ex, 4, image_size=16, epochs=2, batch_size=8)
    extract(encoder, ex, 16)
    assert 0 <= res["top1"] <= 100
    for a, b in zip(before, encoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    stats = [w for w in encoder.weights if "moving" in w.path]
    assert stats, "the encoder has BN moving statistics"


def test_fine_tune_after_block_freezes_exactly_the_early_layers():
    keras.utils.set_random_seed(0)
    encoder = tiny_encoder()
    frozen = set(freeze_through(encoder, 2))
    assert "stem" in frozen and "block2" in frozen and "block3" not in frozen and "s3b1_conv1" not in frozen
    model = Classifier(encoder, 4)
    x, y = tf.random.uniform([8, 16, 16, 3]), tf.constant(np.arange(8) % 4)
    model.build_with({"views": x, "label": y}, keras.optimizers.SGD(0.5))
    before = {w.path: w.numpy().copy() for w in encoder.weights}
    model.train_step({"views": x, "label": y})
    for w in encoder.weights:
        layer = w.path.split("/")[-2] if "/" in w.path else w.path
        changed = not np.array_equal(before[w.path], w.numpy())
        if layer in frozen:
            assert not changed, w.path          # weights and BN statistics of frozen layers
        elif "kernel" in w.path:
            assert changed, w.path


def test_head_prefix_takes_whole_projection_layers():
    head = projection_head(16, 8, num_layers=3)
    head.build((None, 32))                                           # the tiny encoder's 32 features
    one = head_prefix(head, 1)
    assert [layer.name for layer in one.layers] == ["dense0", "bn0", "relu0"]
    assert one.layers[0] is head.layers[0]                          # shared weights
    assert len(head_prefix(head, 3).layers) == len(head.layers)
    with pytest.raises(ValueError):
        head_prefix(head, 4)
    model = Classifier(tiny_encoder(), 4, proj=one)
    assert model(tf.zeros([2, 16, 16, 3])).shape == (2, 4)
    model0 = Classifier(tiny_encoder(), 4, zero_init_head=True)
    np.testing.assert_array_equal(model0(tf.random.uniform([2, 16, 16, 3])).numpy(), 0.0)


# ---------------------------------------------------------------- plots and report
def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plot_files_are_pngs_of_the_expected_size(tmp_path):
    history = [{"step": i, "loss": 3.0 / i, "probe_acc": 0.1 * i, "embedding_std": 0.9} for i in range(1, 6)]
    curves = plots.training_curves(history, str(tmp_path / "curves.png"))
    assert png_size(curves) == plots.CURVES_SIZE
    feats, labels = RNG.normal(size=(60, 8)), np.arange(60) % 3
    maps = plots.embedding_maps(feats, labels, str(tmp_path / "emb"))
    assert [os.path.basename(p) for p in maps] == ["emb_pca.png", "emb_tsne.png"]
    assert all(png_size(p) == plots.MAP_SIZE for p in maps)
    images = RNG.uniform(size=(60, 16, 16, 3))
    grid = plots.retrieval_grid(images, feats, labels, str(tmp_path / "nn.png"), num_queries=4, k=3, cell=32)
    assert png_size(grid) == ((3 + 1) * (32 + 4) + 8, 4 * (32 + 4 + 6))


def test_pca_and_neighbours_match_numpy():
    x = RNG.normal(size=(50, 6)) * np.array([5, 3, 1, 1, 1, 1])
    xy = plots.pca_2d(x)
    c = x - x.mean(0)
    eigval, eigvec = np.linalg.eigh(np.cov(c.T))
    ref = c @ eigvec[:, ::-1][:, :2]
    np.testing.assert_allclose(np.abs(xy), np.abs(ref), rtol=1e-6, atol=1e-8)
    nn = plots.nearest_neighbours(x, np.array([0, 7]), 3)
    f = x / np.linalg.norm(x, axis=1, keepdims=True)
    for row, q in zip(nn, (0, 7)):
        s = f @ f[q]
        s[q] = -np.inf
        np.testing.assert_array_equal(row, np.argsort(-s)[:3])


def test_without_matplotlib_the_run_names_the_extra(monkeypatch):
    import builtins
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", fake)
    said = []
    assert plots.training_curves([{"step": 1, "loss": 1.0}], "/nonexistent/x.png", log=said.append) is None
    assert said and "pip install 'ssl_tf[plots]'" in said[0]


def test_report_table_reads_results_files(tmp_path):
    for name, res in {"a": {"config": {"method": "simclr", "backbone": "resnet18", "width": 0.5, "batch_size": 256},
                            "pretrain": {"epochs": 2.0, "train_images_per_sec": 100.5},
                            "linear_eval": {"top1": 41.234}, "knn": {"top1": 35.0},
                            "finetune": {"1%": {"top1": 20.0}, "10%": {"top1": 30.5}}},
                      "b": {"config": {"method": "byol", "backbone": "resnet18", "width": 1.0, "batch_size": 128},
                            "mlp_eval": {"top1": 50.0}}}.items():
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "results.json", "w") as f:
            json.dump(res, f)
    lines = report(["%s" % tmp_path]).splitlines()
    assert lines[0].split("|")[1:-1] == [" run ", " method ", " backbone ", " epochs ", " batch ", " linear ", " MLP ",
                                         " kNN ", " 1% ft ", " 10% ft ", " images/s "]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["a", "simclr", "resnet18×0.5", "2", "256", "41.23", "–",
                                                              "35.00", "20.00", "30.50", "100.5"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]][6] == "50.00"


def test_label_efficiency_collects_every_fraction_a_run_measured_and_plots_it(tmp_path):
    from ssl_tf.eval.report import (
        label_efficiency_rows,
        label_efficiency_table,
        load_rows,
        plot_label_efficiency,
        run_row,
    )
    runs = {"ssl": {"config": {"method": "simclr", "label_fraction": 0.1},
                    "linear_eval": {"top1": 45.0, "label_fraction": 0.1,
                                    "by_fraction": {"1%": 30.0, "100%": 56.0, "10%": 45.0}},
                    "finetune": {"1%": {"top1": 33.0}, "10%": {"top1": 50.0}},
                    "distill": {"top1": 52.0, "label_fraction": 0.1}},
            "semi": {"config": {"method": "fixmatch", "label_fraction": 0.1}, "pretrain": {"ema_top1": 61.5}},
            "full": {"config": {"method": "byol", "label_fraction": 1.0}, "linear_eval": {"top1": 44.0,
                                                                                          "label_fraction": 1.0}}}
    for name, res in runs.items():
        os.makedirs(tmp_path / name)
        with open(tmp_path / name / "results.json", "w") as f:
            json.dump(res, f)
    rows = label_efficiency_rows([str(tmp_path)])
    # a run probed only with every label has no curve
    assert {(r["run"], r["series"]) for r in rows} == {("ssl", "linear"), ("ssl", "fine-tune"),
                                                        ("ssl", "distilled"), ("semi", "fixmatch (EMA)")}
    lines = label_efficiency_table(rows).splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == ["run", "evaluation", "1% labels", "10% labels",
                                                              "100% labels"]
    cells = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[3:-1]]
             for line in lines[2:]}
    assert cells[("ssl", "linear")] == ["30.00", "45.00", "56.00"]
    assert cells[("ssl", "fine-tune")] == ["33.00", "50.00", "–"]
    assert cells[("semi", "fixmatch (EMA)")] == ["–", "61.50", "–"]
    assert "Top-1 against the fraction of labels" in report([str(tmp_path)])
    # the runs' table gives the probe with every label, not the last fraction probed (ssl's top1 is 10 %'s)
    linear = {r["run"]: r["linear"] for r in load_rows([str(tmp_path)])}
    assert linear == {"ssl": 56.0, "semi": None, "full": 44.0}
    only_some = {"linear_eval": {"top1": 45.0, "label_fraction": 0.1, "by_fraction": {"10%": 45.0}}}
    assert run_row("x", only_some)["linear"] is None
    path = plot_label_efficiency(rows, str(tmp_path / "curve.png"))
    assert path and os.path.getsize(path) > 1000


def test_fine_tuning_follows_simclrs_epochs_and_takes_eight_steps_an_epoch(tmp_path):
    """With few labels a pretraining-sized batch made one fine-tuning step per epoch (1% of CIFAR-10:
    30 steps in all, the classifier below the frozen probe); the batch now shrinks to 8 steps an epoch
    (rounded to even: oneDNN aborts on odd batches of narrow ResNets)."""
    from ssl_tf.config import Config, resolve
    from ssl_tf.runner import Runner
    assert resolve(Config(dataset="tfds:cifar10", label_fraction=0.01)).ft_epochs == 60      # SimCLR B.5
    assert resolve(Config(dataset="tfds:cifar10", label_fraction=0.1)).ft_epochs == 30
    assert resolve(Config(dataset="tfds:cifar10", label_fraction=0.01, ft_epochs=7)).ft_epochs == 7
    common = dict(dataset="shapes:400,40", image_size=16, backbone="resnet10", width=0.0625, batch_size=256,
                  max_steps=1, ft_epochs=1,
                  label_fraction=0.5, progress=False, plots=False, random_baseline=False)
    res = Runner(Config(mode="pretrain,finetune", model_dir=str(tmp_path / "a"), **common), log=lambda *a: None).run()
    ft = res["finetune"]["50%"]
    assert ft["num_labelled"] == 200 and ft["global_batch"] == 24 and ft["steps"] == 8      # 200 // 8, even
    res = Runner(Config(mode="pretrain,finetune", model_dir=str(tmp_path / "b"), ft_batch_size=100, **common),
                 log=lambda *a: None).run()
    assert res["finetune"]["50%"]["global_batch"] == 100 and res["finetune"]["50%"]["steps"] == 2


def test_keras_teacher_files_load_only_in_safe_mode(tmp_path):
    import keras
    import pytest

    from ssl_tf.errors import SSLTFError
    from ssl_tf.methods import load_teacher
    inputs = keras.Input((8, 8, 3))
    safe = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs)))
    safe.save(tmp_path / "safe.keras")
    x = np.random.default_rng(0).random((2, 8, 8, 3)).astype(np.float32)
    teacher = load_teacher(str(tmp_path / "safe.keras"))
    np.testing.assert_allclose(teacher(x), safe(x), atol=1e-6)
    assert not teacher.trainable
    # a Lambda layer holds Python bytecode: refused, never executed
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs))
    unsafe.save(tmp_path / "unsafe.keras")
    with pytest.raises(SSLTFError, match="cannot be loaded safely") as e:
        load_teacher(str(tmp_path / "unsafe.keras"))
    assert "\n" not in str(e.value)
    (tmp_path / "junk.keras").write_bytes(b"not a zip")
    with pytest.raises(SSLTFError, match="junk.keras"):
        load_teacher(str(tmp_path / "junk.keras"))


def test_ema_warmup_follows_tensorflows_num_updates_formula():
    from ssl_tf.optim import ema_decay_at
    for decay in (0.9, 0.999):
        for t in (0, 1, 5, 50, 1000, 10 ** 6):
            np.testing.assert_allclose(float(ema_decay_at(decay, t)), min(decay, (1 + t) / (10 + t)), rtol=1e-6)
    assert float(ema_decay_at(0.999, 10 ** 6)) == np.float32(0.999)   # the paper's decay once warmed up
