"""Pure, stateless TF image ops for ``tf.data`` maps.

Every random op takes an explicit ``seed`` (int tensor of shape [2]) and uses the
``tf.image.stateless_*`` / ``tf.random.stateless_*`` family, so a run is reproducible
from ``--seed`` whatever the parallelism of the input pipeline. Images are float32 in
[0, 1], shape [H, W, 3]. The parameter ranges follow SimCLR (Chen et al. 2020,
appendix A and ``tf2/data_util.py`` of google-research/simclr).
"""
from __future__ import annotations

import tensorflow as tf


def split_seed(seed, num: int):
    """``num`` independent child seeds of ``seed`` (a [num, 2] tensor)."""
    return tf.random.experimental.stateless_split(seed, num)


def coin(seed, p: float):
    """Stateless Bernoulli(p) as a scalar bool tensor."""
    return tf.random.stateless_uniform([], seed) < p


def random_apply(fn, image, seed, p: float):
    """Apply ``fn(image, seed)`` with probability ``p``."""
    if p <= 0:
        return image
    s = split_seed(seed, 2)
    if p >= 1:
        return fn(image, s[1])
    return tf.cond(coin(s[0], p), lambda: fn(image, s[1]), lambda: image)


def to_float(image):
    """uint8 [0, 255] (or float) to float32 in [0, 1]."""
    return tf.image.convert_image_dtype(image, tf.float32)


def random_resized_crop(image, seed, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """Crop a random box of ``scale`` area fraction and ``ratio`` aspect, resize to size×size."""
    shape = tf.shape(image)
    box = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4])
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, bounding_boxes=box, seed=seed, min_object_covered=0.0,
        aspect_ratio_range=ratio, area_range=scale, max_attempts=100,
        use_image_if_no_bounding_boxes=True)
    offset_y, offset_x, _ = tf.unstack(begin)
    height, width, _ = tf.unstack(crop_size)
    crop = tf.image.crop_to_bounding_box(image, offset_y, offset_x, height, width)
    return resize(crop, size)


def resize(image, size: int):
    out = tf.image.resize(image, [size, size], method="bicubic")
    return tf.clip_by_value(out, 0.0, 1.0)


