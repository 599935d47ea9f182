"""The momentum, teacher-student and redundancy-reduction methods: EMA targets, MoCo's queue and
shuffle BN, DINO's centre, NPID's memory bank, SimSiam's fixed predictor lr, the collapse
monitor, multi-crop batching, the ViT backbone, and 2 replicas == 1 device for MoCo and BYOL."""
import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import run_replica_steps

from ssl_tf import config, distribute
from ssl_tf.data import pipeline, shapes, views
from ssl_tf.data.sources import Examples
from ssl_tf.methods import METHODS
from ssl_tf.methods.base import clone_network, effective_rank, ema_pairs, ema_update, encode_views, updated_rows
from ssl_tf.models import build_backbone, representation_layers
from ssl_tf.models.layers import BatchNorm
from ssl_tf.runner import collapse_warning

LR = 0.001   # 2-replica equality: larger steps amplify float32 rounding of BN on tiny batches (~lr²)
CFG = views.AugmentConfig(image_size=16, color_jitter=0.5, num_local_crops=2, local_size=8)
SMALL = {"moco": dict(queue_size=48, dim=8, bn_groups=4), "moco_v3": dict(proj_hidden=16, dim=8, pred_hidden=16),
         "byol": dict(proj_hidden=16, dim=8, pred_hidden=16), "simsiam": dict(proj_hidden=16, dim=8, pred_hidden=4),
         "dino": dict(out_dim=32), "npid": dict(num_examples=32, nce_k=8, dim=8),
         "barlow_twins": dict(proj_hidden=16, dim=8), "vicreg": dict(proj_hidden=16, dim=8)}


def _examples(n=32):
    x, y = shapes.generate(n, seed=0, image_size=16)
    return Examples("t", y, 10, images=x)


def _batch(cls, n=16, seed=0):
    return next(iter(pipeline.train_stream(_examples(), views.views_for(cls.view_recipe, CFG), global_batch=n,
                                           seed=seed)))


def _method(name, sync=False, **extra):
    keras.utils.set_random_seed(0)
    cls = METHODS[name]
    enc = build_backbone("resnet10", width=0.125, image_size=16, synchronized_bn=sync)
    model = cls(enc, 10, **{**SMALL[name], **extra})
    model.total_steps = 20
    return model


def _built(name, lr=0.05, **extra):
    model = _method(name, **extra)
    batch = _batch(type(model))
    model.build_with(batch, keras.optimizers.SGD(lr, momentum=0.9), fixed_optimizer=keras.optimizers.SGD(lr))
    return model, batch


def _values(variables):
    return [v.numpy().copy() for v in variables]


# -- shared machinery ------------------------------------------------------------------------

def test_ema_update_is_exact_and_bn_statistics_follow_the_flag():
    keras.utils.set_random_seed(1)
    online = keras.Sequential([keras.layers.Dense(4), BatchNorm(), keras.layers.Dense(2)])
    online.build((None, 3))
    target = clone_network(online)
    for v in online.weights:                                   # make them differ, moving stats included
        v.assign(v + np.random.default_rng(0).normal(size=v.shape).astype(np.float32))
    before_t, before_o = _values(target.weights), _values(online.weights)
    trainable = {id(v) for v in target.trainable_weights}
    ema_update(ema_pairs(target, online, include_bn_stats=False), 0.9)
    for v, t, o in zip(target.weights, before_t, before_o):
        expected = 0.9 * t + 0.1 * o if id(v) in trainable else t
        m = np.float32(0.9)                                    # bit-exact in float32
        np.testing.assert_array_equal(v.numpy(), m * t + (np.float32(1) - m) * o if id(v) in trainable else t)
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6)
    before_t = _values(target.weights)
    ema_update(ema_pairs(target, online, include_bn_stats=True), 0.5)
    for v, t, o in zip(target.weights, before_t, before_o):
        np.testing.assert_allclose(v.numpy(), 0.5 * t + 0.5 * o, rtol=1e-6)
    with pytest.raises(ValueError, match="architecture"):
        ema_pairs(target, keras.Sequential([keras.layers.Dense(2)]), True)


