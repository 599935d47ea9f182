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
            return json.load(f)
    except (OSError, ValueError):
        return {}


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
        written = self.checkpoint.write(os.path.join(tmp, PREFIX))
        if metadata is not None and self.is_chief:
            with open(os.path.join(tmp, METADATA), "w") as f:
                json.dump(metadata, f)
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