def center_crop_resize(image, size: int, crop_fraction: float = 0.875):
    """Central square crop holding ``crop_fraction`` of the shorter side, resized to size×size."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    side = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * crop_fraction, tf.int32)
    crop = tf.image.crop_to_bounding_box(image, (h - side) // 2, (w - side) // 2, side, side)
    return resize(crop, size)


def random_flip(image, seed):
    return tf.image.stateless_random_flip_left_right(image, seed)


def grayscale(image):
    return tf.tile(tf.image.rgb_to_grayscale(image), [1, 1, 3])


def random_grayscale(image, seed, p: float = 0.2):
    return random_apply(lambda x, _: grayscale(x), image, seed, p)


def color_jitter(image, seed, strength: float):
    """Brightness, contrast, saturation (0.8·s) and hue (0.2·s) jitter in a random order.

    Brightness is multiplicative (SimCLR v2's ``impl=simclrv2``); each result is clipped to [0, 1].
    """
    if strength <= 0:
        return image
    b = c = s = 0.8 * strength
    h = 0.2 * strength
    seeds = split_seed(seed, 5)

    def brightness(x):
        factor = tf.random.stateless_uniform([], seeds[0], 1 - b, 1 + b)
        return x * factor

    def contrast(x):
        return tf.image.stateless_random_contrast(x, 1 - c, 1 + c, seeds[1])

    def saturation(x):
        return tf.image.stateless_random_saturation(x, 1 - s, 1 + s, seeds[2])

    def hue(x):
        return tf.image.stateless_random_hue(x, h, seeds[3]) if h > 0 else x

    branches = [brightness, contrast, saturation, hue]
    order = tf.random.experimental.stateless_shuffle(tf.range(4), seeds[4])
    for i in range(4):
        image = tf.switch_case(order[i], [lambda f=f: tf.clip_by_value(f(image), 0.0, 1.0)
                                          for f in branches])
    return image


def random_color_jitter(image, seed, strength: float, p: float = 0.8):
    return random_apply(lambda x, sd: color_jitter(x, sd, strength), image, seed, p)


def gaussian_kernel(sigma, radius: int):
    """Normalised 1-D Gaussian weights exp(-x^2 / 2 sigma^2) for x in [-radius, radius]."""
    x = tf.cast(tf.range(-radius, radius + 1), tf.float32)
    weights = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
    return weights / tf.reduce_sum(weights)


def gaussian_blur(image, sigma, kernel_size: int):
    """Separable Gaussian blur with reflect padding: a vertical then a horizontal 1-D pass."""
    radius = kernel_size // 2
    k = gaussian_kernel(sigma, radius)
    x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    vertical = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    horizontal = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    x = tf.nn.depthwise_conv2d(x, vertical, [1, 1, 1, 1], "VALID")
    x = tf.nn.depthwise_conv2d(x, horizontal, [1, 1, 1, 1], "VALID")
    return x[0]


def random_blur(image, seed, p: float = 0.5, sigma_range=(0.1, 2.0), kernel_fraction: float = 0.1):
    """SimCLR blur: kernel side ≈ 10% of the image side, σ uniform in ``sigma_range``."""
    size = int(image.shape[0] or 32)
    kernel_size = max(3, int(round(size * kernel_fraction)) | 1)

    def blur(x, sd):
        sigma = tf.random.stateless_uniform([], sd, *sigma_range)
        return tf.clip_by_value(gaussian_blur(x, sigma, kernel_size), 0.0, 1.0)
    return random_apply(blur, image, seed, p)


def solarize(image, threshold: float = 0.5):
    return tf.where(image < threshold, image, 1.0 - image)


def random_solarize(image, seed, p: float, threshold: float = 0.5):
    return random_apply(lambda x, _: solarize(x, threshold), image, seed, p)


def affine(image, transform, fill_mode: str = "REFLECT", fill_value: float = 0.0):
    """Resample a [H, W, C] image: output pixel (x, y) reads input (a0 x + a1 y + a2, b0 x + b1 y + b2),
    ``transform`` = [a0, a1, a2, b0, b1, b2, 0, 0], bilinear."""
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=tf.cast(transform, tf.float32)[None], output_shape=tf.shape(image)[:2],
        fill_value=fill_value, interpolation="BILINEAR", fill_mode=fill_mode)
    return out[0]


def rotate(image, angle, fill_mode: str = "REFLECT", fill_value: float = 0.0):
    """Rotate a [H, W, C] image by ``angle`` radians (counter-clockwise) about its centre,
    bilinear, with reflected borders (default) so no black corners enter the view."""
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cx, cy = (w - 1) / 2, (h - 1) / 2   # the inverse rotation about the centre
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    return affine(image, transform, fill_mode, fill_value)


def random_rotate(image, seed, max_angle: float):
    """Rotate by an angle uniform in [-max_angle, max_angle] radians."""
    return rotate(image, tf.random.stateless_uniform([], seed, -max_angle, max_angle))


# The green-magenta axis of RGB space: the colour direction that chromatic aberration shifts
# between the centre and the border of a lens (Doersch et al. 2015, section 3.1).
# A plain tuple: a module-level tensor would initialise TensorFlow at import, before a
# MultiWorkerMirroredStrategy can configure its collectives.
_GREEN_MAGENTA = tuple(v / 6.0 ** 0.5 for v in (-1.0, 2.0, -1.0))


def project_out_green_magenta(image):
    """Remove each pixel's component along the green-magenta axis (Doersch et al.'s projection)."""
    axis = tf.constant(_GREEN_MAGENTA, image.dtype)
    along = tf.reduce_sum(image * axis, -1, keepdims=True)
    return tf.clip_by_value(image - along * axis, 0.0, 1.0)


def chromatic_guard(image, seed, grayscale_p: float = 0.66):
    """Against chromatic-aberration shortcuts in patch tasks: grayscale with probability
    ``grayscale_p`` (the revisiting code's 0.66), otherwise project out the green-magenta axis."""
    return tf.cond(coin(seed, grayscale_p), lambda: grayscale(image),
                   lambda: project_out_green_magenta(image))


# ----------------------------------------------------------------- per-patch (CPC v2)
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)   # tf.image.rgb_to_grayscale's


def _per_patch(seed, n, p):
    """[n] Bernoulli(p) draws, one per patch."""
    return tf.random.stateless_uniform([n], seed) < p


def _where(mask, a, b):
    return tf.where(mask[:, None, None, None], a, b)


def patchwise_flip(tiles, seed, p: float = 0.5):
    """Each patch of [n, P, P, C] mirrored left-right with probability ``p``, independently."""
    return _where(_per_patch(seed, tf.shape(tiles)[0], p), tf.reverse(tiles, [2]), tiles)