def test_clone_network_copies_weights_and_can_unsync_bn():
    enc = build_backbone("resnet10", width=0.125, image_size=16, synchronized_bn=True)
    key = clone_network(enc, sync_bn=False)
    for a, b in zip(enc.get_weights(), key.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(layer.sync for layer in enc.layers if isinstance(layer, BatchNorm))
    assert not any(layer.sync for layer in key.layers if isinstance(layer, BatchNorm))
    assert {id(v) for v in enc.weights}.isdisjoint(id(v) for v in key.weights)


def test_encode_views_batches_by_resolution():
    calls = []

    def network(x, training=False):
        calls.append(x.shape)
        return tf.reduce_mean(x, [1, 2, 3])[:, None] * tf.cast(tf.shape(x)[1], tf.float32)
    crops = [tf.random.uniform([3, 8, 8, 3]) for _ in range(2)] + [tf.random.uniform([3, 4, 4, 3]) for _ in range(3)]
    out = encode_views(network, crops, True)
    assert [tuple(c) for c in calls] == [(6, 8, 8, 3), (9, 4, 4, 3)]
    for o, c in zip(out, crops):
        np.testing.assert_allclose(o.numpy(), network(c).numpy(), rtol=1e-6)


def test_collapse_monitor_effective_rank_and_warning():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(64, 16)).astype(np.float32)
    collapsed = np.tile(rng.normal(size=(1, 16)), (64, 1)).astype(np.float32) + 1e-4 * spread
    assert float(effective_rank(spread)) > 12
    assert float(effective_rank(collapsed)) < 1.1
    assert collapse_warning({"embedding_std": 0.9, "effective_rank": 12.0}) is None
    assert "collapsing" in collapse_warning({"embedding_std": 0.01, "effective_rank": 1.0})


def test_multi_crop_views_have_global_and_local_shapes():
    b = _batch(METHODS["dino"], n=4)
    g, loc = b["views"]
    assert g.shape == (4, 2, 16, 16, 3) and loc.shape == (4, 2, 8, 8, 3)
    assert not np.allclose(g[:, 0].numpy(), g[:, 1].numpy())


# -- targets receive no gradient and move by their EMA ---------------------------------------

@pytest.mark.parametrize("name,pairs_of", [
    ("byol", lambda m: [(m.target_encoder, m.encoder), (m.target_projector, m.projector)]),
    ("moco", lambda m: [(m.key_encoder, m.encoder), (m.key_head, m.head)]),
    ("moco_v3", lambda m: [(m.momentum_encoder, m.encoder), (m.momentum_projector, m.projector)]),
    ("dino", lambda m: [(m.teacher_encoder, m.encoder), (m.teacher_head, m.head)]),
])
def test_target_gets_no_gradient_only_its_ema(name, pairs_of):
    from ssl_tf.optim import cosine_momentum
    model, batch = _built(name)
    target_ids = {id(v) for t in model.targets for v in t.weights}
    assert target_ids.isdisjoint(id(v) for v in model.method_variables)
    pairs = [p for t, o in pairs_of(model) for p in ema_pairs(t, o)]
    before = [t.numpy().copy() for t, _ in pairs]
    model.train_step(batch)
    m = model.momentum if name == "moco" else float(cosine_momentum(model.momentum, 0, model.total_steps))
    moved = 0.0
    for (t, o), t0 in zip(pairs, before):
        np.testing.assert_allclose(t.numpy(), m * t0 + (1 - m) * o.numpy(), rtol=1e-5, atol=1e-7)
        moved = max(moved, float(np.abs(o.numpy() - t0).max()))
    assert moved > 1e-4          # the online network did move, so the check is not vacuous


def test_byol_momentum_follows_the_cosine_schedule():
    from ssl_tf.optim import cosine_momentum
    assert float(cosine_momentum(0.996, 0, 100)) == pytest.approx(0.996)
    assert float(cosine_momentum(0.996, 50, 100)) == pytest.approx(0.998)
    assert float(cosine_momentum(0.996, 100, 100)) == pytest.approx(1.0)


def _reads_any(output, variables):
    """Whether computing a function's ``output`` (data and control edges) reads any of ``variables``.
    The walk starts below the output's Identity, whose control edges reach every stateful op."""
    ids = {id(getattr(v, "value", v).handle) for v in variables}
    handles = {internal.ref() for external, internal in output.graph.captures if id(external) in ids}
    seen, stack = set(), [output.op.inputs[0].op]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if any(t.ref() in handles for t in op.inputs):
            return True
        stack += [t.op for t in op.inputs] + list(op.control_inputs)
    return False


