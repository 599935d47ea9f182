"""Stratified validation carving and class-balanced label fractions (seeded, pure NumPy)."""
from __future__ import annotations

import numpy as np

from ssl_tf.errors import SSLTFError


def _per_class(labels: np.ndarray, seed: int):
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        yield c, rng.permutation(idx)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, held_out) with ``fraction`` of every class held out.

    Each class with at least two examples gives at least one to each side. Indices come
    back sorted so the source order is kept.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise SSLTFError(f"--val_fraction={fraction}: must be in (0, 1)")
    if (labels < 0).any():
        raise SSLTFError("cannot carve a stratified validation split from unlabelled data: "
                         "pass --eval_dataset with a labelled source")
    train, held = [], []
    for _, idx in _per_class(labels, seed):
        k = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


def label_fraction(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of a class-balanced ``fraction`` of the labelled examples (SimCLR's 1% / 10%).

    Every class keeps ``round(fraction * n_c)`` examples, at least one; a fraction of 1 keeps all.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise SSLTFError(f"--label_fraction={fraction}: must be in (0, 1]")
    labelled = labels >= 0
    if not labelled.any():
        raise SSLTFError("--label_fraction needs labelled training data, but the dataset has no labels")
    if fraction == 1.0:
        return np.flatnonzero(labelled)
    keep = []
    for _, idx in _per_class(labels[labelled], seed):
        keep.append(np.flatnonzero(labelled)[idx[:max(1, int(round(fraction * len(idx))))]])
    return np.sort(np.concatenate(keep))
