"""BoWNet: the bag of visual words, k-means, CutMix and the prediction head against NumPy
re-derivations of their formulas, the step's objective, the teacher chain of ``ssl-tf`` (a rotation
teacher, then rounds) and the one-line errors."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import np_softmax, shapes_examples

from ssl_tf.config import Config, resolve
from ssl_tf.data import ops, pipeline, views
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import hard_bow, kmeans, kmeans_assign, kmeans_update, word_distances
from ssl_tf.methods import METHODS
from ssl_tf.methods.bownet import load_teacher_encoder, teacher_chain
from ssl_tf.models import CosineClassifier, build_backbone

RNG = np.random.default_rng(0)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = views.AugmentConfig(image_size=16)


def _np_bags(features, words, pooling="count"):
    """BoWNet §2.2: each location's nearest word by L2; counted (or marked) over locations; L1-normalised."""
    d = ((features[:, :, None, :] - words[None, None]) ** 2).sum(-1)
    onehot = np.eye(words.shape[0])[d.argmin(-1)]                   # [b, n, K]
    bag = onehot.sum(1) if pooling == "count" else onehot.max(1)
    return bag / bag.sum(-1, keepdims=True)


@pytest.mark.parametrize("pooling", ["count", "max"])
def test_hard_bag_of_words_is_the_normalised_histogram_of_nearest_words(pooling):
    features, words = RNG.normal(size=(3, 6, 4)).astype(np.float32), RNG.normal(size=(5, 4)).astype(np.float32)
    got = hard_bow(word_distances(features, words), pooling).numpy()
    np.testing.assert_allclose(got, _np_bags(features, words, pooling), atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    # a word nearest to two locations counts twice in the histogram, once in the max
    two = np.stack([words[1] + 1e-3, words[1] - 1e-3, words[3]])[None].astype(np.float32)
    np.testing.assert_allclose(hard_bow(word_distances(two, words), pooling).numpy()[0],
                               [0, 2 / 3, 0, 1 / 3, 0] if pooling == "count" else [0, 0.5, 0, 0.5, 0], atol=1e-6)


def test_kmeans_assignment_and_update_follow_lloyds_step():
    points, centroids = RNG.normal(size=(50, 3)).astype(np.float32), RNG.normal(size=(6, 3)).astype(np.float32)
    centroids[5] = 100.0                                           # far away: no point is assigned to it
    index, nearest = kmeans_assign(points, centroids, chunk=16)    # chunks of 16: 4 passes, one partial
    d = ((points[:, None] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(index.numpy(), d.argmin(-1))
    np.testing.assert_allclose(nearest.numpy(), d.min(-1), rtol=1e-4, atol=1e-4)
    new, counts = kmeans_update(points, index, centroids)
    for k in range(6):
        members = points[d.argmin(-1) == k]
        expected = members.mean(0) if len(members) else centroids[k]   # an empty cluster stays put
        np.testing.assert_allclose(new.numpy()[k], expected, rtol=1e-5, atol=1e-5)
        assert counts.numpy()[k] == len(members)


def test_kmeans_never_increases_the_mean_distance_and_finds_separated_clusters():
    centres = np.array([[0, 0], [10, 0], [0, 10]], np.float32)
    points = np.concatenate([c + RNG.normal(scale=0.5, size=(40, 2)) for c in centres]).astype(np.float32)
    found, inertia = kmeans(points, 3, 10, seed=1)
    assert all(b <= a + 1e-6 for a, b in zip(inertia, inertia[1:]))
    # every true centre has a found centroid within 0.5
    assert (np.sqrt(((centres[:, None] - found.numpy()[None]) ** 2).sum(-1)).min(1) < 0.5).all()


def test_cutmix_pastes_the_partners_box_and_mixes_targets_by_area():
    images = RNG.uniform(size=(3, 8, 8, 1)).astype(np.float32)
    targets = np.eye(3, dtype=np.float32)
    draws = np.array([0.75, 0.5, 0.25], np.float32)   # 1 − λ = 1/4: a 4×4 box centred at row 4, column 2
    partner = np.array([1, 2, 0])
    mixed, mixed_targets, kept = ops.cutmix(images, targets, draws, partner)
    box = np.zeros((8, 8), bool)
    box[2:6, 0:4] = True
    expected = np.where(box[None, :, :, None], images[partner], images)
    np.testing.assert_array_equal(mixed.numpy(), expected)
    assert float(kept) == pytest.approx(1 - 16 / 64)
    np.testing.assert_allclose(mixed_targets.numpy(), 0.75 * targets + 0.25 * targets[partner], rtol=1e-6)
    # a box cut by the border: λ is the area actually kept
    _, _, kept = ops.cutmix(images, targets, np.array([0.0, 0.0, 0.0], np.float32), partner)
    assert float(kept) == pytest.approx(1 - 16 / 64)      # an 8×8 box centred at a corner keeps 3/4


def test_the_head_scores_are_gamma_times_cosines_and_gamma_learns():
    head = CosineClassifier(4, scale=2.0)
    x = tf.constant(RNG.normal(size=(3, 5)).astype(np.float32))
    with tf.GradientTape() as tape:
        z = head(x)
        loss = tf.reduce_sum(z)
    w, u = head.kernel.numpy(), x.numpy()
    cos = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(z.numpy(), 2.0 * cos, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(head(3.0 * x).numpy(), z.numpy(), rtol=1e-5, atol=1e-6)   # the feature's norm is out
    np.testing.assert_allclose(float(tape.gradient(loss, head.scale)), cos.sum(), rtol=1e-4)   # d/dγ of Σ γ·cos


def _bownet(teacher=None, **kw):
    keras.utils.set_random_seed(0)
    backbone = build_backbone("resnet10", width=0.125, image_size=16)
    return METHODS["bownet"](backbone, 10, teacher_encoder=teacher, words=8, kmeans_images=16, image_size=16, **kw)


def test_the_objective_is_the_cross_entropy_to_the_teachers_bag_and_the_teacher_stays_fixed():
    keras.utils.set_random_seed(1)
    teacher = build_backbone("resnet10", width=0.125, image_size=16)
    model = _bownet(teacher, cutmix_p=0.0)
    batch = next(iter(pipeline.train_stream(shapes_examples(), views.views_for("bownet", CFG), global_batch=4, seed=0)))
    with pytest.raises(SSLTFError, match="prepare"):
        model.objective(batch, training=False)
    inertia = model.prepare(shapes_examples(), log=lambda *a: None)
    assert inertia[-1] <= inertia[0]
    model.build_with(batch, keras.optimizers.SGD(0.05, momentum=0.9))
    teacher_view, student_view = (v.numpy() for v in batch["views"])
    fmap = keras.Model(teacher.input, teacher.get_layer("block3").output)(teacher_view, training=False).numpy()
    bags = _np_bags(fmap.reshape(4, -1, fmap.shape[-1]), model.vocabulary.numpy())
    logits = model.head(model.encoder(student_view, training=True)).numpy()
    expected = -(bags * np.log(np_softmax(logits))).sum(-1).mean()
    np.testing.assert_allclose(float(model.objective(batch, training=True).loss), expected, rtol=1e-4)
    # the teacher is fixed (no variable of it trains: tests/test_keras_fit.py trains the method); γ learns
    trained = {id(v) for v in model.method_variables}
    assert not model.teacher_encoder.trainable_weights and not any(id(v) in trained for v in teacher.weights)
    assert id(model.head.scale) in trained and id(model.vocabulary) not in trained


def test_cutmix_in_the_step_mixes_the_targets_of_partner_images():
    model = _bownet(cutmix_p=1.0)
    views_ = tf.constant(RNG.uniform(size=(4, 16, 16, 3)).astype(np.float32))
    bags = tf.constant(np.eye(4, 8, dtype=np.float32))
    mixed, targets = model.mix(views_, bags)
    kept = targets.numpy()[np.arange(4), np.arange(4)]
    assert np.allclose(kept, kept[0]) and 0 <= kept[0] <= 1           # one box for the batch
    np.testing.assert_allclose(targets.numpy()[np.arange(4), (np.arange(4) + 1) % 4], 1 - kept[0], atol=1e-6)
    assert np.array_equal(_bownet(cutmix_p=0.0).mix(views_, bags)[1].numpy(), bags.numpy())


def test_the_teacher_chain_trains_a_rotation_teacher_then_each_round(tmp_path):
    p = resolve(Config(method="bownet", dataset="npz:x", bow_rounds=3), 32).params
    runs, teacher = teacher_chain(p, str(tmp_path), epochs=7, minutes=30.0)
    assert [r["method"] for r in runs] == ["rotation", "bownet", "bownet"]
    assert runs[0]["model_dir"] == str(tmp_path / "teacher_rotation") and runs[0]["epochs"] == 7
    assert runs[1]["teacher_run"] == runs[0]["model_dir"] and runs[2]["teacher_run"] == runs[1]["model_dir"]
    assert teacher == runs[2]["model_dir"] and all(r["train_minutes"] == 7.5 for r in runs)   # 30 min over 4 runs
    p.teacher_run = "/some/run"
    runs, teacher = teacher_chain(p, str(tmp_path), epochs=7, minutes=None)
    assert [r["teacher_run"] for r in runs] == ["/some/run", runs[0]["model_dir"]] and teacher == runs[1]["model_dir"]


def test_the_budget_flagfile_trains_the_teacher_then_two_rounds_and_a_rerun_skips_them(tmp_path):
    """flags/bownet/cifar10_20min.flags (as every budget flagfile: parses, trains 2 steps), with a second round:
    ``ssl-tf`` trains the rotation teacher, round 1 from it, then this run from round 1."""
    from absl import flags

    from ssl_tf import cli
    from ssl_tf.runner import Runner
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["ssl-tf", f"--flagfile={os.path.join(ROOT, 'flags', 'bownet', 'cifar10_20min.flags')}",
        "--dataset=shapes:64,32", "--image_size=16", "--backbone=resnet10", "--width=0.0625", "--batch_size=8",
        "--bow_words=16", "--bow_kmeans_images=32", "--bow_rounds=2", "--max_steps=2", "--mode=pretrain",
        "--progress=false", "--plots=false", f"--model_dir={tmp_path}"])
    cfg = cli.config_from_flags(fv)
    assert cfg.train_minutes == 20 and cfg.backbone == "resnet10"
    logs = []
    runner = Runner(cfg, log=logs.append)
    result = runner.run()
    assert result["pretrain"]["steps"] == 2 and all(v == v for v in result["pretrain"]["final"].values())
    teacher_dir, round_dir = tmp_path / "teacher_rotation", tmp_path / "bow_round_1"
    assert result["config"]["teacher_run"] == str(round_dir)      # the last round is taught by the one before
    assert result["config"]["train_minutes"] == pytest.approx(20 / 3)   # the budget shared by the three runs
    assert any("k-means of 512 features of 32 images from --teacher_run=" + str(round_dir) in line for line in logs)
    for directory, method in ((teacher_dir, "rotation"), (round_dir, "bownet")):
        again = runner.derived(model_dir=str(directory), method=method)
        assert again.results["pretrain"]["steps"] == 2      # a rerun finds them trained and skips them
    encoder = load_teacher_encoder(str(round_dir), 16)
    assert encoder.count_params() > 0 and not encoder.trainable_weights
    with pytest.raises(SSLTFError) as e:
        load_teacher_encoder(str(round_dir), 32)
    assert str(e.value).startswith(f"--teacher_run={round_dir}: trained on 16 px") and "\n" not in str(e.value)


@pytest.mark.parametrize("settings,flag", [
    (dict(bow_rounds=0), "--bow_rounds=0"),
    (dict(bow_words=1), "--bow_words=1"),
    (dict(cutmix_p=1.5), "--cutmix_p=1.5"),
    (dict(bow_pooling="mean"), "--bow_pooling=mean"),
    (dict(teacher_run=" "), "--teacher_run= "),
])
def test_bownet_settings_refuse_what_cannot_work_in_one_line(settings, flag):
    with pytest.raises(SSLTFError) as e:
        resolve(Config(method="bownet", dataset="shapes", **settings))
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_a_missing_teacher_or_too_many_words_is_refused_in_one_line(tmp_path):
    with pytest.raises(SSLTFError) as e:
        load_teacher_encoder(str(tmp_path / "nowhere"), 16)
    assert str(e.value).startswith("--teacher_run=") and "no pretraining checkpoint" in str(e.value)
    model = METHODS["bownet"](build_backbone("resnet10", width=0.125, image_size=16), 10, words=600,
                              kmeans_images=16, image_size=16)
    with pytest.raises(SSLTFError) as e:                            # 16 images × 16 locations = 256 features
        model.prepare(shapes_examples(), log=lambda *a: None)
    assert str(e.value).startswith("--bow_words=600") and "256" in str(e.value) and "\n" not in str(e.value)
