"""Data sources: ``--dataset`` / ``--eval_dataset`` specs to uint8 images and integer labels.

Specs:
  ``shapes`` or ``shapes:TRAIN,EVAL``  the built-in generated dataset (default 10000,2000)
  ``npz:PATH``                        arrays ``images`` uint8 [N,H,W,3] (or [N,H,W] / [N,H,W,1]) and ``labels`` [N]
  ``folder:PATH``                     class subfolders (labelled) or a flat folder of images (unlabelled)
  ``tfds:NAME[:SPLIT]``               a tensorflow-datasets image-classification dataset

Every source gives ``Examples``: in memory (``images`` array) or streamed (``stream``, a
function returning a ``tf.data.Dataset`` of (image, label) in a fixed order). Labels are
always held in memory (-1 = unlabelled) so splits and label fractions are exact.
"""
from __future__ import annotations

import dataclasses
import os
import socket
import warnings
import zipfile
from typing import TYPE_CHECKING, Callable

import numpy as np

from ssl_tf.data import shapes, subsets
from ssl_tf.errors import SSLTFError

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# One decoded-size limit for every decode path (folder:, FeatureExtractor.from_bytes, the exported
# serve_bytes signature): PIL's own decompression-bomb threshold, about 9459 × 9459 pixels.
MAX_IMAGE_PIXELS = 89_478_485
SOURCE_KINDS = ("shapes", "npz:PATH", "folder:PATH", "tfds:NAME[:SPLIT]")


@dataclasses.dataclass
class Examples:
    """One split of a dataset: uint8 RGB images and int64 labels (-1 = unlabelled)."""
    name: str
    labels: np.ndarray
    num_classes: int
    images: np.ndarray | None = None                 # in memory: [N, H, W, 3] uint8
    stream: Callable[[], "tf.data.Dataset"] | None = None  # streamed: (image, label) in source order
    keep: np.ndarray | None = None                   # streamed subset: sorted source indices
    skipped: int = 0                                 # bad files skipped by --skip_bad_images
    class_names: tuple[str, ...] | None = None       # label k's name, where the source has names

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())

    def subset(self, indices: np.ndarray, name: str | None = None) -> "Examples":
        indices = np.asarray(indices, dtype=np.int64)
        if self.images is not None:
            return dataclasses.replace(self, name=name or self.name, labels=self.labels[indices],
                                       images=self.images[indices])
        base = indices if self.keep is None else self.keep[indices]
        return dataclasses.replace(self, name=name or self.name, labels=self.labels[indices], keep=base)

    def as_dataset(self):
        """(uint8 image, int64 label) in order, as a ``tf.data.Dataset``."""
        import tensorflow as tf
        if self.images is not None:
            return tf.data.Dataset.from_tensor_slices((self.images, self.labels))
        ds = self.stream()
        if self.keep is not None:
            mask = np.zeros(int(self.keep.max()) + 1 if len(self.keep) else 1, dtype=bool)
            mask[self.keep] = True
            mask_t = tf.constant(mask)
            limit = len(mask)
            ds = ds.enumerate().filter(
                lambda i, ex: tf.logical_and(i < limit, tf.gather(mask_t, tf.minimum(i, limit - 1))))
            ds = ds.map(lambda i, ex: ex)
        return ds


@dataclasses.dataclass
class DatasetSplits:
    train: Examples
    eval: Examples | None
    num_classes: int


# ----------------------------------------------------------------------------- parsing

def parse_spec(spec: str, flag: str = "--dataset") -> tuple[str, str]:
    if not spec:
        raise SSLTFError(f"{flag} is empty; accepted: {', '.join(SOURCE_KINDS)}")
    kind, _, arg = spec.partition(":")
    if kind not in ("shapes", "npz", "folder", "tfds"):
        raise SSLTFError(f"{flag}={spec}: unknown source '{kind}'; accepted: {', '.join(SOURCE_KINDS)}")
    if kind != "shapes" and not arg:
        raise SSLTFError(f"{flag}={spec}: '{kind}:' needs a {'NAME' if kind == 'tfds' else 'PATH'}")
    return kind, arg


