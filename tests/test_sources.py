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
