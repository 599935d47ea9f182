"""The one training loop of every strategy: ``strategy.run(train_step)`` over a distributed stream.

Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so every phase
that trains — pretraining, fine-tuning, distillation — goes through ``train``: checkpoints every N
steps (each carrying the loss history and the method and settings that wrote it), automatic
resume, a stop on the first non-finite loss, SIGTERM handled as a preemption notice, TensorBoard
scalars, the collapse monitor and a progress bar.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from ssl_tf import backend, checkpoints
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError
from ssl_tf.runner.results import peak_rss_mb

COLLAPSE_STD = 0.1   # embedding_std below this (1 = spread out on the sphere, 0 = one point): collapsed


# A time budget re-sizes the schedules at these points: after CALIBRATION_STEPS timed steps (the
# first, traced step excluded), then when a quarter, a half and three quarters of the budget have
# passed. A late change bends the end of the cosine, so after the half it is made only when the
# loop would otherwise miss its budget by more than LATE_TOLERANCE (other work on the machine
# slowed or sped the first half: a PIRL run sized at its half ended after 17.1 of its 20 minutes).
CALIBRATION_STEPS = 20
CALIBRATION_FRACTIONS = (0.25, 0.5, 0.75)
LATE_TOLERANCE = 0.05


def budget_total(done: int, steps_per_second: float, elapsed: float, budget: float) -> int:
    """The schedule length that ends a time budget: the ``done`` steps plus those that fit in the
    ``budget − elapsed`` seconds left at ``steps_per_second`` (at least one more)."""
    return done + max(1, int(steps_per_second * max(budget - elapsed, 0.0)))


def resize_due(fractions: list, total: int, stop: int, steps_per_second: float, budget: float) -> bool:
    """Whether a calibration at the budget ``fractions`` just passed re-sizes the schedule from ``stop``
    to ``total`` steps: always up to half the budget; later only if the loop would end more than
    ``LATE_TOLERANCE`` of the ``budget`` seconds early or late."""
    if all(f <= 0.5 for f in fractions if f != "start"):
        return True
    return abs(total - stop) / max(steps_per_second, 1e-9) > LATE_TOLERANCE * budget


def _resize(model, per_epoch: int, total: int) -> None:
    """Every schedule of ``model`` (its own and its optimizers' warmup-cosine lr) to ``total`` steps."""
    from ssl_tf.optim import WarmupCosine
    model.set_schedule(per_epoch, total)
    for opt in (model.optimizer, model.fixed_optimizer, model.probe_optimizer, *model.own_optimizers.values()):
        schedule = getattr(opt, "_learning_rate", None)
        if isinstance(schedule, WarmupCosine):
            schedule.total_steps = total


def train(runner, make_model, examples: Examples, *, epochs: int, global_batch: int, make_optimizer, tag: str,
          max_steps: int | None = None, run_info: dict | None = None, minutes: float | None = None):
    """Train ``make_model()`` on ``examples`` with its view recipe; resume from ``model_dir/tag``.
    ``run_info`` (the method and settings) is stored with every checkpoint; a checkpoint written by
    another method is refused with a one-line error. ``minutes``: a time budget for the loop (the
    schedules follow the measured step rate; a resumed run keeps the length its checkpoint recorded).
    Returns (model, summary)."""
    cfg, strategy, replicas = runner.cfg, runner.strategy, runner.replicas
    keras.utils.set_random_seed(cfg.seed)
    augment = runner.augment_config()
    with tf.device("/cpu:0"):   # a plain host variable: the loop's own counter, not a replicated one
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    with strategy.scope():
        model = make_model()
        per_epoch = model.batches_per_epoch(examples, global_batch)
        total = epochs * per_epoch
        stop = min(total, max_steps) if max_steps else total
        model.set_schedule(per_epoch, total, loss_scaling=cfg.precision == "mixed_float16")
        sample = next(iter(model.input_stream(examples, augment, global_batch=global_batch // replicas,
                                              seed=cfg.seed)))
        model.build_with(sample, make_optimizer(total, per_epoch),
                         fixed_optimizer=make_optimizer(total, per_epoch, constant=True))
        parts = dict(model=model, optimizer=model.optimizer, step=step)
        if model.probe_optimizer is not None:
            parts["probe_optimizer"] = model.probe_optimizer
        if model.fixed_optimizer is not None:
            parts["fixed_optimizer"] = model.fixed_optimizer
        parts.update(model.own_optimizers)
        ckpt = tf.train.Checkpoint(**parts)
    manager = checkpoints.AtomicCheckpoints(ckpt, os.path.join(cfg.model_dir, tag), cfg.keep_checkpoints,
                                            is_chief=runner.is_chief, worker=runner.worker)
    if manager.latest:
        writer_method = written_by(manager.latest)
        if run_info and writer_method and writer_method != run_info.get("method"):
            raise SSLTFError(f"--model_dir={cfg.model_dir}: {manager.latest} was written by --method={writer_method}, "
                             f"not --method={run_info['method']}; pass --method={writer_method} to resume it, or "
                             "another --model_dir")
        try:
            manager.restore(manager.latest).assert_existing_objects_matched()
        except (tf.errors.OpError, IndexError, OSError) as e:   # IndexError: TF's reader on a truncated file
            earlier = checkpoints.steps(manager.directory)[:-1]
            raise SSLTFError(f"--model_dir={cfg.model_dir}: checkpoint {manager.latest} cannot be read, it is damaged "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:120]}); delete it to resume from "
                             f"{'step ' + str(earlier[-1]) if earlier else 'the start'}") from None
        except (AssertionError, ValueError) as e:
            raise SSLTFError(f"--model_dir={cfg.model_dir}: checkpoint {manager.latest} does not match this "
                             f"--method/--backbone/--width ({str(e).splitlines()[0][:160]}); use another "
                             "--model_dir or the flags of that run") from None
        runner.log(f"[{tag}] resumed from {manager.latest} at step {int(step)}")
    start = int(step)
    calibrations = []
    if minutes and start:
        total = int(checkpoints.metadata(manager.latest).get("total_steps", total))
        _resize(model, per_epoch, total)
        stop = min(total, max_steps) if max_steps else total
        calibrations = None                     # resumed: the recorded length stands
    elif minutes:
        stop = max_steps or 2 ** 62             # until the first calibration sizes it (--epochs: a first guess)

    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: model.input_stream(examples, augment, global_batch=global_batch, seed=cfg.seed,
                                       start_step=start, input_context=ctx))

    def traced_step():   # the schedules are constants of the trace: a new length needs a new trace
        replica_step = tf.function(model.train_step, jit_compile=runner.use_jit())

        @tf.function
        def distributed_step(batch):
            logs = strategy.run(replica_step, args=(batch,))
            return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}
        return distributed_step
    distributed_step = traced_step()

    writer = (tf.summary.create_file_writer(os.path.join(cfg.model_dir, "logs", tag)) if runner.is_chief
              else tf.summary.create_noop_writer())
    with writer.as_default(step=start):
        for name, images in view_images(sample).items():
            tf.summary.image(f"views/{name}", images, max_outputs=8)
    # The loss history up to the restored step travels with its checkpoint (results.json is
    # only written when a phase ends, so a killed run's history is in the checkpoint).
    history = checkpoints.metadata(manager.latest).get("history", []) if start else []
    bar = keras.utils.Progbar(stop, stateful_metrics=None) if cfg.progress and start < stop else None
    sums, count, logs, collapse_warnings = {}, 0, {}, []
    timed_steps, timed_seconds = 0, 0.0
    iterator = iter(dataset)
    preempted = _PreemptionNotice(enabled=runner.worker_count == 1)
    loop_start, traced = time.perf_counter(), True
    try:
        s = start
        while s < stop:
            t0 = time.perf_counter()
            logs = {k: float(v) for k, v in distributed_step(next(iterator)).items()}
            now = time.perf_counter()
            if traced:      # a step that traced the graph is not timed; the step rate counts from here
                rate_start, rate_steps, traced = now, s + 1, False
            else:
                timed_seconds += now - t0
                timed_steps += 1
            if minutes and calibrations is not None and s + 1 > rate_steps:
                elapsed = now - loop_start
                due = [f for f in CALIBRATION_FRACTIONS if elapsed >= f * minutes * 60 and f not in calibrations]
                if (calibrations and due) or (not calibrations and s + 1 - rate_steps >= CALIBRATION_STEPS):
                    calibrations += due or ["start"]
                    # wall-clock steps per second since the last trace: checkpoints and logging included
                    rate = (s + 1 - rate_steps) / max(now - rate_start, 1e-9)
                    fitted = budget_total(s + 1, rate, elapsed, minutes * 60)
                    if resize_due(due, fitted, total, rate, minutes * 60):
                        total = fitted
                        stop = min(total, max_steps) if max_steps else total
                        _resize(model, per_epoch, total)
                        distributed_step, traced = traced_step(), True
                        if bar is not None:
                            bar.target = stop
            if not all(math.isfinite(v) for v in logs.values()):
                bad = next(k for k, v in logs.items() if not math.isfinite(v))
                raise SSLTFError(f"[{tag}] {bad} is {logs[bad]} at step {s + 1}; stopped without saving; last good "
                                 f"checkpoint: {manager.latest or 'none'} (try a lower --learning_rate)")
            step.assign(s + 1)
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if (s + 1) % cfg.log_every == 0 or s + 1 == stop:
                lr = model.optimizer.learning_rate
                history.append({"step": s + 1, **logs})
                with writer.as_default(step=s + 1):
                    for k, v in logs.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("learning_rate", float(lr.numpy() if hasattr(lr, "numpy") else lr))
            if (s + 1) % cfg.checkpoint_every == 0 or s + 1 == stop or preempted.received:
                saved = manager.save(s + 1, {"history": history, "total_steps": total, **(run_info or {})})
                if preempted.received:
                    preempted.restore()
                    raise SSLTFError(f"[{tag}] stopped by {preempted.received} at step {s + 1}; checkpoint saved: "
                                     f"{saved}; run the same command again to resume")
            if (s + 1) % per_epoch == 0 or s + 1 == stop:
                means = {k: v / count for k, v in sums.items()}
                with writer.as_default(step=s + 1):
                    for k, v in means.items():
                        tf.summary.scalar(f"epoch/{k}", v)
                if runner.is_chief:
                    write_epoch_images(model, sample, writer, os.path.join(cfg.model_dir, "samples"), s + 1)
                warning = collapse_warning(means)
                if warning:
                    runner.log(f"[{tag}] epoch {(s + 1) / per_epoch:.2f}: {warning}")
                    collapse_warnings.append(warning)
                sums, count = {}, 0
            if bar is not None:
                bar.update(s + 1, values=[(k, logs[k]) for k in sorted(logs) if not k.endswith("_std")])
            s += 1
    finally:
        preempted.restore()
    writer.flush()
    summary = {"steps": int(step), "total_steps": total, "steps_per_epoch": per_epoch,
               "epochs": round(int(step) / per_epoch, 3), "global_batch": global_batch,
               "replicas": replicas, "final": logs,
               "train_images_per_sec": (round(timed_steps * global_batch / timed_seconds, 1) if timed_steps
                                        else None),
               "seconds": round(timed_seconds, 1), "loop_seconds": round(time.perf_counter() - loop_start, 1),
               "peak_rss_mb": round(peak_rss_mb(), 1), "history": history,
               "machine": backend.describe(runner.machine),
               "weights_sha256": weights_fingerprint(model)}
    if runner.worker_count > 1:
        runner.log(f"[{tag}] worker {runner.worker}/{runner.worker_count} at step {int(step)}: "
                   f"weights sha256 {summary['weights_sha256']}")
    if minutes:
        summary["budget_minutes"] = minutes
    if collapse_warnings:
        summary["collapse_warnings"] = collapse_warnings
    if not timed_steps:   # already complete (a re-run after a kill during evaluation): keep the timings
        previous = runner.results.get(tag, {})
        for key in ("train_images_per_sec", "seconds", "collapse_warnings", "machine"):
            if key in previous:
                summary[key] = previous[key]
    return model, summary


