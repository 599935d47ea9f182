"""Atomic, kill-safe checkpoints.

A checkpoint of step N is the directory ``<dir>/ckpt-N/`` holding the TensorFlow checkpoint
``ckpt.index`` + ``ckpt.data-*``. It is written under a temporary name, flushed to disk and
renamed into place, so a directory called ``ckpt-N`` is always complete: a ``kill -9`` during
a save leaves the previous checkpoint as the latest, and the half-written temporary is
removed by the next save. No pointer file can disagree with the directories.

Under MultiWorkerMirroredStrategy every worker writes (as TensorFlow requires), but only the
chief keeps its copy; the others write to a private temporary directory and delete it.
"""
from __future__ import annotations

import json
import os
import re
import shutil

import tensorflow as tf

from ssl_tf.errors import SSLTFError

_NAME = re.compile(r"^ckpt-(\d+)$")
PREFIX = "ckpt"
METADATA = "metadata.json"


def _fsync_tree(path: str) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def steps(directory: str) -> list[int]:
    """Steps of the complete checkpoints in ``directory``, ascending."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m and os.path.exists(os.path.join(directory, name, PREFIX + ".index")):
            found.append(int(m.group(1)))
    return sorted(found)


def metadata(path: str) -> dict:
    """The JSON metadata saved with the checkpoint ``path`` (a prefix), or {}."""
    try:
        with open(os.path.join(os.path.dirname(path), METADATA)) as f:
            data = json.load(f)
    except (OSError, ValueError):   # missing or damaged: the checkpoint itself is what matters
        return {}
    return data if isinstance(data, dict) else {}


def path_of(directory: str, step: int) -> str:
    return os.path.join(directory, f"ckpt-{step}", PREFIX)


def latest(directory: str) -> str | None:
    """The checkpoint prefix of the newest complete checkpoint in ``directory`` (or None)."""
    found = steps(directory)
    if found:
        return path_of(directory, found[-1])
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None  # pre-0.6 runs


def resolve(path: str) -> str | None:
    """A checkpoint prefix from a run's checkpoint directory, a ``ckpt-N`` directory or a prefix."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, PREFIX + ".index")):
            return os.path.join(path, PREFIX)
        return latest(path)
    return path if os.path.exists(path + ".index") else None


def pretraining_checkpoint(path: str) -> str | None:
    """The checkpoint prefix ``path`` names: a run directory (its ``pretrain/`` if it has one), a
    checkpoint directory (its latest), a ``ckpt-N`` directory or a prefix; None if there is none."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, PREFIX + ".index")):
        nested = os.path.join(path, "pretrain")
        return latest(nested if os.path.isdir(nested) else path)
    return resolve(path)


def read_encoder(encoder, checkpoint: str, attr: str = "encoder") -> None:
    """Restore ``encoder`` from a pretraining ``checkpoint`` (a prefix), where the method that wrote
    it kept it as ``attr`` (``model.<attr>``); raises TensorFlow's error if it does not match."""
    status = tf.train.Checkpoint(model=tf.train.Checkpoint(**{attr: encoder})).read(checkpoint)
    status.expect_partial().assert_existing_objects_matched()


def describe_write_error(e: Exception, path: str | None = None) -> str:
    """A write failure in a few words: a full disk (with the free space left) told apart from the rest."""
    text = str(e)
    if "No space left" in text or getattr(e, "errno", None) == 28:
        where = path or _path_in(text) or "."
        try:
            free = shutil.disk_usage(where if os.path.isdir(where) else os.path.dirname(where) or ".").free
            return f"the disk is full ({free / 2 ** 20:.1f} MB free at {where}); free space or use another --model_dir"
        except OSError:
            return "the disk is full; free space or use another --model_dir"
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else 'no message'}"


def _path_in(text: str) -> str | None:
    for word in text.replace(",", " ").split():
        if word.startswith("/"):
            return os.path.dirname(word.rstrip(":;'\""))
    return None


class AtomicCheckpoints:
    """Save and find ``tf.train.Checkpoint`` states of a training loop, keeping the newest ``keep``."""

    def __init__(self, checkpoint: tf.train.Checkpoint, directory: str, keep: int = 3, *,
                 is_chief: bool = True, worker: int = 0):
        if keep < 1:
            raise SSLTFError(f"--keep_checkpoints={keep}: must be >= 1")
        self.checkpoint, self.directory, self.keep = checkpoint, directory, keep
        self.is_chief, self.worker = is_chief, worker
        os.makedirs(directory, exist_ok=True)

    @property
    def latest(self) -> str | None:
        return latest(self.directory)

    def restore(self, path: str):
        return self.checkpoint.read(path)

    def save(self, step: int, metadata: dict | None = None) -> str:
        """Write the checkpoint of ``step`` (with ``metadata`` as JSON beside it) atomically."""
        tmp = os.path.join(self.directory, f".tmp-ckpt-{step}-worker{self.worker}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            written = self.checkpoint.write(os.path.join(tmp, PREFIX))
            if metadata is not None and self.is_chief:
                with open(os.path.join(tmp, METADATA), "w") as f:
                    json.dump(metadata, f)
        except (OSError, tf.errors.OpError) as e:
            shutil.rmtree(tmp, ignore_errors=True)   # a failed save leaves nothing behind (a full disk stays usable)
            raise SSLTFError(f"checkpoint of step {step} in {self.directory} not written: {describe_write_error(e)}; "
                             f"the previous checkpoint is intact: {self.latest or 'none'}") from None
        if not self.is_chief:
            shutil.rmtree(tmp, ignore_errors=True)
            return written
        _fsync_tree(tmp)
        final = os.path.join(self.directory, f"ckpt-{step}")
        if os.path.exists(final):   # re-saving a step (resumed with another --max_steps): same contents
            trash = final + f".old-{os.getpid()}"
            os.replace(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.directory)
        self._prune()
        return path_of(self.directory, step)

    def _prune(self):
        for old in steps(self.directory)[:-self.keep]:
            shutil.rmtree(os.path.join(self.directory, f"ckpt-{old}"), ignore_errors=True)
        # Temporaries of this worker's killed saves (other workers' may be in flight), replaced steps.
        for name in os.listdir(self.directory):
            if (name.startswith(".tmp-ckpt-") and f"-worker{self.worker}-" in name) or ".old-" in name:
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
