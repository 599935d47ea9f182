"""Does the patch grid give away where a patch was cut? A small CNN is trained to name the grid cell
(1 of 9) of single patches cut from images of uniform noise, where no content can tell the position:
only the resampling can. Chance is 11.1 %.

    python experiments/patch_position_leak.py                 # both grids, 15 epochs each

``resized``: the image resized to the grid's side (32 → 63 px for 16-px patches), whose
interpolation phase drifts across the image. ``ssl_tf``: ``data.patches.grid_patches``, which enlarges
by an integer factor (2×, 64 px) and cuts a random 63-px square.
"""
from __future__ import annotations

import argparse
import time

import keras
import numpy as np
import tensorflow as tf

from ssl_tf.data import ops, patches

PATCH = 16


def resized_grid(image, seed):
    cell = patches.cell_size(PATCH)
    return patches.cut_cells(ops.resize(image, 3 * cell), seed, cell, PATCH)


GRIDS = {"resized": resized_grid, "ssl_tf": lambda image, seed: patches.grid_patches(image, seed, PATCH)}


def cell_accuracy(grid, images: int, epochs: int, seed: int = 0) -> float:
    noise = np.random.default_rng(seed).random((images, 32, 32, 3), dtype=np.float32)
    ds = tf.data.Dataset.from_tensor_slices(noise).enumerate().map(lambda i, x: grid(x, tf.stack([i, i + seed])))
    x = np.concatenate([b.numpy() for b in ds.batch(500)]).reshape(-1, PATCH, PATCH, 3)
    y = np.tile(np.arange(9), images)
    train = 9 * int(images * 5 / 6)
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((PATCH, PATCH, 3)), keras.layers.Conv2D(32, 3, activation="relu"),
                            keras.layers.Conv2D(32, 3, activation="relu"),
                            keras.layers.Conv2D(64, 3, strides=2, activation="relu"),
                            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(9)])
    net.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    net.fit(x[:train], y[:train], batch_size=256, epochs=epochs, verbose=0)
    return float(net.evaluate(x[train:], y[train:], verbose=0)[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=6000, help="noise images (5/6 train, 1/6 held out)")
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    for name, grid in GRIDS.items():
        start = time.time()
        acc = cell_accuracy(grid, args.images, args.epochs)
        print(f"{name}: held-out cell accuracy {100 * acc:.1f} % (chance 11.1 %), {time.time() - start:.0f} s",
              flush=True)


if __name__ == "__main__":
    main()
