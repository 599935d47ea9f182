"""A performance lever: data layout — channels-last (NHWC, TensorFlow's default and ssl_tf's) against
channels-first (NCHW) for a ResNet-18's convolutions on the CPU.

    python experiments/data_layout.py                     # ResNet-18 (CIFAR stem), 512 views of 32 px
    python experiments/data_layout.py --batch 128 --rounds 3

The ResNet-18 of ``models.resnet`` (CIFAR stem, basic blocks, fused training batch norm) written
with raw ``tf.nn`` ops, so that only ``data_format`` differs between the two variants: the same
variables (kernels are HWIO in both layouts), the same forward, backward and SGD update inside
one ``tf.function`` each. Prints the median seconds per step of each layout per round,
alternated, and their ratio.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

STAGES = [(64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=512, help="views per step (SimCLR at batch 256: 512)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ssl_tf import backend  # oneDNN chosen before TensorFlow loads
    tf = backend.import_tensorflow()
    print(f"machine: {backend.describe(backend.fingerprint('float32'))}", flush=True)

    rng = np.random.default_rng(0)

    def var(shape):
        return tf.Variable(rng.normal(0, 0.05, shape).astype(np.float32))

    stem = dict(w=var([3, 3, 3, 64]), g=var([64]), b=var([64]))
    blocks, cin = [], 64
    for c, s in STAGES:
        block = dict(w1=var([3, 3, cin, c]), g1=var([c]), b1=var([c]), w2=var([3, 3, c, c]), g2=var([c]), b2=var([c]))
        if s != 1 or cin != c:
            block.update(ws=var([1, 1, cin, c]), gs=var([c]), bs=var([c]))
        blocks.append((block, s))
        cin = c
    variables = list(stem.values()) + [v for block, _ in blocks for v in block.values()]

    def make_step(fmt):
        def conv(x, w, s):
            return tf.nn.conv2d(x, w, [1, s, s, 1] if fmt == "NHWC" else [1, 1, s, s], "SAME", data_format=fmt)

        def bn(x, g, b):
            return tf.compat.v1.nn.fused_batch_norm(x, g, b, epsilon=1e-5, data_format=fmt, is_training=True)[0]

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                h = tf.nn.relu(bn(conv(x, stem["w"], 1), stem["g"], stem["b"]))
                for block, s in blocks:
                    y = tf.nn.relu(bn(conv(h, block["w1"], s), block["g1"], block["b1"]))
                    y = bn(conv(y, block["w2"], 1), block["g2"], block["b2"])
                    shortcut = bn(conv(h, block["ws"], s), block["gs"], block["bs"]) if "ws" in block else h
                    h = tf.nn.relu(y + shortcut)
                features = tf.reduce_mean(h, [1, 2] if fmt == "NHWC" else [2, 3])
                loss = tf.reduce_mean(tf.reduce_sum(features * features, 1))
            for v, g in zip(variables, tape.gradient(loss, variables)):
                v.assign_sub(1e-4 * g)
            return loss
        return step

    nhwc = rng.normal(size=(args.batch, 32, 32, 3)).astype(np.float32)
    variants = {"NHWC": (make_step("NHWC"), tf.constant(nhwc)),
                "NCHW": (make_step("NCHW"), tf.constant(nhwc.transpose(0, 3, 1, 2)))}
    medians = {name: [] for name in variants}
    for r in range(args.rounds):
        for name, (step, x) in variants.items():
            step(x).numpy()   # trace + warm-up
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(x).numpy()
                times.append(time.perf_counter() - t0)
            medians[name].append(statistics.median(times))
            rate = args.batch / medians[name][-1]
            print(f"round {r + 1} {name}: {medians[name][-1]:.3f} s/step ({rate:.1f} views/s)", flush=True)
    a, b = statistics.median(medians["NHWC"]), statistics.median(medians["NCHW"])
    print(f"median NHWC {a:.3f} s, NCHW {b:.3f} s: NCHW takes {b / a:.2f}x NHWC's time", flush=True)


if __name__ == "__main__":
    main()
