"""--precision: a mixed bfloat16 backbone with float32 variables, output, heads and losses."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_close_at_precision

from ssl_tf.config import Config
from ssl_tf.export import load_feature_extractor
from ssl_tf.methods import METHODS
from ssl_tf.models import build_backbone, dino_head, dtype_policy
from ssl_tf.models.heads import WeightNormDense
from ssl_tf.optim.loss_scale import all_finite, next_loss_scale
from ssl_tf.runner import Runner

X = np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)


def _pair():
    keras.utils.set_random_seed(0)
    mixed = build_backbone("resnet10", width=0.125, image_size=16, precision="mixed_bfloat16")
    plain = build_backbone("resnet10", width=0.125, image_size=16)
    plain.set_weights(mixed.get_weights())
    return mixed, plain


def _relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_mixed_backbone_computes_in_bfloat16_keeps_float32_variables_and_output():
    mixed, plain = _pair()
    assert keras.mixed_precision.global_policy().name == "float32"   # the policy does not leak
    convs = [layer for layer in mixed.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs and all(layer.compute_dtype == "bfloat16" for layer in convs)
    assert all(v.dtype == "float32" for v in mixed.weights)
    assert all(layer.compute_dtype == "float32" for layer in plain.layers if layer.weights)
    assert mixed.get_layer("block1").output.dtype == "bfloat16"
    y, ref = mixed(X, training=False), plain(X, training=False)
    assert y.dtype == tf.float32
    # the same weights give the same features up to bfloat16 rounding (8-bit mantissa), which is
    # really there: the mixed network did not silently run in float32
    assert 1e-4 < _relative_error(y, ref) < 0.05


@pytest.mark.parametrize("name", ["resnet18", "resnet18v2", "revnet50", "vgg19", "vit_tiny"])
def test_every_backbone_and_input_mode_trains_in_mixed_precision(name):
    for mode in ("rgb", "lightness"):
        enc = build_backbone(name, width=0.125, image_size=16, precision="mixed_bfloat16", input_mode=mode)
        sizes = (16, 8) if name.startswith("vit") else (16,)   # ViT: resized position embeddings (local crops)
        for size in sizes:
            with tf.GradientTape() as tape:
                y = enc(X[:, :size, :size], training=True)
                loss = tf.reduce_mean(tf.square(y))
            grads = tape.gradient(loss, enc.trainable_variables)
            assert y.dtype == tf.float32 and np.isfinite(y.numpy()).all(), (name, mode, size)
            assert all(g is not None and g.dtype == tf.float32 for g in grads), (name, mode, size)
            assert np.isfinite(float(loss)) and float(tf.linalg.global_norm(grads)) > 0, (name, mode, size)
        bf16 = [layer for layer in enc.layers if layer.weights and layer.compute_dtype == "bfloat16"]
        assert len(bf16) >= len([layer for layer in enc.layers if layer.weights]) // 2, (name, mode)


def _simclr_data():
    from ssl_tf.data import views
    from ssl_tf.data.sources import Examples
    y = np.arange(32) % 10
    data = Examples("t", y, 10, images=(np.random.default_rng(1).random((32, 16, 16, 3)) * 255).astype(np.uint8))
    return data, views.views_for("two_views", views.AugmentConfig(image_size=16))


def _simclr_batch():
    from ssl_tf.data import pipeline
    data, view_fn = _simclr_data()
    return next(iter(pipeline.train_stream(data, view_fn, global_batch=16, seed=0)))


def test_mixed_train_step_loss_is_float32_and_matches_float32_step():
    batch = _simclr_batch()
    logs, weights = {}, {}
    for precision in ("mixed_bfloat16", "float32"):
        keras.utils.set_random_seed(0)
        enc = build_backbone("resnet10", width=0.125, image_size=16, precision=precision)
        model = METHODS["simclr"](enc, 10, proj_hidden=32, proj_dim=16)
        model.total_steps = 10
        model.build_with(batch, keras.optimizers.SGD(0.05), fixed_optimizer=keras.optimizers.SGD(0.05))
        if precision == "float32":   # same initial weights as the mixed model
            model.set_weights(weights["mixed_bfloat16"])
        else:
            weights[precision] = model.get_weights()
        out = model.train_step(batch)
        assert out["loss"].dtype == tf.float32
        logs[precision] = {k: float(v) for k, v in out.items()}
        weights[precision + "_after"] = model.get_weights()
    a, b = logs["mixed_bfloat16"]["loss"], logs["float32"]["loss"]
    assert abs(a - b) / abs(b) < 0.02, logs
    # the float32 variables take nearly the same update: the convolution kernels' update vectors
    # point the same way (bfloat16 backprop: measured cosine 0.92 here; identical runs give 1.0)
    kernels = [i for i, v in enumerate(model.weights) if "conv" in v.path and "kernel" in v.path]
    update = {p: np.concatenate([(weights[p + "_after"][i] - weights["mixed_bfloat16"][i]).ravel() for i in kernels])
              for p in ("mixed_bfloat16", "float32")}
    u, v = update["mixed_bfloat16"], update["float32"]
    cosine = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
    assert 0.85 < cosine < 0.9999, cosine


def test_mixed_dino_head_computes_in_bfloat16_and_returns_float32():
    """DINO's head (2048-wide MLP, 65536-wide last layer: 17 % of its ResNet-18 step) follows
    --precision, student and teacher head alike: float32 variables and gradients, bfloat16
    logits (the loss reads them in float32)."""
    keras.utils.set_random_seed(0)
    enc = build_backbone("resnet10", width=0.125, image_size=16, precision="mixed_bfloat16")
    model = METHODS["dino"](enc, 0, out_dim=64, precision="mixed_bfloat16")
    plain = dino_head(64)
    plain.build(enc.output_shape)
    plain.set_weights(model.head.get_weights())
    features = tf.random.normal([8, enc.output_shape[-1]])
    for head in (model.head, model.teacher_head):
        dense = [layer for layer in head.layers[0].layers if isinstance(layer, keras.layers.Dense)]
        assert len(dense) == 3 and all(layer.compute_dtype == "bfloat16" for layer in dense)
        assert head.get_layer("last_layer").matmul_dtype == "bfloat16"
        assert all(v.dtype == "float32" for v in head.weights)
    with tf.GradientTape() as tape:
        y = model.head(features)
        loss = tf.reduce_sum(tf.square(y))
    grads = tape.gradient(loss, model.head.trainable_variables)
    assert y.dtype == tf.bfloat16 and all(g.dtype == tf.float32 and float(tf.norm(g)) > 0 for g in grads)
    assert plain(features).dtype == tf.float32
    # bfloat16 rounding is really there, and small
    assert 1e-4 < _relative_error(tf.cast(y, tf.float32), plain(features)) < 0.05
    np.testing.assert_allclose(model.teacher_head(features), y, rtol=1e-6)   # the EMA copy, same policy


def test_unknown_precision_and_matmul_dtype_are_refused():
    with pytest.raises(ValueError, match="precision='mixed_float8': unknown; accepted: float32, mixed_bfloat16, "
                                         "mixed_float16"):
        with dtype_policy("mixed_float8"):
            pass
    with pytest.raises(ValueError, match="matmul_dtype='float64': accepted float32, bfloat16, float16"):
        WeightNormDense(8, "float64")


def test_next_loss_scale_follows_the_dynamic_schedule():
    """Micikevicius et al. 2018: a non-finite step halves the scale (not below 1), ``interval``
    finite steps in a row double it; checked step by step against a plain re-statement."""
    flags = np.random.default_rng(0).random(300) < 0.85
    scale, good = tf.constant(2.0 ** 15), tf.constant(0, tf.int64)
    ref_scale, ref_good, seen = 2.0 ** 15, 0, set()
    for finite in flags:
        scale, good = next_loss_scale(scale, good, bool(finite), growth_interval=4)
        if finite:
            ref_good += 1
            if ref_good == 4:
                ref_scale, ref_good = ref_scale * 2, 0
                seen.add("grow")
        else:
            ref_scale, ref_good = max(ref_scale / 2, 1.0), 0
            seen.add("halve")
        assert (float(scale), int(good)) == (ref_scale, ref_good)
    assert seen == {"grow", "halve"}
    for _ in range(40):
        scale, good = next_loss_scale(scale, good, False)
    assert float(scale) == 1.0
    assert not bool(all_finite([tf.constant([1.0, np.inf]), None])) and bool(all_finite([tf.ones(3), None]))


def _fp16_simclr(batch, precision="mixed_float16"):
    keras.utils.set_random_seed(0)
    model = METHODS["simclr"](build_backbone("resnet10", width=0.125, image_size=16, precision=precision), 10,
                              proj_hidden=32, proj_dim=16)
    model.set_schedule(model.steps_per_epoch, 10, loss_scaling=precision == "mixed_float16")
    model.build_with(batch, keras.optimizers.SGD(0.05, momentum=0.9),
                     fixed_optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    return model


def _trained(model):
    return [v.numpy().copy() for v in model.weights if "loss_scale" not in v.path]


def test_mixed_float16_step_unscales_its_gradients_and_skips_an_overflowing_step():
    batch = _simclr_batch()
    model = _fp16_simclr(batch)
    assert all(layer.compute_dtype == "float16" for layer in model.encoder.layers
               if isinstance(layer, keras.layers.Conv2D))
    plain = _fp16_simclr(batch, "float32")
    plain.set_weights(_trained(model))
    start = _trained(model)
    kernels = [i for i, v in enumerate(plain.weights) if "conv" in v.path and "kernel" in v.path]
    # 2^15 overflows float16 in this net's backward: each such step is skipped and halves the scale
    for skipped in range(12):
        scale = float(model.loss_scale)
        logs = model.train_step(batch)
        if int(model.optimizer.iterations):
            break
        assert float(model.loss_scale) == scale / 2 and int(model.loss_scale_good_steps) == 0
        assert all(np.array_equal(_trained(model)[i], start[i]) for i in kernels)
    assert int(model.optimizer.iterations) == 1 and float(logs["loss_scale"]) == scale
    assert int(model.loss_scale_good_steps) == 1
    ref = plain.train_step(batch)
    assert abs(float(logs["loss"]) - float(ref["loss"])) / abs(float(ref["loss"])) < 0.01
    # the update equals float32's (unscaled: a missing 1/S would make it S times larger), up to float16 rounding
    u = np.concatenate([(_trained(model)[i] - start[i]).ravel() for i in kernels])
    v = np.concatenate([(plain.weights[i].numpy() - start[i]).ravel() for i in kernels])
    assert 0.95 < u @ v / (np.linalg.norm(u) * np.linalg.norm(v)) < 0.99999
    assert 0.9 < np.linalg.norm(u) / np.linalg.norm(v) < 1.1
    # an overflowing step (loss × 3e38 = inf): no update, the scale halves, the count restarts
    before, iterations = _trained(model), int(model.optimizer.iterations)
    model.loss_scale.assign(3e38)
    logs = model.train_step(batch)
    assert np.isfinite(float(logs["loss"])) and float(model.loss_scale) == pytest.approx(1.5e38)
    assert int(model.loss_scale_good_steps) == 0 and int(model.optimizer.iterations) == iterations
    for a, b in zip(before, _trained(model)):
        if a.dtype == np.float32 and a.ndim == 4:   # kernels (BN moving statistics still follow the batch)
            np.testing.assert_array_equal(a, b)


def test_mixed_float16_skips_on_every_replica_when_one_overflows():
    """Under MirroredStrategy the overflow decision is all-reduced: both replicas skip or apply together."""
    from helpers import run_replica_steps

    from ssl_tf import distribute
    strategy = distribute.make_strategy("mirrored")
    with strategy.scope():
        model = _fp16_simclr(_simclr_batch())
    data, view_fn = _simclr_data()
    start = _trained(model)
    for _ in range(12):   # the first scales overflow float16 (see above): skipped on both replicas
        logs = run_replica_steps(strategy, model, data, view_fn, global_batch=16, steps=1)
        if int(model.optimizer.iterations.numpy()):
            break
        assert all(np.array_equal(a, b) for a, b in zip(start, _trained(model)) if a.ndim == 4)
    assert (int(model.optimizer.iterations.numpy()) == 1
            and logs[0]["loss_scale"] == float(model.loss_scale.numpy()) < 2.0 ** 15)
    assert any(np.abs(a - b).max() > 0 for a, b in zip(start, _trained(model)))
    model.loss_scale.assign(3e38)
    kernels = [w for w in _trained(model) if w.ndim == 4]
    run_replica_steps(strategy, model, data, view_fn, global_batch=16, steps=1)
    assert int(model.optimizer.iterations.numpy()) == 1 and float(model.loss_scale.numpy()) == pytest.approx(1.5e38)
    for a, b in zip(kernels, [w for w in _trained(model) if w.ndim == 4]):
        np.testing.assert_array_equal(a, b)


def test_precision_flag_trains_exports_and_serves_float32_features(tmp_path):
    run = Runner(Config(dataset="shapes:64,16", image_size=16, backbone="resnet10", width=0.125, batch_size=16,
                        epochs=1, progress=False, plots=False, mode="pretrain,export", precision="mixed_bfloat16",
                        model_dir=str(tmp_path)),
                 log=lambda *a: None)
    results = run.run()
    assert np.isfinite(results["pretrain"]["final"]["loss"])
    assert json.load(open(tmp_path / "results.json"))["config"]["precision"] == "mixed_bfloat16"
    extractor = load_feature_extractor(results["export"]["path"])
    features = extractor(X)
    assert features.dtype == tf.float32 and features.shape[0] == 8
    assert_close_at_precision(features, run.encoder()(X, training=False), "mixed_bfloat16")


def test_precision_tolerance_follows_the_precision():
    """bf16 keeps 8 significant bits: 2 roundings of the row's largest value pass, 20 fail; float32's
    tolerance stays 1e-5."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 4, (3, 16))
    scale = np.abs(ref).max(axis=1, keepdims=True)
    assert_close_at_precision(ref + 2 * 2.0 ** -8 * scale * rng.choice([-1, 1], ref.shape), ref, "mixed_bfloat16")
    with pytest.raises(AssertionError, match="mixed_bfloat16"):
        assert_close_at_precision(ref + 20 * 2.0 ** -8 * scale * (np.arange(16) == 3), ref, "mixed_bfloat16")
    with pytest.raises(AssertionError, match="float32"):
        assert_close_at_precision(ref * (1 + 1e-3), ref, "float32")


