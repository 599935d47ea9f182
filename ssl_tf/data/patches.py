"""Patch grids, tile permutations and the maximal-Hamming permutation set.

Used by relative patch location (Doersch et al. 2015) and jigsaw (Noroozi & Favaro 2016).
``grid_patches`` cuts the 3×3 grid the revisiting code cuts (``crop_patches``): each cell is
``patch_size / (1 - jitter)`` pixels (the image enlarged by an integer factor when it is smaller
than the grid), and each patch is a ``patch_size`` square at a random offset inside its cell —
a random gap of up to ``jitter`` × cell between neighbours, so edges cannot be matched pixel to
pixel (the revisiting configs: 85-pixel cells, 21 pixels of jitter, 64-pixel patches).
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import tensorflow as tf

GRID = 3
CENTRE = 4                    # index of the centre cell in row-major order
NEIGHBOURS = tuple(i for i in range(GRID * GRID) if i != CENTRE)   # label k <-> cell NEIGHBOURS[k]
REVISITING_JITTER = 21 / 85   # fraction of a cell
UPSCALE = "bicubic"


def cell_size(patch_size: int, jitter: float = REVISITING_JITTER) -> int:
    return max(patch_size + 1, int(round(patch_size / (1.0 - jitter))))


def grid_patches(image, seed, patch_size: int, jitter: float = REVISITING_JITTER):
    """float image [H, W, C] -> the 9 patches of a 3×3 grid, [9, P, P, C] in row-major order.

    The grid's side (3 cells) is cut at a random place from the image enlarged by the smallest
    integer factor that covers it, or as it is when it is large enough (the revisiting and VISSL
    pipelines resize the image once, crop 255 and cut 85-pixel cells). It is never resized to the side
    itself: a non-integer factor (32 → 63 px) leaves an interpolation phase that drifts across the image
    and tells a patch where it was cut. ``experiments/patch_position_leak.py`` trains a three-layer CNN
    to name the cell of single patches of uniform noise: 33 % held-out accuracy after 15 epochs (97 % in
    another run) on the image resized to 63 px, chance (11 %) on this grid — measured for the 2× case
    (32 px, 16-px patches). With the default ``--patch_size`` (image/2) the factor is 2 at 32, 64, 96,
    128 and 224 px; at 16 px with 8-px patches it is 3 and the grid covers two thirds of each side.
    """
    cell = cell_size(patch_size, jitter)
    side = GRID * cell
    seeds = tf.random.experimental.stateless_split(seed, 2)
    image = integer_upscale(image, side)
    image = tf.image.stateless_random_crop(image, [side, side, image.shape[-1]], seeds[0])
    return cut_cells(image, seeds[1], cell, patch_size)


def cut_cells(image, seed, cell: int, patch_size: int):
    """[3·cell, 3·cell, C] -> [9, P, P, C]: from each cell (row-major) a ``patch_size`` square at a
    random offset inside it."""
    offsets = tf.random.stateless_uniform([GRID * GRID, 2], seed, 0, cell - patch_size + 1, tf.int32)
    return tf.stack([tf.slice(image, [(i // GRID) * cell + offsets[i, 0], (i % GRID) * cell + offsets[i, 1], 0],
                              [patch_size, patch_size, -1]) for i in range(GRID * GRID)])


def integer_upscale(image, side: int):
    """float [H, W, C] in [0, 1] -> [kH, kW, C] with the smallest integer k ≥ 1 such that
    min(kH, kW) ≥ ``side`` (bicubic, clipped to [0, 1])."""
    hw = tf.shape(image)[:2]
    short = tf.reduce_min(hw)
    k = (side + short - 1) // short
    def enlarge():
        return tf.cast(tf.clip_by_value(tf.image.resize(image, hw * k, method=UPSCALE), 0.0, 1.0), image.dtype)
    return tf.cond(k > 1, enlarge, lambda: image)


def overlapping_side(image_size: int, patch_size: int, stride: int) -> int:
    """Patches per row of the overlapping grid (CPC): (S − P) // stride + 1."""
    return (image_size - patch_size) // stride + 1


