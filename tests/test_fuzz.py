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
RUN_CASES = 8

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