def load_source(spec: str, *, flag: str = "--dataset", data_dir: str | None = None, seed: int = 0,
                image_size: int | None = None, skip_bad_images: bool = False,
                log=print) -> tuple[Examples, Examples | None]:
    """Return (train, eval-or-None) for one spec. ``eval`` is the source's own held-out split."""
    kind, arg = parse_spec(spec, flag)
    if kind == "shapes":
        return _load_shapes(arg, flag, seed)
    if kind == "npz":
        return _load_npz(arg, flag), None
    if kind == "folder":
        return _load_folder(arg, flag, image_size, skip_bad_images, log), None
    return _load_tfds(arg, flag, data_dir)


def load_dataset(spec: str, *, eval_spec: str | None = None, data_dir: str | None = None,
                 val_fraction: float = 0.1, seed: int = 0, image_size: int | None = None,
                 skip_bad_images: bool = False, log=print) -> DatasetSplits:
    """Train split of ``spec`` and an eval split: ``eval_spec``'s data, else the source's own
    held-out split, else a stratified ``val_fraction`` carved from train with ``seed``."""
    train, held = load_source(spec, data_dir=data_dir, seed=seed, image_size=image_size,
                              skip_bad_images=skip_bad_images, log=log)
    if eval_spec:
        ev_train, ev_held = load_source(eval_spec, flag="--eval_dataset", data_dir=data_dir,
                                        seed=seed + 1, image_size=image_size, skip_bad_images=skip_bad_images,
                                        log=log)
        held = ev_held if ev_held is not None else ev_train
        if not held.labelled:
            raise SSLTFError(f"--eval_dataset={eval_spec}: has no labels; an evaluation set needs labels")
    elif held is None and train.labelled:
        tr, va = subsets.stratified_split(train.labels, val_fraction, seed)
        if len(va) == 0:
            raise SSLTFError(f"--dataset={spec}: {len(train)} labelled images, too few to carve a validation split "
                             f"of --val_fraction={val_fraction} (no class has 2 images); pass --eval_dataset")
        train, held = train.subset(tr, train.name + "[train]"), train.subset(va, train.name + "[val]")
        held = dataclasses.replace(held, skipped=0)   # the bad files were counted once, with train
    if eval_spec and train.num_classes:
        held = match_classes(train, held, spec, eval_spec)
    num_classes = max(train.num_classes, held.num_classes if held is not None else 0)
    return DatasetSplits(train=train, eval=held, num_classes=num_classes)


def match_classes(train: Examples, held: Examples, spec: str, eval_spec: str) -> Examples:
    """``held`` with its labels in ``train``'s numbering: by class name where both sources name
    their classes (folders, tfds), else by index, refusing labels that have no training class."""
    where = f"--eval_dataset={eval_spec}"
    if train.class_names and held.class_names:
        index = {name: k for k, name in enumerate(train.class_names)}
        used = sorted({held.class_names[k] for k in np.unique(held.labels[held.labels >= 0])})
        unknown = [n for n in used if n not in index]
        if unknown:
            raise SSLTFError(f"{where}: classes {', '.join(unknown[:5])} are not classes of --dataset={spec} "
                             f"({', '.join(train.class_names[:8])}{', …' if len(train.class_names) > 8 else ''}); "
                             "evaluation classes are matched to training classes by name")
        mapping = np.array([index.get(n, -1) for n in held.class_names], np.int64)
        labels = np.where(held.labels >= 0, mapping[np.maximum(held.labels, 0)], -1)
        return dataclasses.replace(held, labels=labels, num_classes=train.num_classes,
                                   class_names=train.class_names)
    if held.num_classes > train.num_classes:
        raise SSLTFError(f"{where}: has labels up to {held.num_classes - 1}, but --dataset={spec} has "
                         f"{train.num_classes} classes (0..{train.num_classes - 1}); the two label sets must "
                         "correspond")
    return held