def overlapping_grid(images, patch_size: int, stride: int):
    """[B, H, W, C] (or one [H, W, C]) -> [B, G, G, P, P, C] (or [G, G, P, P, C]): the G×G grid of
    P×P patches ``stride`` apart, row-major (CPC: 64 px patches at stride 32 on 256 px, 7×7)."""
    single = images.shape.rank == 3
    x = images[None] if single else images
    c = x.shape[-1]
    flat = tf.image.extract_patches(x, sizes=[1, patch_size, patch_size, 1], strides=[1, stride, stride, 1],
                                    rates=[1, 1, 1, 1], padding="VALID")          # [B, G, G, P·P·C]
    shape = tf.shape(flat)
    grid = tf.reshape(flat, [shape[0], shape[1], shape[2], patch_size, patch_size, c])
    return grid[0] if single else grid


def tile(image, grid: int = GRID):
    """[H, W, C] (H, W divisible by ``grid``) -> [grid², H/grid, W/grid, C], row-major, no gaps."""
    h, w = image.shape[0] // grid, image.shape[1] // grid
    return tf.stack([image[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(grid) for c in range(grid)])


def untile(tiles, grid: int = GRID):
    """Inverse of ``tile``."""
    rows = [tf.concat([tiles[r * grid + c] for c in range(grid)], axis=1) for r in range(grid)]
    return tf.concat(rows, axis=0)


def permute(tiles, perm, axis: int = 0):
    """Tiles in the order ``perm``: position j of the result holds tile ``perm[j]``."""
    return tf.gather(tiles, perm, axis=axis)


def inverse_permutation(perm):
    return tf.math.invert_permutation(perm)


def permute_and_concat(embeddings, perms):
    """[n, T, F] tile embeddings, [m, k] permutations -> [n·m, k·F]: for every image and every
    permutation, the embeddings of tiles perm[0], …, perm[k-1] side by side (image-major)."""
    n, f = tf.shape(embeddings)[0], embeddings.shape[-1]
    m, k = tf.shape(perms)[0], perms.shape[-1]
    gathered = tf.gather(embeddings, perms, axis=1)          # [n, m, k, F]
    return tf.reshape(gathered, [n * m, k * f])


def shuffled_tiles(embeddings, keys):
    """[b, T, F] -> [b, T, F]: each image's T tile embeddings sorted by its own random ``keys`` [b, T]
    (uniform draws give a uniform order per image; PIRL concatenates its tiles so, and cannot learn
    where a tile was)."""
    return tf.gather(embeddings, tf.argsort(keys, axis=-1), batch_dims=1)


# ----------------------------------------------------------------- the permutation set
def hamming_permutations(count: int, length: int = GRID * GRID, seed: int = 0) -> np.ndarray:
    """``count`` permutations of ``length`` chosen greedily for maximal Hamming distance.

    As Noroozi & Favaro's Algorithm 1: start from one random permutation and repeatedly add
    the candidate farthest from the chosen set — here "farthest" is the largest *minimum*
    distance (their algorithm takes the largest summed distance and reports a minimum
    distance of 3 for 1000 permutations; this criterion reaches 5, checked by
    ``min_hamming_distance``). Ties go to the first in a seeded shuffle of all ``length``!
    permutations, so the set is a pure function of (count, seed)."""
    everything = np.array(list(itertools.permutations(range(length))), np.int8)
    if count > len(everything):
        raise ValueError(f"{count} permutations requested but only {len(everything)} exist")
    rng = np.random.default_rng(seed)
    everything = everything[rng.permutation(len(everything))]
    chosen = [0]
    min_dist = (everything != everything[0]).sum(1).astype(np.int16)
    min_dist[0] = -1
    for _ in range(count - 1):
        nxt = int(np.argmax(min_dist))
        chosen.append(nxt)
        np.minimum(min_dist, (everything != everything[nxt]).sum(1), out=min_dist)
        min_dist[chosen] = -1
    return everything[chosen].astype(np.int32)


def min_hamming_distance(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two distinct rows (brute force)."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(d, perms.shape[1] + 1)
    return int(d.min())


def cache_dir() -> str:
    return os.environ.get("SSL_TF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ssl_tf"))


def load_permutations(count: int, seed: int = 0) -> np.ndarray:
    """The maximal-Hamming set of ``count`` 9-tile permutations, generated once and cached
    in ``$SSL_TF_CACHE`` (default ``~/.cache/ssl_tf``)."""
    path = os.path.join(cache_dir(), f"hamming_perms_{count}_seed{seed}.npy")
    if os.path.exists(path):
        perms = np.load(path)
        if perms.shape == (count, GRID * GRID):
            return perms
    perms = hamming_permutations(count, seed=seed)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp.npy"
        np.save(tmp, perms)
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only home: regenerate next time
    return perms