class _PreemptionNotice:
    """SIGTERM (a scheduler's preemption notice) during training: finish the step, save, stop.

    One process only: under multi-worker training the workers could see the signal at different
    steps and deadlock in the save, so there the interval checkpoints are the recovery point.
    """

    def __init__(self, enabled: bool):
        import signal
        import threading
        self.received, self._previous = None, None
        if enabled and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.received = "SIGTERM"

    def restore(self):
        import signal
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def write_epoch_images(model, batch, writer, directory: str, step: int) -> None:
    """The method's ``epoch_images`` of a training ``batch`` (BigBiGAN: samples, reconstructions), each as
    a PNG grid ``<directory>/<name>_<step>.png`` (an even number of columns: pairs stay side by side)
    and a TensorBoard image."""
    from ssl_tf.data.ops import image_grid
    images = model.epoch_images(batch)
    if not images:
        return
    os.makedirs(directory, exist_ok=True)
    for name, x in images.items():
        grid = image_grid(x, 2 * math.ceil(math.sqrt(x.shape[0]) / 2))
        tf.io.write_file(os.path.join(directory, f"{name}_{step:08d}.png"), tf.io.encode_png(grid))
        with writer.as_default(step=step):
            tf.summary.image(f"{name}", grid[None], max_outputs=1)


