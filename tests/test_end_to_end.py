"""``ssl-tf`` in fresh processes: every --mode, resume after interruption, one-line errors."""
import json
import os

import numpy as np
import pytest

TINY = ["--dataset=shapes:96,40", "--image_size=16", "--backbone=resnet10", "--width=0.125", "--batch_size=16",
        "--epochs=2", "--checkpoint_every=2", "--progress=false", "--eval_epochs=3", "--ft_epochs=1", "--log_every=1"]


def _results(model_dir):
    with open(os.path.join(model_dir, "results.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_pretrain_resume_then_every_eval_mode(cli, tmp_path):
    model_dir = str(tmp_path / "run")
    first = cli("--mode=pretrain", "--max_steps=3", f"--model_dir={model_dir}", *TINY)
    assert first.returncode == 0, first.stderr[-3000:]
    assert _results(model_dir)["pretrain"]["steps"] == 3
    assert os.path.exists(os.path.join(model_dir, "pretrain", "ckpt-2", "ckpt.index"))
    assert os.path.exists(os.path.join(model_dir, "pretrain", "ckpt-3", "ckpt.index"))
    assert any(f.startswith("events.out") for f in os.listdir(os.path.join(model_dir, "logs", "pretrain")))

    # "interrupted" at step 3 of 12 (96 images / batch 16 x 2 epochs): the same run asked for more resumes, not
    # restarts, finishes pretraining, then evaluates
    third = cli("--mode=all", f"--model_dir={model_dir}", *TINY)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resumed from" in third.stdout + third.stderr and "at step 3" in third.stdout + third.stderr
    res = _results(model_dir)
    assert res["pretrain"]["steps"] == 12 and res["pretrain"]["total_steps"] == 12
    for key in ("top1", "random_init_top1"):
        assert 0.0 <= res["linear_eval"][key] <= 100.0 and 0.0 <= res["knn"][key] <= 100.0
    assert res["linear_eval"]["num_eval"] == 40
    assert os.path.exists(os.path.join(res["export"]["path"], "saved_model.pb"))
    assert "linear probe top-1, random-init backbone" in third.stdout

    ft = cli("--mode=finetune", "--label_fraction=0.5", f"--model_dir={model_dir}", *TINY)
    assert ft.returncode == 0, ft.stderr[-3000:]
    res = _results(model_dir)["finetune"]["50%"]
    assert 40 <= res["num_labelled"] <= 56                          # about half of each class of 96
    assert res["steps"] == res["num_labelled"] // 16                 # one epoch at batch 16
    assert 0.0 <= res["top1"] <= 100.0
    assert "loaded encoder from" in ft.stdout + ft.stderr


@pytest.mark.slow
def test_npz_training_with_npz_eval_set(cli, tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 48), ("test", 20)):
        np.savez(tmp_path / f"{name}.npz", images=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8),
                 labels=np.arange(n) % 4)
    out = cli(f"--dataset=npz:{tmp_path / 'train.npz'}", f"--eval_dataset=npz:{tmp_path / 'test.npz'}",
              "--mode=pretrain,knn", "--max_steps=2", "--width=0.125", "--batch_size=16", "--progress=false",
              "--random_baseline=false", f"--model_dir={tmp_path / 'run'}")
    assert out.returncode == 0, out.stderr[-3000:]
    res = _results(str(tmp_path / "run"))
    assert res["data"]["num_train"] == 48 and res["data"]["num_eval"] == 20
    assert res["config"]["image_size"] == 16 and res["config"]["temperature"] == 0.5   # <= 32 px default


