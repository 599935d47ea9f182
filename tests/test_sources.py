import os

import numpy as np
import pytest
from PIL import Image

from ssl_tf.data import shapes, sources
from ssl_tf.errors import SSLTFError


def test_shapes_is_deterministic_balanced_and_not_linearly_trivial():
    x1, y1 = shapes.generate(200, seed=3)
    x2, y2 = shapes.generate(200, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (200, 32, 32, 3) and x1.dtype == np.uint8
    assert np.all(np.bincount(y1, minlength=10) == 20)
    x3, _ = shapes.generate(200, seed=4)
    assert not np.array_equal(x1, x3)
    # colour is random per image: per-class mean colours are close to each other
    class_means = np.stack([x1[y1 == k].mean(axis=(0, 1, 2)) for k in range(10)])
    assert class_means.std(axis=0).max() < 20


def test_shapes_spec_sizes_and_bad_spec():
    tr, ev = sources.load_source("shapes:30,20")
    assert len(tr) == 30 and len(ev) == 20 and tr.num_classes == 10
    with pytest.raises(SSLTFError, match="shapes:TRAIN,EVAL"):
        sources.load_source("shapes:abc")


def _npz(tmp_path, name="d.npz", n=40, **arrays):
    rng = np.random.default_rng(0)
    data = dict(images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), labels=np.arange(n) % 4)
    data.update(arrays)
    path = tmp_path / name
    np.savez(path, **data)
    return str(path)


def test_npz_loads_and_carves_a_stratified_validation_split(tmp_path):
    path = _npz(tmp_path)                      # 40 images, 10 per class
    splits = sources.load_dataset(f"npz:{path}", val_fraction=0.2, seed=0)
    assert len(splits.train) == 32 and len(splits.eval) == 8 and splits.num_classes == 4
    assert np.bincount(splits.eval.labels).tolist() == [2, 2, 2, 2]
    # carved examples are real rows of the file: none lost, none duplicated
    rows = {r.tobytes() for r in np.concatenate([splits.train.images, splits.eval.images]).reshape(40, -1)}
    assert rows == {r.tobytes() for r in np.load(path)["images"].reshape(40, -1)}


def test_eval_dataset_replaces_carving(tmp_path):
    train = _npz(tmp_path, "train.npz")
    test = _npz(tmp_path, "test.npz", n=12)
    splits = sources.load_dataset(f"npz:{train}", eval_spec=f"npz:{test}")
    assert len(splits.train) == 40 and len(splits.eval) == 12


def test_npz_grayscale_is_converted(tmp_path):
    path = _npz(tmp_path, images=np.zeros((40, 8, 8), np.uint8))
    tr, _ = sources.load_source(f"npz:{path}")
    assert tr.images.shape == (40, 8, 8, 3)


@pytest.mark.parametrize("arrays,match", [
    (dict(pixels=np.zeros((2, 4, 4, 3), np.uint8)), "expected 'images'"),
    (dict(images=np.zeros((2, 4, 4, 3), np.float32), labels=np.zeros(2, np.int64)), "dtype float32"),
    (dict(images=np.zeros((2, 4, 4, 5), np.uint8), labels=np.zeros(2, np.int64)), "shape"),
    (dict(images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.zeros(3, np.int64)), "labels"),
])
def test_npz_bad_contents_name_the_file_and_problem(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(SSLTFError, match=match) as e:
        sources.load_source(f"npz:{path}")
    assert "bad.npz" in str(e.value) and "\n" not in str(e.value)


def test_npz_object_arrays_are_never_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, images=np.array([object(), object()], dtype=object), labels=np.zeros(2))
    with pytest.raises(SSLTFError, match="without pickle"):
        sources.load_source(f"npz:{path}")