def weights_fingerprint(model) -> str:
    """SHA-256 of every variable of ``model`` (bitwise; equal on workers trained in lockstep)."""
    digest = hashlib.sha256()
    for v in sorted(model.weights, key=lambda v: v.path):
        digest.update(v.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v.value)).tobytes())
    return digest.hexdigest()


def collapse_warning(epoch_means: dict) -> str | None:
    """The collapse monitor's verdict on an epoch's mean logs, or None when healthy."""
    std = epoch_means.get("embedding_std")
    if std is None or std >= COLLAPSE_STD:
        return None
    rank = epoch_means.get("effective_rank")
    return (f"WARNING: embeddings are collapsing (embedding_std {std:.3f} < {COLLAPSE_STD}, effective rank "
            f"{rank:.2f}); try a lower --learning_rate, a larger --batch_size or the paper's defaults")


def written_by(checkpoint: str) -> str | None:
    """The method that wrote ``checkpoint``: recorded with it, else (runs from before checkpoints
    carried it) in the results.json of the run directory above it."""
    method = checkpoints.metadata(checkpoint).get("method")
    if method:
        return method
    path = os.path.abspath(checkpoint)
    for _ in range(4):
        path = os.path.dirname(path)
        try:
            with open(os.path.join(path, "results.json")) as f:
                return json.load(f)["config"]["method"]
        except (OSError, KeyError, ValueError, TypeError):
            continue
    return None


def _flatten_with_paths(nest, prefix: str = ""):
    """(``a/b/0``-style path, leaf) of a nest of dicts, lists and tuples."""
    if isinstance(nest, dict):
        for key in sorted(nest):
            yield from _flatten_with_paths(nest[key], f"{prefix}{key}/")
    elif isinstance(nest, (list, tuple)):
        for i, x in enumerate(nest):
            yield from _flatten_with_paths(x, f"{prefix}{i}/")
    else:
        yield prefix.rstrip("/"), nest


def view_images(batch, limit: int = 8) -> dict:
    """{name: [≤ limit, H, W, 3]} images of a training batch's views, for TensorBoard."""
    out = {}
    for path, x in _flatten_with_paths(batch):
        if "views" not in path or x.dtype != tf.float32 or x.shape.rank not in (4, 5) or x.shape[-1] != 3:
            continue
        x = x[:limit]
        if x.shape.rank == 5:       # [b, K, S, S, 3]: the first image's K views
            x = x[0]
        out[path.replace("/", "_")] = tf.clip_by_value(x, 0.0, 1.0)
    return out
