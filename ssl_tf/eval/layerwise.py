"""Layer-wise evaluation (Kolesnikov et al. 2019, "Revisiting self-supervised visual
representation learning", Fig. 4): a probe on every representation layer of a frozen backbone.

Each named layer's map is average-pooled down to at most ``max_features`` values (the
revisiting code's 9000) — adaptive pooling to an s×s grid with s = ⌊√(max_features / C)⌋,
nothing when the map is already small enough — flattened, and probed with the offline
linear (or MLP) probe. Layers are extracted in groups that fit a memory budget, so the
backbone runs once per group rather than once per layer, and each group is probed and
dropped before the next is extracted.
"""
from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from ssl_tf.data import pipeline
from ssl_tf.data.sources import Examples
from ssl_tf.eval.linear import probe
from ssl_tf.models import intermediate_model, representation_layers


def pooled_side(height: int, width: int, channels: int, max_features: int) -> tuple[int, int]:
    """Output grid of the adaptive average pooling that brings H×W×C to <= max_features."""
    if height * width * channels <= max_features:
        return height, width
    s = max(1, int(math.floor(math.sqrt(max_features / channels))))
    return min(height, s), min(width, s)


def pool_features(x, max_features: int):
    """[N, H, W, C] or [N, F] -> [N, <= max_features (or C when C alone exceeds it)]; a ViT block's
    tokens [N, T, D] -> its [CLS] token."""
    if x.shape.rank == 2:
        return x
    if x.shape.rank == 3:
        return x[:, 0]
    h, w = pooled_side(x.shape[1], x.shape[2], x.shape[3], max_features)
    if (h, w) != (x.shape[1], x.shape[2]):
        x = tf.image.resize(x, [h, w], method="area")
    return tf.reshape(x, [tf.shape(x)[0], -1])


def layer_groups(names, sizes: dict, num_examples: int, budget_bytes: float = 1.5e9) -> list[list[str]]:
    """``names`` in consecutive groups whose pooled features (``sizes[name]`` per example) for
    ``num_examples`` fit ``budget_bytes`` (a layer larger than the budget is a group of its own)."""
    groups, current, used = [], [], 0
    for name in names:
        cost = sizes[name] * num_examples * 4
        if current and used + cost > budget_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += cost
    return groups + [current]


def extract_layers(backbone, examples, names, image_size: int, max_features: int, batch_size: int = 256):
    """{layer name: pooled features [N, ≤ max_features]} and labels [N], in the order of ``examples``,
    from one pass of the backbone."""
    sub = intermediate_model(backbone, list(names))
    forward = tf.function(lambda x: {k: pool_features(v, max_features) for k, v in sub(x, training=False).items()},
                          reduce_retracing=True)
    parts, ys = {k: [] for k in names}, []
    for x, y in pipeline.eval_batches(examples, image_size, batch_size):
        for k, v in forward(x).items():
            parts[k].append(v.numpy())
        ys.append(y.numpy())
    return {k: np.concatenate(v).astype(np.float32, copy=False) for k, v in parts.items()}, np.concatenate(ys)


def layerwise(backbone: keras.Model, train: Examples, test: Examples, num_classes: int, *, image_size: int,
              max_features: int = 9000, head: str = "linear", epochs: int = 100, batch_size: int = 256, seed: int = 0,
              log=None) -> list[dict]:
    """One row per representation layer, input to output: {layer, shape, features, top1}.

    The backbone runs once per group of layers, and only one group's features are held at a time:
    all six ResNet layers of 45,000 images at ≤ 9,000 features each are 5.7 GB."""
    names = representation_layers(backbone)
    shapes = intermediate_model(backbone, names)(tf.zeros([1, image_size, image_size, 3]), training=False)
    sizes = {k: int(pool_features(v, max_features).shape[-1]) for k, v in shapes.items()}
    rows = []
    for group in layer_groups(names, sizes, len(train)):
        train_feats, train_y = extract_layers(backbone, train, group, image_size, max_features, batch_size)
        test_feats, test_y = extract_layers(backbone, test, group, image_size, max_features, batch_size)
        for name in group:
            x, test_x = train_feats.pop(name), test_feats.pop(name)
            res = probe(x, train_y, test_x, test_y, num_classes, head=head, epochs=epochs, batch_size=batch_size,
                        seed=seed)
            rows.append({"layer": name, "depth": names.index(name), "shape": list(shapes[name].shape[1:]),
                         "features": int(x.shape[1]), "top1": round(res["top1"], 2)})
            del x, test_x
            if log:
                log(f"[layerwise_eval] {name}: {rows[-1]['features']} features, top-1 {rows[-1]['top1']:.2f}")
    return rows


def layerwise_table(rows: list[dict]) -> str:
    """The rows as text; with a random-init column (and the gain over it) when the rows carry one."""
    random = all("random_init_top1" in r for r in rows)
    head = f"  {'layer':<8} {'map':<14} {'features':>8} {'top-1':>7}"
    lines = [head + (f" {'random':>7} {'gain':>6}" if random else "")]
    for r in rows:
        line = f"  {r['layer']:<8} {'×'.join(map(str, r['shape'])):<14} {r['features']:>8} {r['top1']:>7.2f}"
        if random:
            line += f" {r['random_init_top1']:>7.2f} {r['top1'] - r['random_init_top1']:>+6.2f}"
        lines.append(line)
    return "\n".join(lines)


def plot_layerwise(rows: list[dict], path: str, title: str = "", others: dict | None = None,
                   baseline: list[dict] | None = None, log=print) -> str | None:
    """PNG of top-1 against depth; ``others``: {label: rows} drawn on the same axes against
    relative depth (0 = first representation layer, 1 = the last), each point named; ``baseline``:
    the same layers of a random-init backbone, dashed. None when matplotlib (the ``plots`` extra)
    is missing."""
    from ssl_tf.eval.plots import pyplot, save_top1_axes
    plt = pyplot(log)
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for label, series in {title or "run": rows, **(others or {})}.items():
        xs = [r["depth"] / max(1, len(series) - 1) if others else r["depth"] for r in series]
        ax.plot(xs, [r["top1"] for r in series], marker="o", label=label)
        if others:
            for x, r in zip(xs, series):
                ax.annotate(r["layer"], (x, r["top1"]), fontsize=6, xytext=(2, 3), textcoords="offset points")
    if baseline:
        ax.plot([r["depth"] for r in baseline], [r["top1"] for r in baseline], "k--", marker=".",
                label="random-init backbone")
    if not others:
        ax.set_xticks([r["depth"] for r in rows], [r["layer"] for r in rows], rotation=30)
    return save_top1_axes(plt, fig, ax, path, "relative depth (input → output)" if others else "layer (input → output)")