def test_missing_paths_and_unknown_kinds():
    with pytest.raises(SSLTFError, match="no such file"):
        sources.load_source("npz:/nonexistent/x.npz")
    with pytest.raises(SSLTFError, match="no such directory"):
        sources.load_source("folder:/nonexistent/dir")
    with pytest.raises(SSLTFError, match="accepted: shapes"):
        sources.load_source("csv:foo")


def _write_images(folder, n, mode="RGB", ext="png", size=(10, 12)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
        arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
        Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(os.path.join(folder, f"{i}.{ext}"))


def test_folder_with_class_subfolders_mixed_formats_and_modes(tmp_path):
    _write_images(tmp_path / "cat", 3, "RGB", "png")
    _write_images(tmp_path / "dog", 2, "L", "jpg")
    _write_images(tmp_path / "emu", 2, "RGBA", "png")
    _write_images(tmp_path / "emu", 1, "RGB", "bmp")
    (tmp_path / "notes.txt").write_text("not an image")
    tr, ev = sources.load_source(f"folder:{tmp_path}")
    assert ev is None and tr.num_classes == 3
    assert tr.images.shape == (8, 12, 10, 3) and tr.images.dtype == np.uint8
    assert tr.labels.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]


def test_flat_folder_is_unlabelled_and_mixed_sizes_are_resized(tmp_path):
    _write_images(tmp_path, 2, size=(10, 12))
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "big.gif")
    tr, _ = sources.load_source(f"folder:{tmp_path}", image_size=8)
    assert tr.images.shape == (3, 8, 8, 3) and (tr.labels == -1).all() and not tr.labelled
    assert sources.load_dataset(f"folder:{tmp_path}", image_size=8).eval is None   # nothing to carve


def test_empty_folder_and_corrupt_image_errors_name_the_path(tmp_path):
    with pytest.raises(SSLTFError, match="holds no images"):
        sources.load_source(f"folder:{tmp_path}")
    _write_images(tmp_path / "a", 2)
    _write_images(tmp_path / "b", 2)
    bad = tmp_path / "a" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(SSLTFError, match="broken.png") as e:
        sources.load_source(f"folder:{tmp_path}")
    assert "cannot decode" in str(e.value)


def test_tfds_source_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=12):
        train, held = sources.load_source("tfds:cifar10")
        assert len(train) == 12 and len(held) == 12 and train.num_classes == 10
        image, label = next(iter(train.as_dataset()))
        assert image.shape == (32, 32, 3) and image.dtype.name == "uint8"
        sub = train.subset(np.array([1, 3, 5]))
        assert [int(y) for _, y in sub.as_dataset()] == train.labels[[1, 3, 5]].tolist()
        splits = sources.load_dataset("tfds:cifar10", val_fraction=0.5)
        assert splits.eval.name.endswith("[test]")


