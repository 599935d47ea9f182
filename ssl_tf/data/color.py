"""CIE Lab colour space and the quantised ab bins of colorization (Zhang et al. 2016).

``rgb_to_lab`` / ``lab_to_rgb`` are the standard sRGB (D65) conversions: sRGB gamma,
the linear-RGB→XYZ matrix, then L = 116 f(Y/Yn) - 16, a = 500 (f(X/Xn) - f(Y/Yn)),
b = 200 (f(Y/Yn) - f(Z/Zn)) with f(t) = t^(1/3) above (6/29)^3 and linear below.
The ab plane is quantised on a grid of side 10 (Zhang et al.: Q = 313 in-gamut bins);
``ab_bins`` finds the bins that some sRGB colour reaches.
"""
from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf

_RGB_TO_XYZ = np.array([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]], np.float32)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ).astype(np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)   # D65 reference white
_DELTA = 6.0 / 29.0
GRID = 10.0            # ab bin side (Zhang et al. 2016)
AB_RANGE = 110.0       # bins centred on multiples of GRID in [-110, 110]


def rgb_to_lab(rgb):
    """float sRGB in [0, 1], [..., 3] -> Lab [..., 3] (L in [0, 100], a and b about ±110)."""
    rgb = tf.convert_to_tensor(rgb, tf.float32)
    linear = tf.where(rgb <= 0.04045, rgb / 12.92, tf.pow((tf.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4))
    xyz = tf.tensordot(linear, tf.constant(_RGB_TO_XYZ.T), 1) / _WHITE
    f = tf.where(xyz > _DELTA ** 3, tf.pow(tf.maximum(xyz, _DELTA ** 3), 1.0 / 3.0),
                 xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    fx, fy, fz = tf.unstack(f, axis=-1)
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], -1)


def lab_to_rgb(lab):
    """Lab [..., 3] -> float sRGB in [0, 1] (out-of-gamut colours clipped)."""
    lab = tf.convert_to_tensor(lab, tf.float32)
    L, a, b = tf.unstack(lab, axis=-1)
    fy = (L + 16.0) / 116.0
    f = tf.stack([fy + a / 500.0, fy, fy - b / 200.0], -1)
    xyz = tf.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0)) * _WHITE
    linear = tf.tensordot(xyz, tf.constant(_XYZ_TO_RGB.T), 1)
    srgb = tf.where(linear <= 0.0031308, 12.92 * linear,
                    1.055 * tf.pow(tf.maximum(linear, 0.0031308), 1 / 2.4) - 0.055)
    return tf.clip_by_value(srgb, 0.0, 1.0)


def lightness(rgb):
    """The L channel scaled to [0, 1]: [..., 3] -> [..., 1]."""
    return rgb_to_lab(rgb)[..., :1] / 100.0


@functools.lru_cache(maxsize=None)
def ab_bins(levels: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """(centres [Q, 2], lookup [G, G]): the in-gamut ab bins and, for every grid cell, the index
    of the nearest in-gamut bin. In gamut = reached by some colour of a ``levels``³ sRGB grid."""
    axis = np.linspace(0.0, 1.0, levels, dtype=np.float32)
    rgb = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
    ab = rgb_to_lab(rgb).numpy()[:, 1:]
    side = int(2 * AB_RANGE / GRID) + 1
    cells = np.clip(np.round(ab / GRID).astype(int) + side // 2, 0, side - 1)
    used = np.zeros([side, side], bool)
    used[cells[:, 0], cells[:, 1]] = True
    ia, ib = np.nonzero(used)
    centres = np.stack([(ia - side // 2) * GRID, (ib - side // 2) * GRID], -1).astype(np.float32)
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)
    grid_ab = (grid - side // 2) * GRID
    nearest = np.argmin(((grid_ab[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    return centres, nearest.reshape(side, side).astype(np.int32)


def quantize_ab(ab):
    """ab [..., 2] -> index [...] of the nearest in-gamut bin."""
    centres, lookup = ab_bins()
    side = lookup.shape[0]
    cell = tf.clip_by_value(tf.cast(tf.round(ab / GRID), tf.int32) + side // 2, 0, side - 1)
    return tf.gather_nd(tf.constant(lookup), cell)
