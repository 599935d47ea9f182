"""RandAugment as FixMatch uses it (Sohn et al. 2020, appendix D, table 12), in our own TF ops.

Each strong view applies ``num_ops`` operations drawn uniformly from ``OPS``, each at a
magnitude drawn uniformly from its range (FixMatch's "RA" variant: no global magnitude),
then Cutout of a square with side up to half the image, filled with grey. Images are float32
[H, W, 3] in [0, 1]; every op is a pure function of (image, magnitude in [0, 1]).
"""
from __future__ import annotations

import math

import tensorflow as tf

from ssl_tf.data import ops

_GREY = 0.5


def _blend(a, b, factor):
    """PIL ImageEnhance: b + factor·(a − b), clipped (factor 0 → b, 1 → a)."""
    return tf.clip_by_value(b + factor * (a - b), 0.0, 1.0)


def _factor(m):
    return 0.05 + 0.9 * m          # table 12: enhancement factors in [0.05, 0.95]


def _signed(m, limit):
    return (2.0 * m - 1.0) * limit


def identity(x, m):
    return x


def autocontrast(x, m):
    """Stretch every channel to [0, 1] (channels with a single value stay as they are)."""
    lo = tf.reduce_min(x, [0, 1], keepdims=True)
    hi = tf.reduce_max(x, [0, 1], keepdims=True)
    return tf.where(hi > lo, (x - lo) / tf.maximum(hi - lo, 1e-6), x)


def brightness(x, m):
    return _blend(x, tf.zeros_like(x), _factor(m))


def color(x, m):
    return _blend(x, tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x)), _factor(m))


def contrast(x, m):
    mean = tf.reduce_mean(tf.image.rgb_to_grayscale(x))
    return _blend(x, tf.fill(tf.shape(x), mean), _factor(m))


def sharpness(x, m):
    """Blend with PIL's SMOOTH filter (centre weight 5, neighbours 1, /13); borders kept."""
    kernel = tf.constant([[1., 1., 1.], [1., 5., 1.], [1., 1., 1.]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smooth = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "VALID")[0]
    smooth = tf.pad(smooth, [[1, 1], [1, 1], [0, 0]])
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    interior = tf.pad(tf.ones([h - 2, w - 2, 3]), [[1, 1], [1, 1], [0, 0]])
    smooth = interior * smooth + (1.0 - interior) * x
    return _blend(x, smooth, _factor(m))


def equalize(x, m):
    """Histogram equalisation per channel over 256 levels (PIL's ImageOps.equalize)."""
    levels = tf.cast(tf.round(x * 255.0), tf.int32)

    def channel(c):
        hist = tf.math.bincount(c, minlength=256, maxlength=256, dtype=tf.float32)
        cdf = tf.cumsum(hist)
        cdf_min = tf.reduce_min(tf.where(hist > 0, cdf, tf.fill([256], tf.reduce_max(cdf))))
        total = tf.cast(tf.size(c), tf.float32)
        lut = tf.clip_by_value(tf.round((cdf - cdf_min) / tf.maximum(total - cdf_min, 1.0) * 255.0), 0, 255)
        return tf.where(total > cdf_min, tf.gather(lut, c) / 255.0, tf.cast(c, tf.float32) / 255.0)
    return tf.stack([channel(levels[..., i]) for i in range(3)], -1)


def posterize(x, m):
    """Keep the top B bits of every 8-bit level, B in [4, 8]."""
    bits = tf.cast(tf.round(4.0 + 4.0 * m), tf.int32)
    shift = 8 - bits
    levels = tf.cast(tf.round(x * 255.0), tf.int32)
    return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(levels, shift), shift), tf.float32) / 255.0


def rotate(x, m):
    return ops.rotate(x, _signed(m, 30.0) * math.pi / 180.0, fill_mode="CONSTANT", fill_value=_GREY)


def solarize(x, m):
    return ops.solarize(x, m)      # threshold in [0, 1]


def shear_x(x, m):
    return ops.affine(x, tf.stack([1.0, _signed(m, 0.3), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]), "CONSTANT", _GREY)


def shear_y(x, m):
    return ops.affine(x, tf.stack([1.0, 0.0, 0.0, _signed(m, 0.3), 1.0, 0.0, 0.0, 0.0]), "CONSTANT", _GREY)


def translate_x(x, m):
    dx = _signed(m, 0.3) * tf.cast(tf.shape(x)[1], tf.float32)
    return ops.affine(x, tf.stack([1.0, 0.0, dx, 0.0, 1.0, 0.0, 0.0, 0.0]), "CONSTANT", _GREY)


def translate_y(x, m):
    dy = _signed(m, 0.3) * tf.cast(tf.shape(x)[0], tf.float32)
    return ops.affine(x, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, dy, 0.0, 0.0]), "CONSTANT", _GREY)


OPS = (identity, autocontrast, brightness, color, contrast, equalize, posterize, rotate, sharpness, shear_x,
       shear_y, solarize, translate_x, translate_y)


def cutout(x, seed, max_fraction: float = 0.5):
    """Grey out a square of side up to ``max_fraction`` of the image, centred anywhere in it."""
    s = ops.split_seed(seed, 2)
    h, w = tf.shape(x)[0], tf.shape(x)[1]
    side = tf.cast(tf.random.stateless_uniform([], s[0], 0.0, max_fraction) * tf.cast(tf.minimum(h, w), tf.float32),
                   tf.int32)
    centre = tf.random.stateless_uniform([2], s[1], 0, 2 ** 30, tf.int32) % tf.stack([h, w])
    y0, x0 = tf.maximum(centre[0] - side // 2, 0), tf.maximum(centre[1] - side // 2, 0)
    y1, x1 = tf.minimum(centre[0] + side - side // 2, h), tf.minimum(centre[1] + side - side // 2, w)
    rows = tf.logical_and(tf.range(h) >= y0, tf.range(h) < y1)
    cols = tf.logical_and(tf.range(w) >= x0, tf.range(w) < x1)
    box = tf.logical_and(rows[:, None], cols[None, :])[..., None]
    return tf.where(box, _GREY, x)


def rand_augment(x, seed, num_ops: int = 2, cutout_fraction: float = 0.5):
    """``num_ops`` random ops from ``OPS`` at random magnitudes, then Cutout."""
    s = ops.split_seed(seed, 2 * num_ops + 1)
    for i in range(num_ops):
        which = tf.random.stateless_uniform([], s[2 * i], 0, len(OPS), tf.int32)
        magnitude = tf.random.stateless_uniform([], s[2 * i + 1])
        x = tf.switch_case(which, [lambda op=op: op(x, magnitude) for op in OPS])
        x = tf.ensure_shape(tf.clip_by_value(x, 0.0, 1.0), [None, None, 3])
    return cutout(x, s[-1], cutout_fraction)