def patchwise_jitter(tiles, seed, strength: float, p: float = 0.8):
    """Brightness, contrast and saturation jitter (factors in 1 ± 0.8·s, SimCLR's ranges) drawn for
    each patch of [n, P, P, 3], applied with probability ``p`` per patch; clipped to [0, 1]. One
    fixed order and no hue, so that 49 patches per image cost three array operations, not 49
    ``switch_case`` graphs."""
    if strength <= 0 or p <= 0:
        return tiles
    n = tf.shape(tiles)[0]
    s = split_seed(seed, 4)
    lo, hi = 1 - 0.8 * strength, 1 + 0.8 * strength
    bright, contrast, saturation = (tf.random.stateless_uniform([n, 1, 1, 1], s[i], lo, hi) for i in range(3))
    x = tf.clip_by_value(tiles * bright, 0.0, 1.0)
    grey = tf.reduce_sum(x * GREY_WEIGHTS, -1, keepdims=True)
    mean = tf.reduce_mean(grey, [1, 2], keepdims=True)
    x = tf.clip_by_value((x - mean) * contrast + mean, 0.0, 1.0)
    grey = tf.reduce_sum(x * GREY_WEIGHTS, -1, keepdims=True)
    x = tf.clip_by_value((x - grey) * saturation + grey, 0.0, 1.0)
    return _where(_per_patch(s[3], n, p), x, tiles)


def patchwise_grayscale(tiles, seed, p: float):
    """Each patch of [n, P, P, 3] turned grey with probability ``p``, independently."""
    grey = tf.tile(tf.reduce_sum(tiles * GREY_WEIGHTS, -1, keepdims=True), [1, 1, 1, 3])
    return _where(_per_patch(seed, tf.shape(tiles)[0], p), grey, tiles)


def patchwise_color_drop(tiles, seed, p: float, noise: float = 0.01):
    """Colour dropping (Doersch et al. 2015, §3; CPC v2, Hénaff et al. 2020, §4.3): with probability
    ``p`` a patch keeps one random channel of three and the other two become that channel's mean
    plus Gaussian noise of ``noise`` × its standard deviation (Doersch: "~1/100"), so that
    chromatic aberration cannot tell where a patch lies in the image."""
    if p <= 0:
        return tiles
    n = tf.shape(tiles)[0]
    s = split_seed(seed, 3)
    keep = tf.one_hot(tf.random.stateless_uniform([n], s[0], 0, 3, tf.int32), 3)[:, None, None, :]   # [n,1,1,3]
    kept = tf.reduce_sum(tiles * keep, -1, keepdims=True)                                             # [n,P,P,1]
    mean, var = tf.nn.moments(kept, [1, 2, 3], keepdims=True)
    filler = mean + noise * tf.sqrt(var) * tf.random.stateless_normal(tf.shape(tiles), s[1])
    dropped = tiles * keep + filler * (1 - keep)
    return _where(_per_patch(s[2], n, p), dropped, tiles)


def cutmix(images, targets, draws, partner):
    """CutMix (Yun et al. 2019, §3.1) of a batch ``images`` [b, H, W, C] with soft ``targets`` [b, K]:
    one box is cut from each image's ``partner`` [b] (indices into the batch) and pasted over it,
    and the targets mix by the area each image keeps. ``draws`` [3] in [0, 1): λ ~ U(0, 1) (Beta(1, 1)),
    then the box centre (row, column); the box has sides H·√(1 − λ) × W·√(1 − λ), clipped to the
    image, and λ becomes the area kept outside it. Returns (images, targets, λ)."""
    h, w = images.shape[1], images.shape[2]
    cut = tf.sqrt(1.0 - draws[0])
    cy, cx = draws[1] * h, draws[2] * w
    y0 = tf.clip_by_value(tf.round(cy - cut * h / 2), 0, h)
    y1 = tf.clip_by_value(tf.round(cy + cut * h / 2), 0, h)
    x0 = tf.clip_by_value(tf.round(cx - cut * w / 2), 0, w)
    x1 = tf.clip_by_value(tf.round(cx + cut * w / 2), 0, w)
    rows = tf.range(h, dtype=tf.float32)
    cols = tf.range(w, dtype=tf.float32)
    box = ((rows >= y0) & (rows < y1))[:, None] & ((cols >= x0) & (cols < x1))[None]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    mixed = tf.where(box[None, :, :, None], tf.gather(images, partner), images)
    return mixed, kept * targets + (1.0 - kept) * tf.gather(targets, partner), kept


def image_grid(images, columns: int):
    """[n, H, W, 3] floats in [0, 1] → one [rows·H, columns·W, 3] uint8 image, row by row (cells past
    n black): samples and reconstructions to look at."""
    images = tf.convert_to_tensor(images, tf.float32)
    n, h, w = images.shape[0], images.shape[1], images.shape[2]
    rows = -(-n // columns)
    padded = tf.concat([images, tf.zeros([rows * columns - n, h, w, 3])], 0)
    grid = tf.reshape(tf.transpose(tf.reshape(padded, [rows, columns, h, w, 3]), [0, 2, 1, 3, 4]),
                      [rows * h, columns * w, 3])
    return tf.cast(tf.round(tf.clip_by_value(grid, 0.0, 1.0) * 255.0), tf.uint8)