@pytest.mark.parametrize("name", ["moco", "byol", "dino", "moco_v3"])
def test_the_target_forward_runs_before_the_online_one(name):
    """base.after: the online backbone's features depend (by a control edge) on the target's forward,
    so the target's activations are gone before the online ones pile up for the backward pass."""
    model, batch = _built(name)
    target = model.targets[0].trainable_weights
    graph = tf.function(lambda b: model.objective(b, training=True).features).get_concrete_function(batch).graph
    assert _reads_any(graph.outputs[0], target)
    alone = tf.function(lambda x: model.encoder(x, training=True))   # the walk itself: no target, no edge
    x = tf.nest.flatten(batch["views"])[0]
    x = x[:, 0] if x.shape.rank == 5 else x                        # DINO: [b, 2, S, S, 3] global views
    assert not _reads_any(alone.get_concrete_function(x).graph.outputs[0], target)


# -- MoCo: queue and shuffle BN ----------------------------------------------------------------

def test_moco_queue_holds_the_last_k_keys_in_order():
    model, batch = _built("moco")
    seen = []
    enqueue = model.enqueue

    def recording(keys):
        seen.append(tf.math.l2_normalize(keys, -1).numpy())
        enqueue(keys)
    model.enqueue = recording
    for s in range(5):                                 # K = 48 = 3 batches of 16; 5 steps wrap the ring
        model.train_step(_batch(type(model), seed=s))
    np.testing.assert_allclose(model.ordered_queue().numpy(), np.concatenate(seen[-3:]), rtol=1e-6)
    assert int(model.queue_ptr.numpy()) == (5 * 16) % 48


def test_moco_keys_use_shuffled_bn_groups_and_come_back_in_order():
    model, batch = _built("moco")
    x = batch["views"][1]
    keys = model.encode_keys(x, training=True).numpy()
    perm = tf.random.experimental.stateless_shuffle(tf.range(16), model.step_seed(1, per_replica=False)).numpy()
    net = lambda v: model.key_head(model.key_encoder(v, training=True), training=True).numpy()  # noqa: E731
    expected = np.zeros_like(keys)
    for g in range(4):                                  # 4 BN groups of 4 shuffled images
        idx = perm[g * 4:(g + 1) * 4]
        expected[idx] = net(tf.gather(x, idx))
    np.testing.assert_allclose(keys, expected, rtol=1e-4, atol=1e-5)
    whole = net(x)                                      # BN over the whole batch (the leak) differs
    assert np.abs(whole - keys).max() > 1e-3


# -- DINO centre, NPID bank, SimSiam fixed lr ---------------------------------------------------

@pytest.mark.parametrize("head_bn", [False, True])
def test_dino_center_follows_its_ema_formula(head_bn):
    # with a BN in the head, this also holds only if the teacher's head sees both views in one batch
    model, batch = _built("dino", head_bn=head_bn)
    g = batch["views"][0]
    crops = tf.concat([g[:, 0], g[:, 1]], 0)
    teacher = model.teacher_head(model.teacher_encoder(crops, training=True), training=True).numpy()
    center = model.center.numpy().copy()
    model.train_step(batch)
    np.testing.assert_allclose(model.center.numpy(), 0.9 * center + 0.1 * teacher.mean(0), rtol=1e-5, atol=1e-7)
    assert np.abs(model.center.numpy()).max() > 0


def test_dino_teacher_temperature_warms_up_linearly():
    model = _method("dino", teacher_warmup_epochs=2)
    model.steps_per_epoch = 10
    assert float(model.teacher_temperature_at(0)) == pytest.approx(0.04)
    assert float(model.teacher_temperature_at(10)) == pytest.approx(0.055)
    assert float(model.teacher_temperature_at(25)) == pytest.approx(0.07)