def _check_label_range(labels: np.ndarray, where: str) -> None:
    """Labels are class indices 0..K−1: a few gaps are fine, a label far past the number of distinct
    classes is a mistake (it would size every classifier to it)."""
    if not len(labels) or labels.max() < 0:
        return
    distinct = len(np.unique(labels[labels >= 0]))
    if labels.max() + 1 > max(1000, 10 * distinct):
        raise SSLTFError(f"{where}: 'labels' has the value {labels.max()} but only {distinct} distinct classes; "
                         "expected class indices 0..K-1 (renumber them, e.g. with np.unique(labels, "
                         "return_inverse=True))")


# ----------------------------------------------------------------------------- shapes

def _load_shapes(arg: str, flag: str, seed: int):
    sizes = (10000, 2000)
    if arg:
        try:
            sizes = tuple(int(v) for v in arg.split(","))
            assert len(sizes) == 2 and min(sizes) > 0
        except (ValueError, AssertionError):
            raise SSLTFError(f"{flag}=shapes:{arg}: expected shapes:TRAIN,EVAL with two positive "
                             "integers, e.g. shapes:10000,2000") from None
    tr_x, tr_y = shapes.generate(sizes[0], seed=seed)
    ev_x, ev_y = shapes.generate(sizes[1], seed=seed + 10_000_019)
    n = shapes.NUM_CLASSES
    return (Examples("shapes[train]", tr_y, n, images=tr_x), Examples("shapes[eval]", ev_y, n, images=ev_x))


# ----------------------------------------------------------------------------- npz

def _load_npz(path: str, flag: str) -> Examples:
    where = f"{flag}=npz:{path}"
    if not os.path.isfile(path):
        raise SSLTFError(f"{where}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] != b"PK":   # .npz is a zip archive; never hand anything else to np.load
        raise SSLTFError(f"{where}: not a readable .npz file (not a zip archive of arrays; write it with "
                         "np.savez(path, images=..., labels=...))")
    try:
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.files)
            if "images" not in keys:
                raise SSLTFError(f"{where}: has arrays {sorted(keys)}; expected 'images' (uint8 N×H×W×3) "
                                 "and 'labels' (N integers)")
            images = data["images"]
            labels = data["labels"] if "labels" in keys else None
            for key, value in (("images", images), ("labels", labels)):
                if value is not None and not isinstance(value, np.ndarray):   # a member that is not .npy
                    raise SSLTFError(f"{where}: member '{key}' is not a NumPy array (raw {type(value).__name__}); "
                                     "write the file with np.savez(path, images=..., labels=...)")
    except SSLTFError:
        raise
    except ValueError as e:  # object arrays refuse to load without pickle
        raise SSLTFError(f"{where}: cannot be read without pickle ({e}); save plain numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise SSLTFError(f"{where}: not a readable .npz file ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'empty'})") from None
    if images.dtype != np.uint8:
        raise SSLTFError(f"{where}: 'images' has dtype {images.dtype}; expected uint8 in [0, 255]")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
        raise SSLTFError(f"{where}: 'images' has shape {images.shape}; expected N×H×W×3 (or N×H×W×1, N×H×W) with N > 0")
    if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
    if labels is None:
        labels = np.full(len(images), -1, np.int64)
    else:
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise SSLTFError(f"{where}: 'labels' has shape {labels.shape} and dtype {labels.dtype}; expected "
                             f"{len(images)} integers (one per image)")
        labels = labels.astype(np.int64)
        if len(labels) and labels.min() < -1:
            raise SSLTFError(f"{where}: 'labels' has the value {labels.min()}; expected class indices >= 0 "
                             "(or -1 for an unlabelled image)")
        _check_label_range(labels, where)
    return Examples(f"npz:{os.path.basename(path)}", labels, int(labels.max()) + 1 if len(labels) else 0,
                    images=np.ascontiguousarray(images))


# ----------------------------------------------------------------------------- folder