def _first_loss(c: Config) -> float:
    """The method's loss on its first batch with its initial weights (what step 1 logs), computed
    eagerly through the runner's own data, encoder and method construction."""
    runner = Runner(c, log=lambda *a: None)
    keras.utils.set_random_seed(c.seed)
    train = runner.fraction_labelled_train()
    model = METHODS[c.method].from_config(runner.model_cfg, runner.build_encoder(), runner.data.num_classes,
                                              num_examples=len(train))
    model.set_schedule(10, 10)
    batch = next(iter(model.input_stream(train, runner.augment_config(), global_batch=c.batch_size, seed=c.seed)))
    loss = model.objective(batch, training=True).loss
    assert loss.dtype == tf.float32
    return float(loss)


def test_each_loss_family_first_loss_in_mixed_precision_matches_float32(tmp_path):
    """One loss per family (contrastive, queue, EMA + predictor, multi-crop distillation,
    cross-correlation, variance-covariance, classification pretext, spatial colorization, patch
    grid, semi-supervised) with the same seed in both precisions: the first loss (same initial
    weights and views) agrees to bfloat16 accuracy. Barlow Twins, batch 8, is the most
    sensitive: 5.7 % apart when measured."""
    methods = ["simclr", "moco", "byol", "dino", "barlow_twins", "vicreg", "rotation", "colorization", "jigsaw",
               "fixmatch"]
    losses = {}
    for method in methods:
        for precision in ("float32", "mixed_bfloat16"):
            c = Config(method=method, mode="pretrain", dataset="shapes:64,8", image_size=16, backbone="resnet10",
                       width=0.0625,
                       batch_size=8, epochs=1, progress=False, plots=False, random_baseline=False,
                       model_dir=str(tmp_path / f"{method}-{precision}"), proj_hidden=16,
                       pred_hidden=16, proj_dim=16, dino_out_dim=32, queue_size=16, nce_k=8, head_hidden=16,
                       embed_dim=16, num_permutations=10, num_local_crops=2, num_exemplar_copies=2, mu=2,
                       precision=precision)
            losses.setdefault(method, []).append(_first_loss(c))
    bad = {m: (a, b) for m, (a, b) in losses.items() if not abs(a - b) <= 0.1 * abs(a) + 0.02}
    assert not bad, bad
    assert len(losses) == len(methods) and all(a != b for a, b in losses.values()), losses
