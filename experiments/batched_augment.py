"""A performance lever: vectorised (per-batch) augmentation against ssl_tf's per-image ``map``.

    python experiments/batched_augment.py                        # SimCLR's CIFAR-10 pair, batch 256
    python experiments/batched_augment.py --data ../shared/data/cifar10/train.npz --rounds 3

ssl_tf augments one image at a time (``data/views.py`` inside ``Dataset.map`` with AUTOTUNE
parallelism, then ``batch``). The alternative batches the uint8 images first and draws every
random parameter for the whole batch at once: crop boxes by a vectorised rejection sampler
(10 tries per image, the whole image if none fits, as torchvision's RandomResizedCrop) and
``tf.image.crop_and_resize``; flip, grayscale and the jitter's on/off as per-image masks;
brightness, contrast, saturation and hue with per-image factors, applied in a per-image random
order (at each of the 4 positions the batch is partitioned by op, each part gets its op, and
the parts are stitched back). Same parameter ranges as ``ops`` (SimCLR appendix A); bilinear
instead of bicubic resizing (``crop_and_resize`` has no bicubic). Measured: no faster than the
per-image map on 2 cores (benchmarks/levers.md, 2026-11-24), so ssl_tf keeps the per-image map.

Both pipelines read the same uint8 images in the same order and deliver the same
``{'views': (v1, v2)}`` batches of two views. Printed per pipeline, alternated over
``--rounds``: images/s (wall) and the process's CPU seconds per 1,000 images — the cost the
augmentation takes from a train step running on the same cores — plus the views' pixel mean
and standard deviation as a check that both draw comparable views.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from ssl_tf import backend  # noqa: E402  (first: oneDNN is chosen before TensorFlow loads)

tf = backend.import_tensorflow()

from ssl_tf.data import pipeline, views  # noqa: E402
from ssl_tf.data.sources import Examples  # noqa: E402


def batched_crop_boxes(seed, b, h, w, size_scale, ratio=(3 / 4, 4 / 3), tries=10):
    """[b, 4] normalised (y1, x1, y2, x2) boxes of area fraction in ``size_scale`` and aspect in ``ratio``."""
    s = tf.random.experimental.stateless_split(seed, 4)
    area = float(h * w) * tf.random.stateless_uniform([b, tries], s[0], *size_scale)
    aspect = tf.exp(tf.random.stateless_uniform([b, tries], s[1], math.log(ratio[0]), math.log(ratio[1])))
    cw, ch = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
    fits = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    any_fit = tf.reduce_any(fits, axis=1)
    cw = tf.where(any_fit, tf.gather(cw, first, batch_dims=1), float(w))
    ch = tf.where(any_fit, tf.gather(ch, first, batch_dims=1), float(h))
    oy = tf.floor(tf.random.stateless_uniform([b], s[2]) * (h - ch + 1))
    ox = tf.floor(tf.random.stateless_uniform([b], s[3]) * (w - cw + 1))
    return tf.stack([oy / (h - 1), ox / (w - 1), (oy + ch - 1) / (h - 1), (ox + cw - 1) / (w - 1)], axis=1)


def batched_color_jitter(x, seed, strength, p):
    """SimCLR's jitter (brightness, contrast, saturation 0.8·s; hue 0.2·s) with per-image factors and
    order, applied to a random ``p`` of the batch; results clipped to [0, 1] after each op."""
    b = tf.shape(x)[0]
    s = tf.random.experimental.stateless_split(seed, 6)
    j, hue_max = 0.8 * strength, 0.2 * strength
    bright = tf.random.stateless_uniform([b, 1, 1, 1], s[0], 1 - j, 1 + j)
    contrast = tf.random.stateless_uniform([b, 1, 1, 1], s[1], 1 - j, 1 + j)
    saturation = tf.random.stateless_uniform([b, 1, 1], s[2], 1 - j, 1 + j)
    hue = tf.random.stateless_uniform([b, 1, 1], s[3], -hue_max, hue_max)
    order = tf.argsort(tf.random.stateless_uniform([b, 4], s[4]), axis=1)

    def adjust_hsv(x, sat=None, dh=None):
        hsv = tf.image.rgb_to_hsv(x)
        hh, ss, vv = tf.unstack(hsv, axis=-1)
        if sat is not None:
            ss = tf.clip_by_value(ss * sat, 0.0, 1.0)
        if dh is not None:
            hh = tf.math.floormod(hh + dh, 1.0)
        return tf.image.hsv_to_rgb(tf.stack([hh, ss, vv], axis=-1))

    def contrast_op(x, idx):
        mean = tf.reduce_mean(x, [1, 2], keepdims=True)   # per image and channel, as tf.image.adjust_contrast
        return (x - mean) * tf.gather(contrast, idx) + mean

    ops = [lambda x, idx: x * tf.gather(bright, idx),
           contrast_op,
           lambda x, idx: adjust_hsv(x, sat=tf.gather(saturation, idx)),
           lambda x, idx: adjust_hsv(x, dh=tf.gather(hue, idx))]
    y, rows = x, tf.range(b)
    for i in range(4):   # each image goes through its own i-th op only: partition by op, apply, stitch back
        where = tf.dynamic_partition(rows, order[:, i], 4)
        parts = tf.dynamic_partition(y, order[:, i], 4)
        y = tf.dynamic_stitch(where, [tf.clip_by_value(op(part, idx), 0.0, 1.0)
                                      for op, part, idx in zip(ops, parts, where)])
    on = tf.random.stateless_uniform([b], s[5]) < p
    return tf.where(on[:, None, None, None], y, x)


def batched_simclr_view(images, seed, cfg):
    """One SimCLR view of every image of a uint8 batch [b, H, W, 3] (blur and solarize off, as at 32 px)."""
    b, h, w = tf.shape(images)[0], images.shape[1], images.shape[2]
    s = tf.random.experimental.stateless_split(seed, 4)
    x = tf.image.convert_image_dtype(images, tf.float32)
    boxes = batched_crop_boxes(s[0], b, h, w, cfg.crop_scale)
    x = tf.image.crop_and_resize(x, boxes, tf.range(b), [cfg.image_size, cfg.image_size], method="bilinear")
    flip = tf.random.stateless_uniform([b], s[1]) < 0.5
    x = tf.where(flip[:, None, None, None], tf.reverse(x, [2]), x)
    x = batched_color_jitter(x, s[2], cfg.color_jitter, cfg.color_jitter_p)
    gray = tf.random.stateless_uniform([b], s[3]) < cfg.grayscale_p
    x = tf.where(gray[:, None, None, None], tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 1, 3]), x)
    return tf.clip_by_value(x, 0.0, 1.0)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="", help="an (images, labels) npz; default: random uint8 32x32 images")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--batches", type=int, default=40, help="timed batches per pipeline per round")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    print(f"machine: {backend.describe(backend.fingerprint('float32'))}", flush=True)
    if args.data:
        with np.load(args.data) as d:
            images, labels = d["images"], d["labels"].astype(np.int64)
    else:
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (10_000, 32, 32, 3), np.uint8), rng.integers(0, 10, 10_000)
    examples = Examples("bench", labels, 10, images=images)
    # SimCLR's CIFAR-10 views (Chen et al. 2020, appendix B.9: crop area 8-100 %, jitter strength 0.5, no blur)
    cfg = views.AugmentConfig(image_size=32, crop_scale=(0.08, 1.0), color_jitter=0.5, blur_p=0.0)
    print(f"recipe two_views, image_size {cfg.image_size}, crop_scale {cfg.crop_scale}, jitter {cfg.color_jitter} "
          f"(p {cfg.color_jitter_p}), grayscale p {cfg.grayscale_p}, blur p {cfg.blur_p}", flush=True)

    def per_image():
        return pipeline.train_stream(examples, views.views_for("two_views", cfg), global_batch=args.batch, seed=0)

    def batched():
        ds = pipeline.train_stream(examples, lambda image, seed: image, global_batch=args.batch, seed=0)

        def two(batch):
            seed = tf.stack([tf.constant(0, tf.int64), batch["index"][0]])   # a batch-level seed
            s = tf.random.experimental.stateless_split(seed, 2)
            return {**batch, "views": (batched_simclr_view(batch["views"], s[0], cfg),
                                       batched_simclr_view(batch["views"], s[1], cfg))}
        return ds.map(two, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)

    def measure(make):
        it = iter(make())
        for _ in range(5):
            next(it)
        cpu0, t0 = time.process_time(), time.perf_counter()
        pix = []
        for _ in range(args.batches):
            v1, _ = next(it)["views"]
            pix.append(v1.numpy()[:16])
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        n = args.batches * args.batch
        pix = np.concatenate(pix)
        return n / wall, 1000 * cpu / n, float(pix.mean()), float(pix.std())

    results = {"per-image map": [], "batched": []}
    for r in range(args.rounds):
        for name, make in (("per-image map", per_image), ("batched", batched)):
            ips, cpu_k, mean, std = measure(make)
            results[name].append((ips, cpu_k))
            print(f"round {r + 1} {name:14s} {ips:8.0f} img/s  {cpu_k:6.3f} CPU s / 1k img  "
                  f"views mean {mean:.3f} std {std:.3f}", flush=True)
    for name, rows in results.items():
        print(f"median {name:14s} {statistics.median(x for x, _ in rows):8.0f} img/s  "
              f"{statistics.median(c for _, c in rows):6.3f} CPU s / 1k img", flush=True)


if __name__ == "__main__":
    main()
