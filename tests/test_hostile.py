"""Hostile inputs: each class of failure a hostile user found ends in one line (``SSLTFError`` /
``ssl-tf: error:`` with exit 2) or in a result that is right — never a traceback or a silent wrong answer."""
import io
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from ssl_tf import checkpoints, config
from ssl_tf.data import sources
from ssl_tf.errors import SSLTFError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(image_size=16, width=0.0625, batch_size=8, epochs=1, max_steps=2, progress=False, plots=False,
            random_baseline=False, eval_epochs=1)


def _runner(**kw):
    from ssl_tf.runner import Runner
    return Runner(config.Config(**{**TINY, **kw}), log=lambda *a: None)


def _png_bomb(width=14000, height=14000) -> bytes:
    """A valid PNG header declaring width × height pixels with almost no data (24 KB class)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (3 * width + 1))) + chunk(b"IEND", b""))


def _folder(root, classes, per_class=6, side=16, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
                os.path.join(root, c, f"{i}.png"))
    return str(root)


# -- silent wrong results ---------------------------------------------------------------------------------------

def test_a_run_directory_refuses_another_method_even_with_compatible_variables(tmp_path):
    run = str(tmp_path / "run")
    _runner(method="s4l_rotation", mode="pretrain", dataset="shapes:32,8", model_dir=run).run()
    with pytest.raises(SSLTFError, match="written by --method=s4l_rotation, not --method=rotation"):
        _runner(method="rotation", mode="pretrain", dataset="shapes:32,8", model_dir=run).run()


def test_evaluation_classes_are_matched_by_name_and_foreign_classes_refused(tmp_path):
    train = _folder(tmp_path / "train", ["a", "b", "c"])
    same = _folder(tmp_path / "sub", ["b", "c"], seed=1)
    splits = sources.load_dataset(f"folder:{train}", eval_spec=f"folder:{same}", log=lambda *a: None)
    assert set(splits.eval.labels) == {1, 2} and splits.num_classes == 3     # b, c keep training's numbers
    other = _folder(tmp_path / "other", ["b", "z"], seed=2)
    with pytest.raises(SSLTFError, match=r"^--eval_dataset=folder:.*classes z are not classes of --dataset"):
        sources.load_dataset(f"folder:{train}", eval_spec=f"folder:{other}", log=lambda *a: None)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "five.npz", images=rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8),
             labels=np.arange(20) % 5)
    np.savez(tmp_path / "ten.npz", images=rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8),
             labels=np.arange(20) % 10)
    with pytest.raises(SSLTFError, match="has labels up to 9, but --dataset=npz:.* has 5 classes"):
        sources.load_dataset(f"npz:{tmp_path / 'five.npz'}", eval_spec=f"npz:{tmp_path / 'ten.npz'}")


def test_skipped_bad_images_are_counted_once(tmp_path):
    data = _folder(tmp_path / "data", ["a", "b"], per_class=10)
    with open(os.path.join(data, "a", "broken.png"), "wb") as f:
        f.write(b"not a png")
    res = _runner(mode="pretrain", dataset=f"folder:{data}", skip_bad_images=True,
                  model_dir=str(tmp_path / "run")).run()
    assert res["data"]["skipped_bad_images"] == 1


def test_one_decoded_size_limit_for_every_decode_path(tmp_path):
    from ssl_tf.export import export_encoder, load_feature_extractor
    from ssl_tf.models import build_backbone
    bomb = _png_bomb()
    os.makedirs(tmp_path / "f" / "a")
    with open(tmp_path / "f" / "a" / "bomb.png", "wb") as f:
        f.write(bomb)
    with pytest.raises(SSLTFError, match="declares over 178,956,970 pixels, more than the 89,478,485"):
        sources._read_image(str(tmp_path / "f" / "a" / "bomb.png"), "--dataset")
    path = export_encoder(build_backbone("resnet10", width=0.0625, image_size=16), str(tmp_path / "export"), 16)
    fx = load_feature_extractor(path)
    with pytest.raises(SSLTFError, match="encoded image 0 declares 196,000,000 pixels"):
        fx.from_bytes([bomb])
    import tensorflow as tf
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than"):   # the serving signature itself
        fx.model.signatures["serve_bytes"](encoded=tf.constant([bomb]))
    buf = io.BytesIO()
    Image.new("RGB", (20, 20)).save(buf, "PNG")
    assert fx.from_bytes([buf.getvalue()]).shape[0] == 1                   # a normal image still passes


# -- misdiagnoses -----------------------------------------------------------------------------------------------

def test_a_full_disk_is_named_and_the_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import tensorflow as tf
    ckpt = tf.train.Checkpoint(v=tf.Variable(1.0))
    manager = checkpoints.AtomicCheckpoints(ckpt, str(tmp_path / "ck"), 2)

    def full(*a, **k):
        raise OSError(28, "No space left on device", str(tmp_path / "ck" / "x"))
    monkeypatch.setattr(ckpt, "write", full)
    with pytest.raises(SSLTFError, match=r"the disk is full \([0-9.]+ MB free at .*\).*previous checkpoint is intact"):
        manager.save(1)
    assert not [n for n in os.listdir(tmp_path / "ck") if n.startswith(".tmp-ckpt-")]
    from ssl_tf import cli

    def main(argv, flag_values=None):
        raise tf.errors.ResourceExhaustedError(None, None, f"{tmp_path}/f; No space left on device")
    monkeypatch.setattr(cli, "main", main)
    with pytest.raises(SystemExit) as exit_:
        cli._main_with_errors(["ssl-tf"])
    assert exit_.value.code == 2


def test_labels_far_beyond_the_classes_are_refused(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((3, 8, 8, 3), np.uint8), labels=np.array([0, 1, 999_999]))
    with pytest.raises(SSLTFError, match="'labels' has the value 999999 but only 3 distinct classes"):
        sources.load_dataset(f"npz:{tmp_path / 'x.npz'}")


# -- tracebacks where one line is promised ----------------------------------------------------------------------

def test_a_model_dir_that_is_a_file_or_read_only_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SSLTFError, match="is a file, not a directory"):
        _runner(mode="pretrain", dataset="shapes:32,8", model_dir=str(tmp_path / "file"))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p).endswith("ro") else real(p, m))
    (tmp_path / "ro").mkdir()
    with pytest.raises(SSLTFError, match="not writable"):
        _runner(mode="pretrain", dataset="shapes:32,8", model_dir=str(tmp_path / "ro"))


def test_numeric_flags_refuse_non_finite_values_and_eval_batch_is_checked_up_front():
    for name, value in [("learning_rate", float("inf")), ("momentum", float("nan")), ("width", float("inf")),
                        ("target_momentum", float("nan")), ("probe_lr", float("-inf"))]:
        kw = {"method": "byol"} if name == "target_momentum" else {}
        with pytest.raises(SSLTFError, match=f"^--{name}="):
            config.resolve(config.Config(dataset="npz:x.npz", **{name: value}, **kw), 32)
    with pytest.raises(SSLTFError, match="^--eval_batch_size=0"):
        config.resolve(config.Config(dataset="npz:x.npz", eval_batch_size=0), 32)


def test_damaged_run_files_end_in_one_line(tmp_path):
    run = tmp_path / "run"
    _runner(mode="pretrain", dataset="shapes:32,8", model_dir=str(run), checkpoint_every=1).run()
    shutil.copytree(run, tmp_path / "copy")
    (run / "results.json").write_text('{"pretrain": {"st')
    with pytest.raises(SSLTFError, match=r"results.json: not readable as JSON"):
        _runner(mode="pretrain", dataset="shapes:32,8", model_dir=str(run))
    latest = checkpoints.latest(str(tmp_path / "copy" / "pretrain"))
    data = next(p for p in os.listdir(os.path.dirname(latest)) if ".data-" in p)
    with open(os.path.join(os.path.dirname(latest), data), "r+b") as f:
        f.truncate(10)
    with pytest.raises(SSLTFError, match=r"cannot be read, it is damaged .*delete it to resume from step 1"):
        _runner(mode="pretrain", dataset="shapes:32,8", model_dir=str(tmp_path / "copy"), max_steps=4).run()


def test_npz_members_that_are_not_arrays_are_refused(tmp_path):
    import zipfile
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("images", b"raw bytes, not .npy")
    with pytest.raises(SSLTFError, match="member 'images' is not a NumPy array"):
        sources.load_dataset(f"npz:{path}")


def test_feature_extractor_refuses_damaged_exports_ragged_lists_and_none(tmp_path):
    from ssl_tf.export import export_encoder, load_feature_extractor
    from ssl_tf.models import build_backbone
    path = export_encoder(build_backbone("resnet10", width=0.0625, image_size=16), str(tmp_path / "e"), 16)
    fx = load_feature_extractor(path)
    with pytest.raises(SSLTFError, match="is ragged"):
        fx([np.zeros((16, 16, 3), np.uint8), np.zeros((20, 16, 3), np.uint8)])
    with pytest.raises(SSLTFError, match="dtype object"):
        fx(None)
    with pytest.raises(SSLTFError, match="expected a directory path, got NoneType"):
        load_feature_extractor(None)
    with open(os.path.join(path, "saved_model.pb"), "wb") as f:
        f.write(b"\x00garbage")
    with pytest.raises(SSLTFError, match="cannot be loaded, the SavedModel is damaged"):
        load_feature_extractor(path)


# -- the command line's contract --------------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [(["--methd=simclr"], "Did you mean: method"),
                                        (["--method=nope"], "--method=nope"),
                                        (["--batch_size=abc"], "--batch_size=abc")])
def test_flag_mistakes_are_one_line_with_exit_status_2(cli_in_process, args, says):
    code, _, err = cli_in_process(*args)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("ssl-tf")]
    assert len(lines) == 1 and lines[0].startswith("ssl-tf: error: ") and says in lines[0], err
    assert "FATAL" not in err


# -- concurrency and ordering -----------------------------------------------------------------------------------

def test_a_run_directory_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    import socket

    from ssl_tf.runner import lock
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / lock.NAME).write_text(f"{socket.gethostname()} {other.pid}\n")
        with pytest.raises(SSLTFError, match=f"in use by process {other.pid}"):
            _runner(mode="pretrain", dataset="shapes:32,8", model_dir=str(run)).run()
    finally:
        other.kill()
        other.wait()
    runner = _runner(mode="pretrain", dataset="shapes:32,8", model_dir=str(run))
    with runner.locked():                                                 # its process is gone: taken over
        assert (run / lock.NAME).read_text().split() == [socket.gethostname(), str(os.getpid())]
        runner.run()                                                      # held by this run: re-entered
    assert not (run / lock.NAME).exists()                                 # released when the run ends


def test_every_requested_mode_is_checked_before_training(tmp_path):
    np.savez(tmp_path / "u.npz", images=np.zeros((40, 16, 16, 3), np.uint8))    # no labels
    runner = _runner(mode="all", dataset=f"npz:{tmp_path / 'u.npz'}", model_dir=str(tmp_path / "run"))
    with pytest.raises(SSLTFError, match="--mode=linear_eval needs labelled training data"):
        runner.run()
    assert not (tmp_path / "run" / "pretrain").exists()                       # nothing trained first