def test_tfds_offline_fails_fast_with_data_dir_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "network_available", lambda *a, **k: False)
    with pytest.raises(SSLTFError, match="--data_dir"):
        sources.load_source("tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(SSLTFError, match="unknown tfds dataset"):
        sources.load_source("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))


def test_npz_corrupt_truncated_and_bad_labels_are_one_line_errors(tmp_path):
    good = _npz(tmp_path)
    cases = {"random.npz": os.urandom(300), "empty.npz": b"", "truncated.npz": open(good, "rb").read()[:200]}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SSLTFError, match="not a readable .npz") as e:
            sources.load_source(f"npz:{tmp_path / name}")
        assert name in str(e.value) and "\n" not in str(e.value)
    path = _npz(tmp_path, "neg.npz", labels=np.array([-3] + [0] * 39))
    with pytest.raises(SSLTFError, match="value -3"):
        sources.load_source(f"npz:{path}")
    path = _npz(tmp_path, "float_labels.npz", labels=np.zeros(40, np.float32))
    with pytest.raises(SSLTFError, match="expected 40 integers"):
        sources.load_source(f"npz:{path}")


def _bad_files(folder):
    """A truncated JPEG, a corrupt PNG, a zero-byte file and a text file named like an image, plus a
    text file without an image extension — all inside a class folder."""
    buf = open(os.path.join(folder, "0.jpg"), "rb").read()
    (folder / "truncated.jpg").write_bytes(buf[:len(buf) // 2])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.jpeg").write_text("hello")
    (folder / "labels.csv").write_text("a,b")
    return ["truncated.jpg", "corrupt.png", "zero.png", "text.jpeg", "labels.csv"]


def test_folder_bad_files_are_one_line_errors_or_counted_skips(tmp_path):
    _write_images(tmp_path / "a", 3, "RGB", "jpg", size=(40, 40))
    _write_images(tmp_path / "b", 2, "RGB", "png")
    names = _bad_files(tmp_path / "a")
    for name in names:   # each bad file alone is named in a one-line error
        others = [n for n in names if n != name]
        for n in others:
            os.rename(tmp_path / "a" / n, tmp_path / ("." + n))   # hidden files are ignored
        with pytest.raises(SSLTFError, match="skip_bad_images") as e:
            sources.load_source(f"folder:{tmp_path}")
        assert name in str(e.value) and "\n" not in str(e.value)
        for n in others:
            os.rename(tmp_path / ("." + n), tmp_path / "a" / n)
    logs = []
    tr, _ = sources.load_source(f"folder:{tmp_path}", skip_bad_images=True, log=logs.append)
    assert len(tr) == 5 and tr.skipped == 5 and tr.labels.tolist() == [0, 0, 0, 1, 1]
    assert any("skipped 5" in line for line in logs)
    splits = sources.load_dataset(f"folder:{tmp_path}", skip_bad_images=True, log=logs.append)
    assert len(splits.train) + len(splits.eval) == 5


def test_folder_converts_cmyk_16bit_grayscale_palette_and_alpha(tmp_path):
    d = tmp_path / "a"
    d.mkdir()
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(d / "cmyk.jpg")                  # no ink: white
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(d / "gray16.png")      # 16-bit white
    Image.fromarray(np.full((8, 8), 100, np.uint8), "L").save(d / "gray.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(d / "transparent.png")         # composited on white
    Image.new("P", (8, 8), 0).save(d / "palette.gif")
    _write_images(tmp_path / "b", 1)
    tr, _ = sources.load_source(f"folder:{tmp_path}")
    assert tr.images.dtype == np.uint8 and tr.images.shape[-1] == 3 and len(tr) == 6
    by_name = dict(zip(sorted(os.listdir(d)), tr.images[:5]))
    assert by_name["cmyk.jpg"].min() >= 250
    assert (by_name["gray16.png"] == 255).all()
    assert (by_name["gray.png"] == 100).all()
    assert (by_name["transparent.png"] == 255).all()


def test_folder_with_one_class_or_images_beside_classes_is_an_error(tmp_path):
    _write_images(tmp_path / "only", 3)
    with pytest.raises(SSLTFError, match="one class subfolder"):
        sources.load_source(f"folder:{tmp_path}")
    _write_images(tmp_path / "other", 2)
    Image.new("RGB", (10, 12)).save(tmp_path / "stray.png")
    with pytest.raises(SSLTFError, match="stray.png lies beside the class subfolders"):
        sources.load_source(f"folder:{tmp_path}")
    logs = []
    tr, _ = sources.load_source(f"folder:{tmp_path}", skip_bad_images=True, log=logs.append)
    assert len(tr) == 5 and tr.skipped == 1


def test_label_fraction_never_leaves_a_class_empty():
    from ssl_tf.data import subsets
    labels = np.repeat(np.arange(7), [1, 2, 3, 50, 5, 8, 100])
    for fraction in (0.001, 0.01, 0.1):
        kept = subsets.label_fraction(labels, fraction, seed=1)
        assert set(labels[kept]) == set(range(7))
    tr, va = subsets.stratified_split(labels, 0.5, seed=0)
    assert set(labels[tr]) == set(range(7))   # a class of one example stays in train
