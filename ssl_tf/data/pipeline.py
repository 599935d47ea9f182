"""Input pipelines: a deterministic, resumable training stream and ordered eval batches.

The training stream is a function of (seed, step) only: example ``g`` of the infinite
stream is ``perm_epoch[g mod N]`` with ``epoch = g // N`` and a per-epoch stateless
permutation, and its augmentation seed is ``(seed, g)``. Resuming at step ``s`` starts
the stream at ``g = s * global_batch`` — same order, same views, no replay.

Under ``tf.distribute`` every input pipeline takes its slice of each *global* batch, so
any number of workers and replicas sees exactly the batches one device would.
"""
from __future__ import annotations

import tensorflow as tf

from ssl_tf.data import views as views_lib
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError

_FOREVER = 2 ** 62


def steps_per_epoch(examples: Examples, global_batch: int) -> int:
    if len(examples) < global_batch:
        raise SSLTFError(f"--batch_size={global_batch} is larger than the training set "
                         f"({len(examples)} examples of {examples.name}); use a smaller --batch_size")
    return len(examples) // global_batch


def _indexed_stream(examples: Examples, seed: int, start: int, shuffle_buffer: int):
    """(g, image, label, index) from stream position ``start`` on."""
    n = len(examples)
    if examples.images is not None:
        images = tf.constant(examples.images)
        labels = tf.constant(examples.labels)

        def epoch_order(epoch):
            perm = tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch]))
            return tf.data.Dataset.from_tensor_slices(perm)
        order = tf.data.Dataset.range(start // n, _FOREVER).flat_map(epoch_order).skip(start % n)
        ds = tf.data.Dataset.zip(tf.data.Dataset.range(start, _FOREVER), order)
        return ds.map(lambda g, i: (g, tf.gather(images, i), tf.gather(labels, i), i),
                      num_parallel_calls=tf.data.AUTOTUNE)
    # Streamed sources cannot be indexed: a seeded shuffle buffer over a repeated stream.
    ds = examples.as_dataset().enumerate().repeat()
    ds = ds.shuffle(min(shuffle_buffer, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.enumerate().skip(start)
    return ds.map(lambda g, item: (g, item[1][0], item[1][1], item[0]))


def train_stream(examples: Examples, view_fn, *, global_batch: int, seed: int, start_step: int = 0,
                 input_context: tf.distribute.InputContext | None = None, shuffle_buffer: int = 10_000):
    """Per-replica batches of ``{'views', 'label', 'index'}`` for this input pipeline."""
    pipelines = input_context.num_input_pipelines if input_context else 1
    pipe = input_context.input_pipeline_id if input_context else 0
    per_replica = input_context.get_per_replica_batch_size(global_batch) if input_context else global_batch
    per_pipe = global_batch // pipelines
    ds = _indexed_stream(examples, seed, start_step * global_batch, shuffle_buffer)
    if pipelines > 1:
        ds = ds.batch(global_batch, drop_remainder=True)
        ds = ds.map(lambda *t: tuple(x[pipe * per_pipe:(pipe + 1) * per_pipe] for x in t)).unbatch()

    def make_views(g, image, label, index):
        seed_pair = tf.stack([tf.cast(seed, tf.int64), g])
        return {"views": view_fn(image, seed_pair), "label": label, "index": index}
    ds = ds.map(make_views, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(per_replica, drop_remainder=True)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def semi_stream(examples: Examples, labelled_view_fn, unlabelled_view_fn, *, global_batch: int, mu: int, seed: int,
                start_step: int = 0, input_context: tf.distribute.InputContext | None = None):
    """FixMatch/MixMatch batches ``{'labelled': {views, label, index}, 'unlabelled': {views, label,
    index}}``: ``global_batch`` labelled examples (label >= 0) and ``mu × global_batch`` images of the
    whole training set (labels unused), two independent resumable streams."""
    import numpy as np
    labelled = examples.subset(np.flatnonzero(examples.labels >= 0))
    if len(labelled) < global_batch:
        raise SSLTFError(f"--batch_size={global_batch}: larger than the {len(labelled)} labelled examples of "
                         f"{examples.name} (raise --label_fraction or lower --batch_size)")
    first = train_stream(labelled, labelled_view_fn, global_batch=global_batch, seed=seed, start_step=start_step,
                         input_context=input_context)
    second = train_stream(examples, unlabelled_view_fn, global_batch=global_batch * mu, seed=seed + 1,
                          start_step=start_step, input_context=input_context)
    return tf.data.Dataset.zip(first, second).map(lambda a, b: {"labelled": a, "unlabelled": b})


def eval_batches(examples: Examples, image_size: int, batch_size: int = 256):
    """Batches of (eval-preprocessed image, label) in source order."""
    ds = examples.as_dataset().map(lambda x, y: (views_lib.eval_view(x, image_size), y),
                                   num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
