"""The built-in ``shapes`` dataset: 10 classes of coloured shapes on textured backgrounds.

Generated deterministically from a seed with NumPy in a few seconds, so the demo and the
tests need no download. Colour, size, position and rotation (±30°) of the shape and the colours,
stripes and noise of the background are random, so raw pixels are a poor linear feature
while a crop- and colour-invariant shape feature separates the classes.
"""
from __future__ import annotations

import numpy as np

CLASS_NAMES = ("circle", "square", "triangle", "star", "cross",
               "ring", "hexagon", "crescent", "heart", "arrow")
NUM_CLASSES = len(CLASS_NAMES)
# Rotation within ±30°: a tiny CNN trained for the demo's ~200 steps learns upright shapes
# (measured, supervised, 120 steps: 97% test top-1 unrotated vs 37% with any rotation).
MAX_ROTATION = np.pi / 6


def _regular_polygon(k: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(k) / k
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _star(points: int = 5, outer: float = 1.0, inner: float = 0.42) -> np.ndarray:
    angles = np.pi / 2 + np.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_ARROW = np.array([[-1.0, -0.25], [0.2, -0.25], [0.2, -0.65], [1.0, 0.0],
                   [0.2, 0.65], [0.2, 0.25], [-1.0, 0.25]])
_POLYGONS = {
    "triangle": _regular_polygon(3, 1.0, np.pi / 2),
    "star": _star(),
    "hexagon": _regular_polygon(6, 0.95),
    "arrow": _ARROW,
}


def _inside_polygon(u: np.ndarray, v: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over any array of points."""
    inside = np.zeros(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        crosses = (y0 > v) != (y1 > v)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x0 + (v - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (u < x_at)
    return inside


def _shape_mask(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in the shape's own unit frame (the shape spans about [-1, 1]^2)."""
    r2 = u * u + v * v
    if name == "circle":
        return r2 <= 1.0
    if name == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if name == "cross":
        return ((np.abs(u) <= 0.3) & (np.abs(v) <= 1.0)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 1.0))
    if name == "ring":
        return (r2 <= 1.0) & (r2 >= 0.55 ** 2)
    if name == "crescent":
        return (r2 <= 1.0) & ((u - 0.45) ** 2 + v * v > 0.8 ** 2)
    if name == "heart":
        x, y = 1.15 * u, 1.15 * v + 0.15
        return (x * x + y * y - 1.0) ** 3 - x * x * y ** 3 <= 0.0
    return _inside_polygon(u, v, _POLYGONS[name])


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int) -> np.ndarray:
    """Random colour field on a coarse grid, bilinearly upsampled: (n, size, size, 3)."""
    grid = rng.random((n, cells + 1, cells + 1, 3), dtype=np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i0 = np.minimum(pos.astype(int), cells - 1)
    f = (pos - i0)[None, :, None, None]
    rows = grid[:, i0] * (1 - f) + grid[:, i0 + 1] * f
    f = f.transpose(0, 2, 1, 3)
    return rows[:, :, i0] * (1 - f) + rows[:, :, i0 + 1] * f


def generate(num_examples: int, seed: int, image_size: int = 32, supersample: int = 2,
             chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N, S, S, 3], labels int64 [N])``, balanced over the 10 classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_examples) % NUM_CLASSES).astype(np.int64)
    images = np.empty((num_examples, image_size, image_size, 3), dtype=np.uint8)
    fine = image_size * supersample
    coords = (np.arange(fine, dtype=np.float32) + 0.5) / supersample  # pixel units
    for start in range(0, num_examples, chunk):
        lab = labels[start:start + chunk]
        images[start:start + len(lab)] = _render(rng, lab, image_size, coords, supersample)
    return images, labels


def _render(rng, labels, size, coords, supersample):
    n = len(labels)
    # Background: smooth colour field + oriented stripes + pixel noise.
    base = rng.random((n, 1, 1, 3))
    field = _smooth_noise(rng, n, size, cells=int(rng.integers(2, 5)))
    background = base + 0.35 * (field - 0.5)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    theta = rng.uniform(0, np.pi, (n, 1, 1))
    freq = rng.uniform(0.3, 1.2, (n, 1, 1))
    stripes = 0.5 + 0.5 * np.sin(freq * (xx * np.cos(theta) + yy * np.sin(theta)) + rng.uniform(0, 6.3, (n, 1, 1)))
    stripe_colour = rng.random((n, 1, 1, 3))
    amount = rng.uniform(0.1, 0.3, (n, 1, 1, 1))
    background = background * (1 - amount * stripes[..., None]) + amount * stripes[..., None] * stripe_colour
    background = np.clip(background + rng.normal(0, 0.03, background.shape), 0, 1)

    # Foreground colour kept visibly apart from the background's mean colour.
    fg = rng.random((n, 3))
    mean_bg = background.mean(axis=(1, 2))
    close = np.linalg.norm(fg - mean_bg, axis=1) < 0.6
    fg[close] = np.clip(1.0 - mean_bg[close] + rng.normal(0, 0.1, (close.sum(), 3)), 0, 1)
    shade = 1.0 + rng.normal(0, 0.05, (n, size, size, 1))

    # Shape geometry: radius, centre, rotation.
    radius = rng.uniform(0.26, 0.42, n) * size
    cx = rng.uniform(radius * 0.8, size - radius * 0.8)
    cy = rng.uniform(radius * 0.8, size - radius * 0.8)
    angle = rng.uniform(-MAX_ROTATION, MAX_ROTATION, n)
    dx = (coords[None, None, :] - cx[:, None, None])
    dy = (coords[None, :, None] - cy[:, None, None])
    c, s = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (c * dx + s * dy) / radius[:, None, None]
    v = (-s * dx + c * dy) / radius[:, None, None]
    mask = np.zeros(u.shape, dtype=np.float32)
    for k, name in enumerate(CLASS_NAMES):
        sel = labels == k
        if sel.any():
            mask[sel] = _shape_mask(name, u[sel], -v[sel])
    fine = mask.shape[1]
    cover = mask.reshape(n, fine // supersample, supersample, fine // supersample, supersample).mean(axis=(2, 4))
    cover = cover[..., None]
    image = background * (1 - cover) + cover * fg[:, None, None, :] * shade
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
