"""Fuzz: random flag combinations and random corrupted files end in a clean ``SSLTFError`` (the
one-line ``ssl-tf: error: ...``) or in success — never in any other exception.

Three layers, each seeded: flags through absl parsing and ``config.resolve`` (many cases, no
TensorFlow work), data files through ``load_dataset`` (corrupted images and npz files), and a
few complete runs of random method/backbone/flag draws on tiny data.
"""
import io
import os

import numpy as np
import pytest
from absl import flags
from PIL import Image

from ssl_tf import cli, config as config_lib
from ssl_tf.data import sources
from ssl_tf.errors import SSLTFError
from ssl_tf.methods import METHODS

FLAG_CASES = 600
FILE_CASES = 150
RUN_CASES = 4

# Values worth trying per flag type: valid, boundary, invalid and absurd.
INTS = ["0", "1", "2", "3", "-1", "7", "16", "64", "100000", "abc", ""]
FLOATS = ["0", "1", "0.5", "-0.1", "1e-9", "2", "1e9", "nan", "inf", "x"]
STRINGS = ["", "shapes", "shapes:10,5", "npz:/nonexistent.npz", "folder:/nonexistent", "tfds:", "csv:x", "pretrain",
           "all", "linear_eval,knn", "bogus", "shapes:0,0", "shapes:-3,2"]


def _flag_values():
    fv = flags.FlagValues()
    cli.define_flags(fv)
    return fv


def _random_argv(rng, fv):
    names = sorted(fv)
    argv = ["ssl-tf"]
    for name in rng.choice(names, size=int(rng.integers(1, 8)), replace=False):
        flag = fv[name]
        if isinstance(flag, flags.EnumFlag) or hasattr(flag.parser, "enum_values"):
            values = list(flag.parser.enum_values) + ["nonsense"]
        elif isinstance(flag, flags.BooleanFlag):
            argv.append(f"--{'' if rng.random() < 0.5 else 'no'}{name}")
            continue
        elif flag.flag_type() == "int":
            values = INTS
        elif flag.flag_type() == "float":
            values = FLOATS
        else:
            values = STRINGS
        argv.append(f"--{name}={values[int(rng.integers(len(values)))]}")
    return argv


def test_random_flag_combinations_parse_and_resolve_cleanly():
    rng = np.random.default_rng(0)
    outcomes = {"ok": 0, "flag error": 0, "SSLTFError": 0}
    for case in range(FLAG_CASES):
        fv = _flag_values()
        argv = _random_argv(rng, fv)
        try:
            fv(argv)
        except flags.Error as e:   # absl prints these as one line and exits 1
            assert "\n" not in str(e).strip(), argv
            outcomes["flag error"] += 1
            continue
        try:
            cfg = cli.config_from_flags(fv)
            cfg.modes
            config_lib.resolve(cfg, data_image_size=int(rng.choice([16, 32])))
            outcomes["ok"] += 1
        except SSLTFError as e:
            msg = str(e)
            assert "\n" not in msg and msg.startswith(("--", "report")), (argv, msg)
            outcomes["SSLTFError"] += 1
    print("flag fuzz:", FLAG_CASES, "cases", outcomes)
    assert outcomes["ok"] > 20 and outcomes["SSLTFError"] > 20 and outcomes["flag error"] > 20


# ----------------------------------------------------------------------------- files