@pytest.mark.parametrize("args,expected", [
    (["--dataset=npz:/nonexistent.npz"], "ssl-tf: error: --dataset=npz:/nonexistent.npz: no such file"),
    (["--mode=train", "--dataset=shapes:40,10"],
     "ssl-tf: error: --mode=train: unknown step 'train'; accepted: pretrain"),
    (["--dataset=shapes:40,10", "--batch_size=64"], "ssl-tf: error: --batch_size=64 is larger than the training set"),
    (["--batch_size=1", "--dataset=shapes:40,10"], "ssl-tf: error: --batch_size=1: must be >= 2"),
    (["--mode=knn", "--model_dir=/tmp/ssl_tf_empty_dir_for_test", "--dataset=shapes:20,10"],
     "ssl-tf: error: --model_dir=/tmp/ssl_tf_empty_dir_for_test: no pretraining checkpoint found"),
])
def test_bad_flags_give_one_line_errors(cli_in_process, tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli_in_process(*args)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(expected) and len(err.strip().splitlines()) == 1


def test_a_bad_flag_ends_the_process_with_one_line(cli, tmp_path):
    # in a fresh process: in this one TensorFlow's thread pools are already running
    out = cli("--inter_op_threads=-1", cwd=str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("ssl-tf: error: --inter_op_threads=-1: must be >= 0 (0: "
                                                   "TensorFlow's default)")


def test_unknown_enum_value_lists_choices(cli, tmp_path):
    out = cli("--method=byol2", cwd=str(tmp_path))
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "simclr" in out.stderr and "--method" in out.stderr


@pytest.mark.slow
def test_colorization_layerwise_eval_and_export_through_the_cli(cli, tmp_path):
    """A pretext method end to end: its encoder takes RGB although the network sees only L; the
    layer-wise table, plot and the SavedModel come out."""
    model_dir = str(tmp_path / "run")
    out = cli("--method=colorization", "--mode=pretrain,layerwise_eval,export", f"--model_dir={model_dir}",
              "--layerwise_features=200", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    res = _results(model_dir)
    layers = [r["layer"] for r in res["layerwise_eval"]["layers"]]
    assert layers == ["stem", "block1", "block2", "block3", "block4", "pooled"]
    assert all(r["features"] <= 200 or r["features"] == r["shape"][-1] for r in res["layerwise_eval"]["layers"])
    # the random-init backbone's same layers, for the "beats random at its best layer" question
    rows = res["layerwise_eval"]["layers"]
    assert all(0 <= r["random_init_top1"] <= 100 for r in rows)
    best = max(rows, key=lambda r: r["top1"])
    assert res["layerwise_eval"]["best"] == {k: best[k] for k in ("layer", "top1", "random_init_top1")}
    assert "random" in out.stdout and "gain" in out.stdout
    assert os.path.getsize(os.path.join(model_dir, "layerwise.png")) > 1000
    assert "block4" in out.stdout and "top-1" in out.stdout
    import tensorflow as tf
    loaded = tf.saved_model.load(res["export"]["path"])
    rgb = np.random.default_rng(0).random([2, 16, 16, 3]).astype(np.float32)
    feats = loaded.signatures["serving_default"](tf.constant(rgb))
    assert list(feats.values())[0].shape == (2, res["export"]["feature_dim"])


@pytest.mark.slow
def test_s4l_uses_the_label_fraction_and_needs_labels(cli, tmp_path):
    out = cli("--method=s4l_rotation", "--mode=pretrain", "--label_fraction=0.5", f"--model_dir={tmp_path / 'run'}",
              *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    res = _results(str(tmp_path / "run"))
    assert 40 <= res["data"]["num_labelled"] <= 56
    final = res["pretrain"]["final"]
    assert final["supervised_loss"] > 0 and "rotation_acc" in final
    from PIL import Image
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i in range(24):
        Image.fromarray(np.full((16, 16, 3), i * 10, np.uint8)).save(folder / f"{i}.png")
    bad = cli("--method=s4l_rotation", "--mode=pretrain", f"--dataset=folder:{folder}", "--batch_size=8",
              f"--model_dir={tmp_path / 'bad'}", "--progress=false")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "--method=s4l_rotation needs labelled training data" in bad.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_dino_on_vit_tiny_evaluates_the_teacher_and_exports(cli, tmp_path):
    """DINO with multi-crop on the ViT through the CLI: kNN on the teacher's backbone, SavedModel of
    the teacher's features. (Resuming DINO's teacher and centre: tests/test_reliability.py.)"""
    model_dir = str(tmp_path / "run")
    args = ["--method=dino", "--backbone=vit_tiny", "--width=0.25", "--dino_out_dim=64", "--num_local_crops=2",
            f"--model_dir={model_dir}", *[a for a in TINY if not a.startswith(("--width", "--backbone"))]]
    out = cli("--mode=pretrain,knn,export", *args)
    assert out.returncode == 0, out.stderr[-3000:]
    res = _results(model_dir)
    assert res["pretrain"]["steps"] == res["pretrain"]["total_steps"] == 12
    assert 0.04 < res["pretrain"]["final"]["teacher_temperature"] < 0.07
    assert 0 <= res["knn"]["top1"] <= 100 and res["export"]["feature_dim"] == 48
    import tensorflow as tf

    from ssl_tf import checkpoints
    reader = tf.train.load_checkpoint(checkpoints.latest(os.path.join(model_dir, "pretrain")))
    names = [n for n in reader.get_variable_to_shape_map() if "center" in n or "teacher_encoder" in n]
    assert any("center" in n for n in names) and any("teacher_encoder" in n for n in names)
    loaded = tf.saved_model.load(res["export"]["path"])
    feats = loaded.signatures["serving_default"](tf.constant(np.zeros([2, 16, 16, 3], np.float32)))
    assert list(feats.values())[0].shape == (2, 48)


def test_moco_queue_must_be_a_multiple_of_the_batch(cli, tmp_path):
    out = cli("--method=moco", "--queue_size=100", "--batch_size=16", "--dataset=shapes:96,40",
              f"--model_dir={tmp_path / 'run'}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == ("ssl-tf: error: --queue_size=100: must be a multiple of "
                                                   "--batch_size=16 (each step replaces one batch of keys)")


def _png_size(path):
    import struct
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


@pytest.mark.slow
def test_finetune_distill_fixmatch_plots_and_report(cli, cli_in_process, tmp_path):
    """End to end: SimCLR pretrain + probes, fine-tune from projection layer 1 with the
    first two blocks frozen, distillation into a narrower student, a FixMatch run started from the
    SimCLR encoder, then ``ssl-tf report`` over both runs."""
    from ssl_tf.eval import plots
    a, b = str(tmp_path / "simclr"), str(tmp_path / "fixmatch")
    run = cli("--mode=pretrain,linear_eval,knn", f"--model_dir={a}", *TINY)
    assert run.returncode == 0, run.stderr[-3000:]
    res = _results(a)
    assert [h["step"] for h in res["pretrain"]["history"]] == list(range(1, 13))
    assert _png_size(os.path.join(a, "plots", "curves_pretrain.png")) == plots.CURVES_SIZE
    assert _png_size(os.path.join(a, "plots", "embedding_pca.png")) == plots.MAP_SIZE
    assert os.path.exists(os.path.join(a, "plots", "embedding_tsne.png"))
    assert _png_size(os.path.join(a, "plots", "retrieval.png")) == ((6 + 1) * (64 + 4) + 8, 8 * (64 + 4 + 6))
    import tensorflow as tf
    events = [os.path.join(a, "logs", "pretrain", f) for f in os.listdir(os.path.join(a, "logs", "pretrain"))]
    tags = {v.tag for e in events for ev in tf.compat.v1.train.summary_iterator(e) for v in ev.summary.value}
    assert {"views/views_0", "views/views_1", "loss", "embedding_std"} <= tags

    ft = cli("--mode=finetune,distill", "--label_fraction=0.5", "--ft_proj_selector=1", "--fine_tune_after_block=2",
             "--ft_zero_init", "--student_width=0.0625", "--distill_epochs=1", f"--model_dir={a}", *TINY)
    assert ft.returncode == 0, ft.stderr[-3000:]
    res = _results(a)["finetune"]["50%"]
    assert res["proj_selector"] == 1 and res["frozen_layers"] > 10 and 0 <= res["top1"] <= 100
    assert os.path.exists(os.path.join(a, "classifier", "saved_model.pb"))
    res = _results(a)["distill"]
    assert res["student"] == "resnet10×0.0625" and res["steps"] == 96 // 16
    assert "teacher_agreement" in res["final"] and 0 <= res["teacher_top1"] <= 100
    code, _, err = cli_in_process("--mode=distill", f"--teacher={tmp_path}", f"--model_dir={a}", *TINY)
    assert code == 2 and "--teacher=" in err and "saved_model.pb" in err

    fm = cli("--method=fixmatch", "--mode=pretrain", "--batch_size=8", "--mu=2", "--label_fraction=0.5",
             f"--init_from={a}", f"--model_dir={b}", *[t for t in TINY if not t.startswith("--batch_size")])
    assert fm.returncode == 0, fm.stderr[-3000:]
    assert "loaded encoder from" in fm.stdout + fm.stderr
    res = _results(b)["pretrain"]
    assert res["steps"] == 2 * (96 // 16) and 0 <= res["ema_top1"] <= 100 and "mask_rate" in res["final"]

    code, report_out, err = cli_in_process("report", a, b)
    assert code == 0, err[-3000:]
    runs_table, _, curves = report_out.partition("Top-1 against the fraction of labels:")
    lines = [line for line in runs_table.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    rows = {r[0]: dict(zip(header, r)) for r in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}
    simclr = _results(a)
    assert rows["simclr"]["linear"] == f"{simclr['linear_eval']['top1']:.2f}"
    assert rows["simclr"]["kNN"] == f"{simclr['knn']['top1']:.2f}"
    assert rows["simclr"]["distilled"] == f"{simclr['distill']['top1']:.2f}"
    assert rows["fixmatch"]["semi-sup. (EMA)"] == f"{_results(b)['pretrain']['ema_top1']:.2f}"
    assert rows["fixmatch"]["linear"] == "–"
    # the label-efficiency table: fine-tuning and FixMatch at 50 % of the labels, the probe at 100 %
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in curves.splitlines() if line.startswith("|")]
    assert cells[0] == ["run", "evaluation", "50% labels", "100% labels"]
    by = {(r[0], r[1]): r[2:] for r in cells[2:]}
    assert by[("simclr", "fine-tune")] == [f"{simclr['finetune']['50%']['top1']:.2f}", "–"]
    assert by[("simclr", "linear")] == ["–", f"{simclr['linear_eval']['top1']:.2f}"]
    assert by[("fixmatch", "fixmatch (EMA)")] == [f"{_results(b)['pretrain']['ema_top1']:.2f}", "–"]
    code, _, err = cli_in_process("--mode=report", f"--report_runs={a},{b}", f"--model_dir={tmp_path / 'report'}")
    assert code == 0, err[-3000:]
    assert os.path.getsize(tmp_path / "report" / "label_efficiency.png") > 1000