def test_dino_head_bn_follows_each_hidden_layer_and_the_step_logs_the_teacher_entropy():
    model, batch = _built("dino", head_bn=True)
    mlp = model.head.layers[0]
    assert [layer.name for layer in mlp.layers if "bn" in layer.name] == ["bn0", "bn1"]   # not after the bottleneck
    assert not [layer for layer in _method("dino").head.layers[0].layers if "bn" in layer.name]
    logs = model.train_step(batch)
    assert 0 < float(logs["teacher_entropy"]) <= np.log(32) + 1e-4       # out_dim 32


def test_dino_last_layer_gets_no_gradient_in_its_frozen_epochs():
    model, batch = _built("dino", freeze_last_layer_epochs=2)
    model.steps_per_epoch = 1                        # steps 0 and 1 frozen
    last = model.head.layers[-1]
    kernels = [last.normalized_kernel().numpy()]
    encoder = _values(model.encoder.trainable_variables)
    for _ in range(3):
        model.train_step(batch)
        kernels.append(last.normalized_kernel().numpy())
    np.testing.assert_allclose(kernels[2], kernels[0], atol=1e-6)     # direction fixed for 2 steps
    assert np.abs(kernels[3] - kernels[2]).max() > 1e-5                # then it learns
    assert max(np.abs(a - b.numpy()).max() for a, b in zip(encoder, model.encoder.trainable_variables)) > 1e-5


def test_dino_head_starts_as_main_dino():
    head = _method("dino").head
    kernels = [layer.kernel.numpy() for layer in head.layers[0].layers if "dense" in layer.name]
    for k in kernels:                                # trunc_normal(std=0.02): Keras cuts at 2 std (std 0.0176)
        assert 0.015 < k.std() < 0.021 and np.abs(k).max() <= 0.04 + 1e-6
    v = head.layers[-1].v.numpy()                    # nn.Linear's default U(±1/sqrt(fan_in))
    bound = 1 / np.sqrt(v.shape[0])
    assert np.abs(v).max() <= bound and np.abs(v).max() > 0.9 * bound


def test_npid_bank_rows_move_as_the_formula_says():
    model, batch = _built("npid")
    index = batch["index"].numpy()
    bank = model.bank.rows.numpy().copy()
    f = tf.math.l2_normalize(model.head(model.encoder(batch["views"], training=True)), -1).numpy()
    model.train_step(batch)
    after = model.bank.rows.numpy()
    expected = 0.5 * bank[index] + 0.5 * f
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(after[index], expected, rtol=1e-4, atol=1e-5)
    others = np.setdiff1d(np.arange(32), index)
    np.testing.assert_array_equal(after[others], bank[others])
    assert float(model.bank.z.numpy()) > 0           # Z estimated on the first batch, then fixed
    z = float(model.bank.z.numpy())
    model.train_step(batch)
    assert float(model.bank.z.numpy()) == z
    np.testing.assert_allclose(updated_rows(bank[:2], f[:2], 0.5).numpy(),
                               (bank[:2] + f[:2]) / np.linalg.norm(bank[:2] + f[:2], axis=1, keepdims=True),
                               rtol=1e-5)


def test_simsiam_predictor_trains_at_its_own_fixed_learning_rate():
    model = _method("simsiam")
    batch = _batch(type(model))
    model.build_with(batch, keras.optimizers.SGD(0.0), fixed_optimizer=keras.optimizers.SGD(0.1))
    pred = {id(v) for v in model.predictor.trainable_variables}
    before = {id(v): v.numpy().copy() for v in model.method_variables}
    model.train_step(batch)
    for v in model.method_variables:
        changed = not np.array_equal(v.numpy(), before[id(v)])
        assert changed == (id(v) in pred), v.path


@pytest.mark.parametrize("name", ["moco_v3", "byol", "simsiam", "barlow_twins", "vicreg"])
def test_loss_decreases_on_a_tiny_fixed_batch(name):
    model = _method(name)
    batch = _batch(type(model))
    model.build_with(batch, keras.optimizers.Adam(3e-3), fixed_optimizer=keras.optimizers.Adam(3e-3))
    step = tf.function(model.train_step)
    losses = [float(step(batch)["loss"]) for _ in range(15)]
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05 * abs(np.mean(losses[:3])), losses


# -- 2 replicas == 1 device ----------------------------------------------------------------------