def _image_bytes(rng, fmt):
    mode = rng.choice(["RGB", "L", "RGBA", "P", "I;16"]) if fmt == "PNG" else \
        rng.choice(["RGB", "L", "CMYK"]) if fmt == "JPEG" else rng.choice(["RGB", "L", "P"])
    size = (int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    else:
        im = Image.new(mode, size)
        im.putdata([tuple(int(v) for v in rng.integers(0, 256, len(mode))) if len(mode) > 1
                    else int(rng.integers(0, 256))
                    for _ in range(size[0] * size[1])] if mode not in ("P", "I;16") else
                   [int(rng.integers(0, 256)) for _ in range(size[0] * size[1])])
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


CORRUPTIONS = ("none", "none", "none", "truncate", "flip_bytes", "zero", "text", "random")


def _corrupt(rng, data, how):
    if how == "truncate":
        return data[:int(rng.integers(0, max(1, len(data) // 2)))]
    if how == "flip_bytes":
        arr = bytearray(data)
        for i in rng.integers(0, len(arr), size=max(1, len(arr) // 20)):
            arr[i] = int(rng.integers(0, 256))
        return bytes(arr)
    if how == "zero":
        return b""
    if how == "text":
        return b"hello, not an image"
    if how == "random":
        return rng.bytes(int(rng.integers(1, 200)))
    return data


def _random_folder(rng, root):
    labelled = rng.random() < 0.6
    classes = [f"c{k}" for k in range(int(rng.integers(1, 4)))] if labelled else [""]
    written = 0
    for c in classes:
        os.makedirs(os.path.join(root, c), exist_ok=True)
        for i in range(int(rng.integers(0, 5))):
            fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp"), ("GIF", "gif")][int(rng.integers(4))]
            how = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
            if rng.random() < 0.1:
                ext = "txt"
            with open(os.path.join(root, c, f"{i}.{ext}"), "wb") as f:
                f.write(_corrupt(rng, _image_bytes(rng, fmt), how))
            written += 1
    return written


def _random_npz(rng, path):
    n = int(rng.integers(0, 6))
    choice = int(rng.integers(9))
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, n)
    arrays = [dict(images=images, labels=labels), dict(pics=images, labels=labels),
              dict(images=images.astype(np.float64), labels=labels), dict(images=images[..., :2], labels=labels),
              dict(images=images, labels=labels[:max(0, n - 1)]), dict(images=images, labels=labels.astype(np.float32)),
              dict(images=np.array([object()] * max(n, 1), dtype=object), labels=labels),
              dict(images=images[:, :, :, 0], labels=labels - 5), dict(images=images)][choice]
    np.savez(path, **arrays)
    if rng.random() < 0.25:
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(_corrupt(rng, data, ["truncate", "flip_bytes", "random"][int(rng.integers(3))]))


def test_random_corrupted_files_load_or_fail_cleanly(tmp_path):
    rng = np.random.default_rng(1)
    outcomes = {"ok": 0, "SSLTFError": 0}
    for case in range(FILE_CASES):
        root = tmp_path / f"case{case}"
        root.mkdir()
        if rng.random() < 0.6:
            _random_folder(rng, str(root))
            spec = f"folder:{root}"
        else:
            _random_npz(rng, str(root / "data.npz"))
            spec = f"npz:{root / 'data.npz'}"
        skip = bool(rng.random() < 0.5)
        try:
            splits = sources.load_dataset(spec, skip_bad_images=skip, image_size=int(rng.choice([8, 16])),
                                          log=lambda *a: None)
        except SSLTFError as e:
            assert "\n" not in str(e) and str(root) in str(e), (spec, str(e))
            outcomes["SSLTFError"] += 1
            continue
        parts = [splits.train] + ([splits.eval] if splits.eval is not None else [])
        for part in parts:
            assert part.images.dtype == np.uint8 and part.images.ndim == 4 and part.images.shape[-1] == 3
            assert len(part.images) == len(part.labels) > 0
        outcomes["ok"] += 1
    print("file fuzz:", FILE_CASES, "cases", outcomes)
    assert outcomes["ok"] > 10 and outcomes["SSLTFError"] > 10


# ----------------------------------------------------------------------------- whole runs

def _random_run(rng, tmp_path, case):
    method = rng.choice(list(METHODS))
    backbone = rng.choice(["resnet18", "resnet18v2", "vgg19", "vit_tiny", "revnet50"])
    c = dict(method=str(method), backbone=str(backbone), mode=str(rng.choice(["pretrain", "pretrain,knn",
                                                                           "pretrain,export"])),
             dataset=str(rng.choice(["shapes:48,16", "shapes:20,8", "shapes:8,8"])),
             image_size=int(rng.choice([8, 16, 24])), width=0.0625, batch_size=int(rng.choice([2, 4, 8, 12, 16])),
             epochs=1, max_steps=1, progress=False, plots=False, random_baseline=False, eval_epochs=1,
             model_dir=str(tmp_path / f"run{case}"), proj_hidden=16, pred_hidden=16, proj_dim=16,
             dino_out_dim=32, queue_size=int(rng.choice([16, 48, 64])), bn_groups=int(rng.choice([1, 2, 3])),
             nce_k=8, head_hidden=16, embed_dim=16, num_permutations=int(rng.choice([10, 100])),
             num_local_crops=int(rng.choice([0, 2])), local_crop_size=int(rng.choice([4, 8, 40])),
             patch_size=int(rng.choice([4, 8, 12])), num_exemplar_copies=int(rng.choice([2, 3, 4])),
             mu=int(rng.choice([1, 2])), label_fraction=float(rng.choice([0.01, 0.5, 1.0])))
    return c


@pytest.mark.slow
def test_random_whole_runs_succeed_or_fail_cleanly(tmp_path):
    from ssl_tf.runner import Runner
    rng = np.random.default_rng(int(os.environ.get("SSL_TF_FUZZ_SEED", "2")))
    outcomes = {"ok": 0, "SSLTFError": []}
    for case in range(int(os.environ.get("SSL_TF_FUZZ_RUNS", RUN_CASES))):
        c = _random_run(rng, tmp_path, case)
        try:
            Runner(config_lib.Config(**c), log=lambda *a: None).run()
            outcomes["ok"] += 1
        except SSLTFError as e:
            assert "\n" not in str(e), (c, str(e))
            outcomes["SSLTFError"].append(str(e)[:90])
        except Exception as e:   # noqa: BLE001
            pytest.fail(f"uncaught {e.__class__.__name__} for {c}: {str(e)[:500]}")
    print("run fuzz:", outcomes["ok"], "ok;", len(outcomes["SSLTFError"]), "clean errors:", outcomes["SSLTFError"])
    assert outcomes["ok"] >= 1


# ----------------------------------------------------------------------------- hostile classes

def test_every_float_flag_refuses_non_finite_values():
    """Each float flag, shared or a method's (with a method that declares it), at ±inf and NaN."""
    from ssl_tf.methods import settings
    fv = _flag_values()
    declared = settings.param_fields()
    floats = [n for n in sorted(fv) if fv[n].flag_type() == "float"]
    assert "learning_rate" in floats and "target_momentum" in floats and "teacher_temperature" in floats
    for name in floats:
        method = declared[name][0][0] if name in declared else "simclr"
        for value in ("inf", "-inf", "nan"):
            fv = _flag_values()
            fv(["ssl-tf", f"--method={method}", "--dataset=npz:x.npz", f"--{name}={value}"])
            with pytest.raises(SSLTFError, match=f"^--{name}="):
                config_lib.resolve(cli.config_from_flags(fv), 32)


def test_random_label_sets_correspond_or_are_refused(tmp_path):
    rng = np.random.default_rng(3)
    outcomes = {"ok": 0, "SSLTFError": 0}
    for case in range(40):
        specs = []
        for part in ("train", "eval"):
            if rng.random() < 0.5:
                root = tmp_path / f"{case}{part}"
                names = list(rng.choice(list("abcdef"), size=int(rng.integers(2, 5)), replace=False))
                for name in names:
                    os.makedirs(root / name)
                    for i in range(3):
                        Image.new("RGB", (8, 8), tuple(int(v) for v in rng.integers(0, 256, 3))).save(
                            root / name / f"{i}.png")
                specs.append(f"folder:{root}")
            else:
                path = tmp_path / f"{case}{part}.npz"
                k = int(rng.integers(2, 12))
                np.savez(path, images=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8),
                         labels=rng.integers(0, k, 12))
                specs.append(f"npz:{path}")
        try:
            splits = sources.load_dataset(specs[0], eval_spec=specs[1], log=lambda *a: None)
        except SSLTFError as e:
            assert "\n" not in str(e) and str(e).startswith("--eval_dataset="), str(e)
            outcomes["SSLTFError"] += 1
            continue
        assert splits.eval.labels.max() < splits.train.num_classes       # every eval label is a training class
        if splits.train.class_names and splits.eval.class_names:
            assert splits.eval.class_names == splits.train.class_names
        outcomes["ok"] += 1
    assert outcomes["ok"] >= 5 and outcomes["SSLTFError"] >= 5, outcomes


RUN_FILES = ("results.json", "pretrain/ckpt-2/ckpt.index", "pretrain/ckpt-2/metadata.json", ".lock", "data")


@pytest.mark.slow
def test_damaged_files_of_a_run_directory_resume_or_fail_cleanly(tmp_path):
    """Every kind of file a run directory holds, truncated, emptied or replaced by noise; then the run is
    resumed (pretrain to step 4, kNN): a clean success or one line."""
    import shutil

    from ssl_tf.runner import Runner
    base = dict(dataset="shapes:32,8", image_size=16, backbone="resnet10", width=0.0625, batch_size=8, epochs=1,
                progress=False, plots=False, random_baseline=False, checkpoint_every=1, log_every=1)
    good = tmp_path / "good"
    Runner(config_lib.Config(mode="pretrain", max_steps=2, model_dir=str(good), **base), log=lambda *a: None).run()
    rng = np.random.default_rng(4)
    outcomes = {"ok": 0, "SSLTFError": []}
    for case, name in enumerate(RUN_FILES * 2):
        run = tmp_path / f"case{case}"
        shutil.copytree(good, run)
        if name == "data":
            ckpt = run / "pretrain" / "ckpt-2"
            name = str(next(p for p in ckpt.iterdir() if ".data-" in p.name).relative_to(run))
        path = run / name
        data = path.read_bytes() if path.exists() else b"host 1"
        path.write_bytes(_corrupt(rng, data, ["truncate", "zero", "random", "text"][case % 4]))
        try:
            Runner(config_lib.Config(mode="pretrain,knn", max_steps=4, model_dir=str(run), **base),
                   log=lambda *a: None).run()
            outcomes["ok"] += 1
        except SSLTFError as e:
            assert "\n" not in str(e), (name, str(e))
            outcomes["SSLTFError"].append(f"{name}: {str(e)[:80]}")
    print("run-directory fuzz:", outcomes)
    assert outcomes["ok"] >= 1 and outcomes["SSLTFError"], outcomes


def test_hostile_images_through_every_decode_path(tmp_path):
    """Corrupt and oversized images through folder:, FeatureExtractor.from_bytes and the serve_bytes
    signature: decoded and right, or refused in one line (the signature: TensorFlow's own error)."""
    import struct
    import zlib

    import tensorflow as tf

    from ssl_tf.export import export_encoder, load_feature_extractor
    from ssl_tf.models import build_backbone

    def png_header(w, h):
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + \
            chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    fx = load_feature_extractor(export_encoder(build_backbone("resnet10", width=0.0625, image_size=16),
                                               str(tmp_path / "e"), 16))
    rng = np.random.default_rng(5)
    cases = [png_header(12000, 12000), png_header(9500, 9500), png_header(60000, 2)]
    cases += [_corrupt(rng, _image_bytes(rng, fmt), how) for fmt in ("PNG", "JPEG", "GIF", "BMP")
              for how in ("none", "truncate", "flip_bytes", "random")]
    for i, data in enumerate(cases):
        path = tmp_path / "f" / "a" / f"{i}.img.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        outcomes = []
        for decode in (lambda: sources._read_image(str(path), "--dataset"), lambda: fx.from_bytes([data])):
            try:
                out = decode()
                assert np.isfinite(np.asarray(out, np.float64)).all()
                outcomes.append("ok")
            except SSLTFError as e:
                assert "\n" not in str(e)
                outcomes.append("refused")
        try:
            fx.model.signatures["serve_bytes"](encoded=tf.constant([data]))
        except tf.errors.InvalidArgumentError:
            pass
        if i < 3:   # declared over the limit: refused on every path, before any decode
            assert outcomes == ["refused", "refused"], (i, outcomes)