def _read_image(path: str, flag: str) -> np.ndarray:
    """Decode any PIL-readable file to uint8 RGB: alpha composited on white, palette, grayscale,
    CMYK and 16-bit images converted. Never executes or unpickles anything."""
    from PIL import Image, UnidentifiedImageError

    def bomb(pixels: str) -> str:
        return (f"{flag}: image file {path} declares {pixels} pixels, more than the {MAX_IMAGE_PIXELS:,} ssl_tf "
                "decodes (a decompression bomb?); pass --skip_bad_images to skip such files")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # refused below, in one line
            im = Image.open(path)
        with im:
            if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
                raise SSLTFError(bomb(f"{im.size[0]}×{im.size[1]}"))
            im.load()
            if im.mode in ("RGBA", "LA", "P", "PA", "RGBa", "La"):
                im = im.convert("RGBA")
                canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(canvas, im)
            elif im.mode.startswith("I;16") or im.mode in ("I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 65535.0 if arr.max() > 255 else 255.0
                im = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8))
            image = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:   # PIL refuses twice our limit before we can read the size
        raise SSLTFError(bomb(f"over {2 * MAX_IMAGE_PIXELS:,}")) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SSLTFError(f"{flag}: cannot decode image file {path} ({e.__class__.__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'empty'}); accepted: readable JPEG/PNG/BMP/GIF "
                         "files, or pass --skip_bad_images to skip such files") from None
    if image.ndim != 3 or min(image.shape[:2]) < 1:
        raise SSLTFError(f"{flag}: image file {path} has no pixels (shape {image.shape}); "
                         "pass --skip_bad_images to skip such files")
    return image


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` and centre-crop to size×size."""
    from PIL import Image
    h, w = image.shape[:2]
    scale = size / min(h, w)
    im = Image.fromarray(image).resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    arr = np.asarray(im)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top:top + size, left:left + size]


def _load_folder(path: str, flag: str, image_size: int | None, skip_bad_images: bool = False,
                 log=print) -> Examples:
    """Class subfolders (labels in sorted order) or a flat folder of images (unlabelled).

    Hidden files are ignored. Any other file that is not a readable image stops the load with a
    one-line error naming it — or, with ``skip_bad_images``, is skipped and counted.
    """
    where = f"{flag}=folder:{path}"
    if not os.path.isdir(path):
        raise SSLTFError(f"{where}: no such directory")
    entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
    classes = [e for e in entries if os.path.isdir(os.path.join(path, e))]
    candidates: list[tuple[str, int]] = []
    if classes:
        if len(classes) == 1:
            raise SSLTFError(f"{where}: has one class subfolder ('{classes[0]}'); a labelled folder needs >= 2 "
                             "classes — for unlabelled images put the files directly in the folder")
        stray = [e for e in entries if e not in classes]
        # Images beside the class folders have no class: an error. Other files there (README,
        # label lists) are metadata: ignored, and said.
        candidates += [(os.path.join(path, e), -2) for e in stray if e.lower().endswith(IMAGE_EXTENSIONS)]
        others = [e for e in stray if not e.lower().endswith(IMAGE_EXTENSIONS)]
        if others:
            log(f"{where}: ignored {len(others)} non-image file(s) beside the class folders: {', '.join(others[:3])}")
        for k, c in enumerate(classes):
            for f in sorted(os.listdir(os.path.join(path, c))):
                if not f.startswith("."):
                    candidates.append((os.path.join(path, c, f), k))
    else:
        candidates = [(os.path.join(path, f), -1) for f in entries]
    images, labels, skipped = [], [], []
    for file, label in candidates:
        try:
            if label == -2:
                raise SSLTFError(f"{where}: image {file} lies beside the class subfolders, so it has no class; "
                                 "move it into one or pass --skip_bad_images")
            if os.path.isdir(file):
                raise SSLTFError(f"{where}: {file} is a directory inside a class folder; class folders hold "
                                 "image files only (or pass --skip_bad_images)")
            if not file.lower().endswith(IMAGE_EXTENSIONS):
                raise SSLTFError(f"{where}: {file} is not an image file (accepted extensions: "
                                 f"{', '.join(IMAGE_EXTENSIONS)}); remove it or pass --skip_bad_images")
            images.append(_read_image(file, flag))
            labels.append(label)
        except SSLTFError:
            if not skip_bad_images:
                raise
            skipped.append(file)
    if skipped:
        log(f"{where}: skipped {len(skipped)} unreadable or non-image file(s) (--skip_bad_images), e.g. {skipped[0]}")
    if not images:
        raise SSLTFError(f"{where}: holds no images that can be read ({', '.join(IMAGE_EXTENSIONS)}), neither directly "
                         "nor in class subfolders")
    if classes and len(set(labels)) < 2:
        raise SSLTFError(f"{where}: only class '{classes[labels[0]]}' has readable images; a labelled folder "
                         "needs >= 2 classes")
    if len({im.shape for im in images}) > 1:
        size = image_size or min(min(im.shape[:2]) for im in images)
        images = [_fit(im, size) for im in images]
    labels_arr = np.array(labels, np.int64)
    return Examples(f"folder:{os.path.basename(os.path.normpath(path))}", labels_arr, len(classes),
                    images=np.stack(images), skipped=len(skipped), class_names=tuple(classes) or None)


# ----------------------------------------------------------------------------- tfds

def network_available(host: str = "storage.googleapis.com", port: int = 443, timeout: float = 3.0) -> bool:
    """A quick reachability check, so an offline ``tfds`` download fails in seconds, not minutes."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_tfds(arg: str, flag: str, data_dir: str | None):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise SSLTFError(f"{flag}=tfds:{arg}: tensorflow-datasets cannot be imported ({e})") from None
    import tensorflow as tf
    name, _, split = arg.partition(":")
    where = f"{flag}=tfds:{arg}"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError and friends
        raise SSLTFError(f"{where}: unknown tfds dataset ({str(e).splitlines()[0]})") from None
    info = builder.info
    if "image" not in info.features:
        raise SSLTFError(f"{where}: has no 'image' feature; expected an image-classification dataset")
    if not _tfds_prepared(builder):
        if not network_available():
            raise SSLTFError(f"{where}: not prepared in {builder.data_dir} and tfds cannot download it "
                             "(no network); pass --data_dir with a prepared copy")
        try:
            builder.download_and_prepare()
        except Exception as e:
            raise SSLTFError(f"{where}: download failed ({str(e).splitlines()[0]}); pass --data_dir "
                             "with a prepared copy") from None
    splits = list(info.splits.keys())   # empty for mocked builders: any split name is accepted
    train_split = split or "train"
    for part in train_split.split("+"):
        if splits and part.split("[")[0] not in splits:
            raise SSLTFError(f"{where}: no split '{part}'; available: {', '.join(splits)}")
    has_label = "label" in info.features
    num_classes = info.features["label"].num_classes if has_label else 0
    names = tuple(getattr(info.features["label"], "names", None) or ()) if has_label else ()
    eval_split = next((s for s in ("test", "validation") if s in (splits or ["test"])), None)

    def make(split_name):
        def stream():
            ds = builder.as_dataset(split=split_name, shuffle_files=False)
            return ds.map(lambda ex: (_rgb(ex["image"]),
                                      tf.cast(ex["label"], tf.int64) if has_label else tf.constant(-1, tf.int64)))
        labels = _tfds_labels(builder, split_name, has_label)
        return Examples(f"tfds:{name}[{split_name}]", labels, num_classes, stream=stream,
                        class_names=names or None)
    train = make(train_split)
    held = make(eval_split) if eval_split and not split else None
    return train, held


def _rgb(image):
    import tensorflow as tf
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    elif image.shape[-1] == 4:
        image = image[..., :3]
    return image


def _tfds_prepared(builder) -> bool:
    try:
        return bool(builder.is_prepared())
    except Exception:
        return False


def _tfds_labels(builder, split_name, has_label) -> np.ndarray:
    """Read only the labels of a split (images are not decoded)."""
    import tensorflow_datasets as tfds
    ds = builder.as_dataset(split=split_name, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    if not has_label:
        return np.full(int(ds.reduce(0, lambda n, _: n + 1)), -1, np.int64)
    return np.fromiter((int(ex["label"]) for ex in tfds.as_numpy(ds.map(lambda ex: {"label": ex["label"]}))),
                       dtype=np.int64)