def _train_on(strategy, name, init_weights=None, steps=2, global_batch=8):
    ex = _examples()
    cls = METHODS[name]
    fn = views.views_for(cls.view_recipe, CFG)
    batch = next(iter(pipeline.train_stream(ex, fn, global_batch=global_batch, seed=0)))
    # global BN on both sides: the same statistics path (one device: the whole batch), so only the
    # distribution differs (the fused kernel of unsynchronised BN rounds differently: tests/test_batchnorm.py)
    sync = True
    with strategy.scope():
        model = _method(name, sync=sync, **({"synchronized_bn": sync} if name == "byol" else {}))
        model.build_with(batch, keras.optimizers.SGD(LR, momentum=0.9), keras.optimizers.SGD(0.1))
        if init_weights is not None:
            model.set_weights(init_weights)
    init = [w.copy() for w in model.get_weights()]
    logs = run_replica_steps(strategy, model, ex, fn, global_batch, steps,
                             eager=isinstance(strategy, tf.distribute.OneDeviceStrategy))   # the reference: eager
    # MoCo's key encoder updates its BN moving statistics once per key group (4 groups on one device,
    # 2 per replica here): they are never used (keys are always encoded with batch statistics and the
    # key encoder is never evaluated), so they are left out of the comparison.
    unused = {id(v) for v in getattr(model, "key_encoder", keras.Sequential()).non_trainable_weights}
    kinds = ["trainable" if v.trainable else "state" for v in model.weights]
    keep = [i for i, v in enumerate(model.weights) if id(v) not in unused]
    return init, model.get_weights(), logs, keep, kinds


@pytest.mark.parametrize("name", ["moco", "byol"])
def test_two_replicas_match_one_device(name):
    """Same global batch: losses and every weight (targets, queue, moving statistics) agree."""
    init, one_w, one_logs, keep, kinds = _train_on(tf.distribute.OneDeviceStrategy("/cpu:0"), name)
    _, two_w, two_logs, _, _ = _train_on(distribute.make_strategy("mirrored"), name, init_weights=init)
    for a, b in zip(one_logs, two_logs):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-5)
    assert max(float(np.abs(one_w[i] - init[i]).max()) for i in keep if kinds[i] == "trainable") > 1e-2
    assert len(keep) > 0.8 * len(one_w)
    for i in keep:
        np.testing.assert_allclose(one_w[i], two_w[i], atol=1e-5)


# -- ViT and config ------------------------------------------------------------------------------

def test_vit_tiny_runs_at_two_resolutions_with_named_blocks():
    vit = build_backbone("vit_tiny", width=0.25, image_size=16)
    assert vit.output_shape[-1] == 48
    assert representation_layers(vit) == [f"block{i}" for i in range(1, 13)] + ["pooled"]
    a = vit(tf.random.uniform([2, 16, 16, 3]))
    b = vit(tf.random.uniform([2, 8, 8, 3]))            # local crops: position embeddings resized
    assert a.shape == (2, 48) and b.shape == (2, 48)
    from ssl_tf.eval.layerwise import pool_features
    assert pool_features(tf.zeros([2, 17, 48]), 9000).shape == (2, 48)


def test_joint_method_defaults_and_errors():
    r = lambda **kw: config.resolve(config.Config(dataset="npz:x.npz", **kw), 32)  # noqa: E731
    moco = r(method="moco")
    assert (moco.temperature, moco.target_momentum, moco.queue_size, moco.learning_rate) == (0.2, 0.999, 65536, 0.03)
    assert r(method="moco", moco_version=1).temperature == 0.07
    byol = r(method="byol")
    assert (byol.target_momentum, byol.proj_hidden, byol.proj_dim, byol.optimizer) == (0.996, 4096, 256, "lars")
    dino = r(method="dino")
    assert ((dino.dino_out_dim, dino.teacher_temperature, dino.num_local_crops, dino.local_crop_size)
            == (65536, 0.07, 6, 16))
    assert r(method="simclr").proj_dim == 128
    with pytest.raises(config.SSLTFError, match="--queue_size=1000: must be a multiple of --batch_size=256"):
        r(method="moco", queue_size=1000)
    with pytest.raises(config.SSLTFError, match="--bn_groups=3"):
        r(method="moco", bn_groups=3)
