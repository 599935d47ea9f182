"""The runner: strategy, data, one training loop for every strategy, evaluation, export, results.

Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy (keras-team/keras#20585), so every
phase that trains — pretraining and fine-tuning — goes through ``Runner.fit``: a custom
loop of ``strategy.run(model.train_step)`` over ``distribute_datasets_from_function``, with
checkpoints every N steps, automatic resume, TensorBoard scalars and a progress bar.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import resource
import time

import keras
import numpy as np
import tensorflow as tf

from ssl_tf import backend, checkpoints, config as config_lib, distribute, eval as eval_lib, optim
from ssl_tf.data import pipeline, subsets, views
from ssl_tf.data.sources import Examples, load_dataset
from ssl_tf.errors import SSLTFError
from ssl_tf.export import export_classifier, export_encoder
from ssl_tf.methods import METHODS, SEMI_SUPERVISED, Classifier, Distiller, SemiSupervised, load_teacher
from ssl_tf.models import build_backbone, freeze_through, head_prefix, kernels


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict:
    import ssl_tf
    return {"ssl_tf": ssl_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "numpy": np.__version__}


class Runner:
    def __init__(self, cfg: config_lib.Config, log=print):
        self.log = log
        distribute.set_threads(cfg.intra_op_threads, cfg.inter_op_threads)
        kernels.use(cfg.cpu_kernels)   # read when layers are traced: before anything is built
        if cfg.num_cpu_devices > 1:
            distribute.split_cpu(cfg.num_cpu_devices)
        self.strategy = distribute.make_strategy(cfg.strategy, cfg.tpu)   # before any TF op (collectives)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        self.replicas = self.strategy.num_replicas_in_sync
        self.worker, self.worker_count, self.is_chief = distribute.worker_role(self.strategy)
        self.data = load_dataset(cfg.dataset, eval_spec=cfg.eval_dataset, data_dir=cfg.data_dir,
                                 val_fraction=cfg.val_fraction, seed=cfg.seed, image_size=cfg.image_size,
                                 skip_bad_images=cfg.skip_bad_images, log=log)
        cfg = config_lib.resolve(cfg, _image_side(self.data.train))
        if cfg.batch_size % self.replicas:
            raise SSLTFError(f"--batch_size={cfg.batch_size}: must be divisible by the {self.replicas} replicas "
                             f"of --strategy={cfg.strategy} (it is the global batch)")
        if cfg.jit_compile == "true" and self.replicas > 1:
            raise SSLTFError("--jit_compile=true: XLA fails under multi-replica strategies on CPU; "
                             "use --jit_compile=auto or false, or one device")
        self.cfg = cfg
        self.machine = backend.fingerprint(cfg.precision)   # every timing below is this machine's
        bf16_note = backend.bf16_note(self.machine) if cfg.precision == "mixed_bfloat16" else None
        if bf16_note:
            log(f"--precision=mixed_bfloat16: {bf16_note}")
        # Under several replicas BN is synchronised when --global_bn (SimCLR's global_bn).
        self.model_cfg = dataclasses.replace(cfg, global_bn=cfg.global_bn and self.replicas > 1)
        os.makedirs(cfg.model_dir, exist_ok=True)
        self.results_path = os.path.join(cfg.model_dir, "results.json")
        self.results = {}
        if os.path.exists(self.results_path):
            with open(self.results_path) as f:
                self.results = json.load(f)
        train = self.data.train
        self.labelled_idx = (subsets.label_fraction(train.labels, cfg.label_fraction, cfg.seed)
                             if (train.labels >= 0).any() else np.zeros([0], np.int64))
        self._encoder = None
        self._feature_cache = {}   # result key -> ((train x, y), (eval x, y))

    # ------------------------------------------------------------------ building blocks
    def build_encoder(self):
        c = self.model_cfg
        return build_backbone(c.backbone, width=c.width, image_size=c.image_size, synchronized_bn=c.global_bn,
                              input_mode=METHODS[c.method].encoder_input, precision=c.precision)

    def augment_config(self) -> views.AugmentConfig:
        c = self.cfg
        return views.AugmentConfig(image_size=c.image_size, crop_scale=(c.crop_min_scale, 1.0),
                                   color_jitter=c.color_jitter, blur_p=0.5 if c.blur else 0.0,
                                   patch_size=c.patch_size, patch_jitter=c.patch_jitter,
                                   num_copies=c.num_exemplar_copies, num_local_crops=c.num_local_crops,
                                   local_size=c.local_crop_size, global_crop_scale=(c.crop_min_scale, 1.0),
                                   local_crop_scale=(0.05, c.local_crop_scale), num_guesses=c.num_guesses)

    def _use_jit(self) -> bool:
        if self.cfg.jit_compile != "auto":
            return self.cfg.jit_compile == "true"
        return self.replicas == 1 and bool(tf.config.list_logical_devices("GPU"))

    def _save_results(self):
        if not self.is_chief:   # multi-worker: the chief writes the run's files
            return
        self.results.update(config=config_lib.to_dict(self.cfg), versions=versions(), machine=self.machine,
                            data={"train": self.data.train.name, "num_train": len(self.data.train),
                                  "eval": self.data.eval.name if self.data.eval is not None else None,
                                  "num_eval": len(self.data.eval) if self.data.eval is not None else 0,
                                  "num_classes": self.data.num_classes,
                                  "num_labelled": int(len(self.labelled_idx)),
                                  "skipped_bad_images": self.data.train.skipped +
                                  (self.data.eval.skipped if self.data.eval is not None else 0)})
        tmp = self.results_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=2, sort_keys=True)
        os.replace(tmp, self.results_path)

    # ------------------------------------------------------------------ the one training loop
    def fit(self, make_model, examples: Examples, *, epochs: int, global_batch: int, make_optimizer,
            tag: str, max_steps: int | None = None):
        """Train ``make_model()`` on ``examples`` with its view recipe; resume from ``model_dir/tag``."""
        cfg, strategy = self.cfg, self.strategy
        keras.utils.set_random_seed(cfg.seed)
        augment = self.augment_config()
        with tf.device("/cpu:0"):   # a plain host variable: the loop's own counter, not a replicated one
            step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        with strategy.scope():
            model = make_model()
            per_epoch = model.batches_per_epoch(examples, global_batch)
            total = epochs * per_epoch
            stop = min(total, max_steps) if max_steps else total
            model.total_steps, model.steps_per_epoch = total, per_epoch
            model.loss_scaling = cfg.precision == "mixed_float16"
            sample = next(iter(model.input_stream(examples, augment, global_batch=global_batch // self.replicas,
                                                  seed=cfg.seed)))
            model.build_with(sample, make_optimizer(total, per_epoch),
                             fixed_optimizer=make_optimizer(total, per_epoch, constant=True))
            parts = dict(model=model, optimizer=model.optimizer, step=step)
            if model.probe_optimizer is not None:
                parts["probe_optimizer"] = model.probe_optimizer
            if model.fixed_optimizer is not None:
                parts["fixed_optimizer"] = model.fixed_optimizer
            ckpt = tf.train.Checkpoint(**parts)
        manager = checkpoints.AtomicCheckpoints(ckpt, os.path.join(cfg.model_dir, tag), cfg.keep_checkpoints,
                                                is_chief=self.is_chief, worker=self.worker)
        if manager.latest:
            try:
                manager.restore(manager.latest).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise SSLTFError(f"--model_dir={cfg.model_dir}: checkpoint {manager.latest} does not match this "
                                 f"--method/--backbone/--width ({str(e).splitlines()[0][:160]}); use another "
                                 "--model_dir or the flags of that run") from None
            self.log(f"[{tag}] resumed from {manager.latest} at step {int(step)}")
        start = int(step)

        dataset = strategy.distribute_datasets_from_function(
            lambda ctx: model.input_stream(examples, augment, global_batch=global_batch, seed=cfg.seed,
                                           start_step=start, input_context=ctx))
        replica_step = tf.function(model.train_step, jit_compile=self._use_jit())

        @tf.function
        def distributed_step(batch):
            logs = strategy.run(replica_step, args=(batch,))
            return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

        writer = (tf.summary.create_file_writer(os.path.join(cfg.model_dir, "logs", tag)) if self.is_chief
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
        preempted = _PreemptionNotice(enabled=self.worker_count == 1)
        try:
            for s in range(start, stop):
                t0 = time.perf_counter()
                logs = {k: float(v) for k, v in distributed_step(next(iterator)).items()}
                if s > start:  # the first step traces the graph
                    timed_seconds += time.perf_counter() - t0
                    timed_steps += 1
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
                    saved = manager.save(s + 1, {"history": history})
                    if preempted.received:
                        preempted.restore()
                        raise SSLTFError(f"[{tag}] stopped by {preempted.received} at step {s + 1}; checkpoint saved: "
                                         f"{saved}; run the same command again to resume")
                if (s + 1) % per_epoch == 0 or s + 1 == stop:
                    means = {k: v / count for k, v in sums.items()}
                    with writer.as_default(step=s + 1):
                        for k, v in means.items():
                            tf.summary.scalar(f"epoch/{k}", v)
                    warning = collapse_warning(means)
                    if warning:
                        self.log(f"[{tag}] epoch {(s + 1) / per_epoch:.2f}: {warning}")
                        collapse_warnings.append(warning)
                    sums, count = {}, 0
                if bar is not None:
                    bar.update(s + 1, values=[(k, logs[k]) for k in sorted(logs) if not k.endswith("_std")])
        finally:
            preempted.restore()
        writer.flush()
        summary = {"steps": int(step), "total_steps": total, "steps_per_epoch": per_epoch,
                   "epochs": round(int(step) / per_epoch, 3), "global_batch": global_batch,
                   "replicas": self.replicas, "final": logs,
                   "train_images_per_sec": (round(timed_steps * global_batch / timed_seconds, 1) if timed_steps
                                            else None),
                   "seconds": round(timed_seconds, 1), "peak_rss_mb": round(peak_rss_mb(), 1), "history": history,
                   "machine": backend.describe(self.machine),
                   "weights_sha256": weights_fingerprint(model)}
        if self.worker_count > 1:
            self.log(f"[{tag}] worker {self.worker}/{self.worker_count} at step {int(step)}: "
                     f"weights sha256 {summary['weights_sha256']}")
        if collapse_warnings:
            summary["collapse_warnings"] = collapse_warnings
        if not timed_steps:   # already complete (a re-run after a kill during evaluation): keep the timings
            previous = self.results.get(tag, {})
            for key in ("train_images_per_sec", "seconds", "collapse_warnings", "machine"):
                if key in previous:
                    summary[key] = previous[key]
        return model, summary

    def _fraction_labelled_train(self) -> Examples:
        """Every training image, labelled only within --label_fraction (the rest: label -1)."""
        train = self.data.train
        labels = np.full(len(train), -1, np.int64)
        labels[self.labelled_idx] = train.labels[self.labelled_idx]
        return dataclasses.replace(train, labels=labels)

    def _classifier_training(self, num_examples: int):
        """(global batch, optimizer factory) of fine-tuning and distillation: --batch_size capped at
        the examples, Nesterov SGD at --ft_learning_rate × batch/256 with cosine decay (SimCLR B.5)."""
        batch = min(self.cfg.batch_size, num_examples // self.replicas * self.replicas)

        def make_optimizer(total, per_epoch, constant=False):
            lr = optim.scale_learning_rate(self.cfg.ft_learning_rate, batch, "linear")
            return keras.optimizers.SGD(optim.WarmupCosine(lr, 0, total), momentum=0.9, nesterov=True)
        return batch, make_optimizer

    # ------------------------------------------------------------------ modes
    def pretrain(self):
        cfg = self.cfg
        method = METHODS[cfg.method]
        train = self.data.train
        if cfg.method in SEMI_SUPERVISED and not len(self.labelled_idx):
            raise SSLTFError(f"--method={cfg.method} needs labelled training data; {train.name} has no labels "
                             "(use a labelled source, e.g. npz:PATH with labels)")
        train = self._fraction_labelled_train()

        def make_optimizer(total, per_epoch, constant=False):
            lr = optim.scale_learning_rate(cfg.learning_rate, cfg.batch_size, cfg.lr_scaling)
            schedule = lr if constant else optim.WarmupCosine(lr, round(cfg.warmup_epochs * per_epoch), total)
            return optim.build_optimizer(cfg.optimizer, schedule, cfg.weight_decay, cfg.momentum)
        def make_model():
            encoder = self.build_encoder()
            if cfg.init_from:
                self.load_encoder(encoder, cfg.init_from, "--init_from")
            return method.from_config_obj(self.model_cfg, encoder, self.data.num_classes, num_examples=len(train))
        model, summary = self.fit(make_model, train, epochs=cfg.epochs, global_batch=cfg.batch_size,
                                  make_optimizer=make_optimizer, tag="pretrain", max_steps=cfg.max_steps)
        self._encoder = getattr(model, method.eval_encoder_attr)
        self._feature_cache.clear()
        if isinstance(model, SemiSupervised) and self.data.eval is not None:
            summary["top1"] = self.classifier_top1(model)
            summary["ema_top1"] = self.classifier_top1(model.ema_logits)
        self.results["pretrain"] = summary
        self._save_results()
        return summary

    def encoder(self):
        """The pretrained encoder: from this process, else from --checkpoint / the latest in model_dir."""
        if self._encoder is not None:
            return self._encoder
        with self.strategy.scope():
            encoder = self.build_encoder()
        self.load_encoder(encoder, self.cfg.checkpoint or self.cfg.model_dir,
                                 "--checkpoint" if self.cfg.checkpoint else "--model_dir")
        self._encoder = encoder
        return encoder

    def load_encoder(self, encoder, path: str, flag: str) -> str:
        """Restore ``encoder`` from a pretraining checkpoint, or the latest one in a run directory
        (or its ``pretrain/``); the method's evaluation network (DINO: the teacher) is read."""
        shown = path
        if os.path.isdir(path) and not os.path.exists(os.path.join(path, checkpoints.PREFIX + ".index")):
            nested = os.path.join(path, "pretrain")
            checkpoint = checkpoints.latest(nested if os.path.isdir(nested) else path)
        else:
            checkpoint = checkpoints.resolve(path)
        if not checkpoint:
            raise SSLTFError(f"{flag}={shown}: no pretraining checkpoint found; run --mode=pretrain first "
                             "or pass --checkpoint")
        run_dir = next((d for d in _parents(checkpoint, 4) if os.path.exists(os.path.join(d, "results.json"))), None)
        path = checkpoint
        method = self.cfg.method
        try:
            with open(os.path.join(run_dir, "results.json")) as f:
                method = json.load(f)["config"]["method"]
        except (OSError, KeyError, ValueError, TypeError):
            pass
        attr = METHODS[method].eval_encoder_attr if method in METHODS else "encoder"
        try:
            status = tf.train.Checkpoint(model=tf.train.Checkpoint(**{attr: encoder})).read(path)
            status.expect_partial().assert_existing_objects_matched()
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise SSLTFError(f"{flag}={path}: does not hold a {self.cfg.backbone} encoder of "
                             f"width {self.cfg.width} ({str(e).splitlines()[0][:200]})") from None
        self.log(f"loaded encoder from {path}")
        return path

    def classifier_top1(self, classify) -> float:
        """Top-1 (%) of ``classify`` (images -> logits) on the evaluation set."""
        logits, labels = eval_lib.extract(classify, self.data.eval, self.cfg.image_size, self.cfg.eval_batch_size)
        return round(float(np.mean(np.argmax(logits, -1) == labels) * 100), 2)

    def random_encoder(self):
        keras.utils.set_random_seed(self.cfg.seed)
        return self.build_encoder()

    def _encoders_to_evaluate(self):
        """(result key, encoder factory): the pretrained one, and a random-init one when --random_baseline."""
        yield "top1", self.encoder
        if self.cfg.random_baseline:
            yield "random_init_top1", self.random_encoder

    def _eval_sets(self, tag: str):
        if self.data.eval is None or not len(self.labelled_idx):
            raise SSLTFError(f"--mode={tag} needs labelled training data and an evaluation set; pass "
                             "--eval_dataset with a labelled source")
        return self.data.train.subset(self.labelled_idx), self.data.eval

    def _features(self, key, make_encoder, tag):
        """Frozen features of the labelled train subset and the eval set, extracted once per run
        and encoder (linear_eval and knn share them)."""
        if key not in self._feature_cache:
            train, test = self._eval_sets(tag)
            c, encoder = self.cfg, make_encoder()
            self._feature_cache[key] = (eval_lib.extract(encoder, train, c.image_size, c.eval_batch_size),
                                        eval_lib.extract(encoder, test, c.image_size, c.eval_batch_size))
        return self._feature_cache[key]

    def linear_eval(self):
        """The offline probe (--eval_head linear|mlp); results under linear_eval / mlp_eval."""
        c = self.cfg
        out = {"head": c.eval_head, "epochs": c.eval_epochs, "augment": c.probe_augment,
               "label_fraction": c.label_fraction}
        for key, make in self._encoders_to_evaluate():
            if c.probe_augment:
                train, test = self._eval_sets("linear_eval")
                res = eval_lib.augmented_probe(make(), train, test, self.data.num_classes, image_size=c.image_size,
                                               head=c.eval_head, epochs=c.eval_epochs, batch_size=c.eval_batch_size,
                                               learning_rate=c.probe_lr, seed=c.seed,
                                               crop_scale=(c.crop_min_scale, 1.0))
                sizes = dict(num_train=len(train), num_eval=len(test))
            else:
                (trx, try_), (tex, tey) = self._features(key, make, "linear_eval")
                res = eval_lib.probe(trx, try_, tex, tey, self.data.num_classes, head=c.eval_head,
                                     epochs=c.eval_epochs, batch_size=c.eval_batch_size, learning_rate=c.probe_lr,
                                     seed=c.seed)
                sizes = dict(num_train=len(trx), num_eval=len(tex))
            out[key] = round(res["top1"], 2)
            if key == "top1":
                out["train_top1"] = round(res["train_top1"], 2)
                out.update(sizes)
        self.results[f"{c.eval_head}_eval"] = out
        self._save_results()
        return out

    def knn(self):
        c = self.cfg
        out = {"k": c.knn_k, "temperature": c.knn_temperature}
        for key, make in self._encoders_to_evaluate():
            (trx, try_), (tex, tey) = self._features(key, make, "knn")
            out[key] = round(eval_lib.knn_top1(trx, try_, tex, tey, self.data.num_classes, c.knn_k,
                                               c.knn_temperature), 2)
        self.results["knn"] = out
        self._save_results()
        return out

    def layerwise_eval(self):
        """A probe on every representation layer of the frozen backbone (revisiting paper, Fig. 4)."""
        c = self.cfg
        train, test = self._eval_sets("layerwise_eval")
        rows = eval_lib.layerwise(self.encoder(), train, test, self.data.num_classes, image_size=c.image_size,
                                  max_features=c.layerwise_features, head=c.eval_head, epochs=c.eval_epochs,
                                  batch_size=c.eval_batch_size, seed=c.seed, log=self.log)
        plot = os.path.join(c.model_dir, "layerwise.png")
        plot = eval_lib.plot_layerwise(rows, plot, title=f"{c.method} · {c.backbone}×{c.width} · {c.eval_head} probe",
                                       log=self.log)
        out = {"head": c.eval_head, "epochs": c.eval_epochs, "max_features": c.layerwise_features,
               "layers": rows, "plot": plot}
        self.log(eval_lib.layerwise_table(rows))
        self.results["layerwise_eval"] = out
        self._save_results()
        return out

    def _pretrained_projection(self, encoder, layers: int):
        """The first ``layers`` layers of the pretraining run's projection head, restored."""
        if layers == 0:
            return None
        c = self.model_cfg
        method = METHODS[c.method].from_config_obj(c, encoder, self.data.num_classes, num_examples=len(self.data.train))
        head = getattr(method, "projector", None) or getattr(method, "head", None)
        if not isinstance(head, keras.Sequential):
            raise SSLTFError(f"--ft_proj_selector={layers}: --method={c.method} has no projection MLP to fine-tune "
                             "from; use 0")
        head(tf.zeros([1, encoder.output_shape[-1]]), training=False)
        path = checkpoints.resolve(self.cfg.checkpoint or os.path.join(self.cfg.model_dir, "pretrain"))
        if not path:
            raise SSLTFError(f"--ft_proj_selector={layers}: no pretraining checkpoint holding the projection head in "
                             f"{self.cfg.checkpoint or self.cfg.model_dir}")
        name = "projector" if getattr(method, "projector", None) is head else "head"
        tf.train.Checkpoint(model=tf.train.Checkpoint(**{name: head})).read(path).expect_partial() \
            .assert_existing_objects_matched()
        try:
            return head_prefix(head, layers)
        except ValueError as e:
            raise SSLTFError(f"--ft_proj_selector={layers}: {e}") from None

    def finetune(self):
        """SimCLRv2-style fine-tuning on --label_fraction of the labels; results under
        finetune[<percent>%]; the classifier is exported to <model_dir>/classifier (a teacher)."""
        c = self.cfg
        train, test = self._eval_sets("finetune")
        pretrained = self.encoder()
        batch, make_optimizer = self._classifier_training(len(train))
        frozen = []

        def make_model():
            enc = self.build_encoder()
            enc.set_weights(pretrained.get_weights())
            proj = self._pretrained_projection(enc, c.ft_proj_selector)
            frozen.extend(freeze_through(enc, c.fine_tune_after_block))
            return Classifier(enc, self.data.num_classes, zero_init_head=c.ft_zero_init, proj=proj)
        fraction = f"{100 * c.label_fraction:g}%"
        model, summary = self.fit(make_model, train, epochs=c.ft_epochs, global_batch=batch,
                                  make_optimizer=make_optimizer, tag=f"finetune_{fraction[:-1]}pct")
        summary.update(top1=self.classifier_top1(model), label_fraction=c.label_fraction, num_labelled=len(train),
                       proj_selector=c.ft_proj_selector, fine_tune_after_block=c.fine_tune_after_block,
                       frozen_layers=len(frozen),
                       classifier=self._write_export(export_classifier, model, "classifier"))
        self.results.setdefault("finetune", {})[fraction] = summary
        self._save_results()
        return summary

    def distill(self):
        """SimCLRv2 distillation: the teacher (--teacher, default the fine-tuned classifier) labels
        every training image; a student (--student_backbone, --student_width) learns its softened
        predictions, optionally mixed with the labels (--distill_alpha)."""
        c = self.cfg
        path = c.teacher or os.path.join(c.model_dir, "classifier")
        if not (path.endswith(".keras") and os.path.isfile(path)) and \
                not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise SSLTFError(f"--teacher={path}: not a classifier SavedModel (no saved_model.pb) nor a .keras file; "
                             "run --mode=finetune first or pass --teacher=DIR written by it")
        train = self._fraction_labelled_train()
        batch, make_optimizer = self._classifier_training(len(train))

        def make_model():
            student = build_backbone(c.student_backbone, width=c.student_width, image_size=c.image_size,
                                     synchronized_bn=self.model_cfg.global_bn, precision=c.precision)
            return Distiller(student, self.data.num_classes, load_teacher(path), temperature=c.distill_temperature,
                             alpha=c.distill_alpha)
        model, summary = self.fit(make_model, train, epochs=c.distill_epochs, global_batch=batch,
                                  make_optimizer=make_optimizer, tag="distill")
        summary.update(top1=self.classifier_top1(model), teacher_top1=self.classifier_top1(model.teacher_logits),
                       teacher=path, student=f"{c.student_backbone}×{c.student_width}",
                       temperature=c.distill_temperature, alpha=c.distill_alpha)
        self.results["distill"] = summary
        self._save_results()
        return summary

    def export(self):
        path = self._write_export(export_encoder, self.encoder(), "export")
        out = {"path": path, "feature_dim": int(self.encoder().output_shape[-1]),
               "signatures": ["serving_default", "serve_bytes"]}
        self.results["export"] = out
        self._save_results()
        return out

    def _write_export(self, write, model, name: str) -> str:
        """``write`` ``model`` to ``model_dir/name`` (atomically); other workers than the chief skip."""
        path = os.path.join(self.cfg.model_dir, name)
        return write(model, path, self.cfg.image_size) if self.is_chief else path

    def report(self):
        """A Markdown table of --report_runs (default: this model_dir, or its subdirectories)."""
        paths = [p for p in (self.cfg.report_runs or "").split(",") if p] or [self.cfg.model_dir]
        table = eval_lib.report(paths)
        path = os.path.join(self.cfg.model_dir, "report.md")
        with open(path, "w") as f:
            f.write(table + "\n")
        self.log(table)
        self.results["report"] = {"path": path, "runs": paths}
        return table

    def plots(self) -> list[str]:
        """PNGs in <model_dir>/plots: the training curves of every phase that trained, and, when this
        process extracted evaluation features, the 2-D embedding maps and a retrieval grid."""
        c = self.cfg
        out_dir = os.path.join(c.model_dir, "plots")
        os.makedirs(out_dir, exist_ok=True)
        written = []
        title = f"{c.method} · {c.backbone}×{c.width}"
        phases = {"pretrain": self.results.get("pretrain"), "distill": self.results.get("distill"),
                  **{f"finetune_{k[:-1]}pct": v for k, v in self.results.get("finetune", {}).items()}}
        for tag, summary in phases.items():
            if summary and summary.get("history"):
                path = eval_lib.plots.training_curves(summary["history"], os.path.join(out_dir, f"curves_{tag}.png"),
                                                      f"{title} · {tag}", log=self.log)
                written += [path] if path else []
        if "top1" in self._feature_cache:
            _, (feats, labels) = self._feature_cache["top1"]
            written += eval_lib.plots.embedding_maps(feats, labels, os.path.join(out_dir, "embedding"), title,
                                                     seed=c.seed, log=self.log)
            n = min(len(labels), 1000)
            images = np.concatenate([x.numpy() for x, _ in pipeline.eval_batches(
                self.data.eval.subset(np.arange(n)), c.image_size, c.eval_batch_size)])
            written.append(eval_lib.plots.retrieval_grid(images, feats[:n], labels[:n],
                                                         os.path.join(out_dir, "retrieval.png")))
        self.results["plots"] = written
        return written

    def run(self):
        start, seconds = time.perf_counter(), {}
        steps = [(mode, getattr(self, mode)) for mode in self.cfg.modes]
        if self.cfg.plots and set(self.cfg.modes) - {"export", "report"}:
            steps.append(("plots", self.plots))
        for name, step in steps:
            begun = time.perf_counter()
            step()
            seconds[name] = round(time.perf_counter() - begun, 1)
        # where this process's time went (start-up and data loading before Runner.run excluded)
        self.results["seconds_by_step"] = dict(seconds, total=round(time.perf_counter() - start, 1))
        self._save_results()
        return self.results


COLLAPSE_STD = 0.1   # embedding_std below this (1 = spread out on the sphere, 0 = one point): collapsed


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


def _parents(path: str, levels: int):
    path = os.path.abspath(path)
    for _ in range(levels):
        path = os.path.dirname(path)
        yield path


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


def view_images(batch, limit: int = 8) -> dict:
    """{name: [≤ limit, H, W, 3]} images of a training batch's views, for TensorBoard."""
    out = {}
    from tensorflow.python.util import nest
    for path, x in nest.flatten_with_joined_string_paths(batch):
        if "views" not in path or x.dtype != tf.float32 or x.shape.rank not in (4, 5) or x.shape[-1] != 3:
            continue
        x = x[:limit]
        if x.shape.rank == 5:       # [b, K, S, S, 3]: the first image's K views
            x = x[0]
        out[path.replace("/", "_")] = tf.clip_by_value(x, 0.0, 1.0)
    return out


def _image_side(examples: Examples) -> int | None:
    if examples.images is not None:
        return int(examples.images.shape[1])
    return None


def results_table(results: dict) -> str:
    """The short human summary printed at the end of a run."""
    rows = []
    if "pretrain" in results:
        p = results["pretrain"]
        rows.append(("pretrain steps / epochs", f"{p['steps']} / {p['epochs']}"))
        rows.append(("train images/s", f"{p['train_images_per_sec']}"))
        if "probe_acc" in p.get("final", {}):
            rows.append(("online probe top-1 (train views, last step)", f"{100 * p['final']['probe_acc']:.2f}"))
        if "ema_top1" in p:
            rows.append(("classifier top-1 / EMA classifier top-1", f"{p['top1']:.2f} / {p['ema_top1']:.2f}"))
    for key in ("linear_eval", "mlp_eval"):
        if key in results:
            r = results[key]
            rows.append((f"{r['head']} probe top-1", f"{r['top1']:.2f}"))
            if "random_init_top1" in r:
                rows.append((f"{r['head']} probe top-1, random-init backbone", f"{r['random_init_top1']:.2f}"))
    if "knn" in results:
        r = results["knn"]
        rows.append((f"kNN top-1 (k={r['k']}, T={r['temperature']})", f"{r['top1']:.2f}"))
        if "random_init_top1" in r:
            rows.append(("kNN top-1, random-init backbone", f"{r['random_init_top1']:.2f}"))
    if "layerwise_eval" in results:
        r = results["layerwise_eval"]
        best = max(r["layers"], key=lambda row: row["top1"])
        rows.append((f"layer-wise {r['head']} probe: best layer", f"{best['layer']} ({best['top1']:.2f})"))
    for fraction, r in results.get("finetune", {}).items():
        rows.append((f"fine-tune top-1 ({fraction} labels)", f"{r['top1']:.2f}"))
    if "distill" in results:
        r = results["distill"]
        rows.append((f"distilled student {r['student']} top-1 (teacher)", f"{r['top1']:.2f} ({r['teacher_top1']:.2f})"))
    if results.get("plots"):
        rows.append(("plots", f"{len(results['plots'])} PNG in {os.path.dirname(results['plots'][0])}"))
    if "export" in results:
        rows.append(("SavedModel", results["export"]["path"]))
    if "seconds_by_step" in results:   # where the time went
        secs = results["seconds_by_step"]
        rows.append(("seconds (" + ", ".join(k for k in secs if k != "total") + ")",
                     " + ".join(f"{v:g}" for k, v in secs.items() if k != "total") + f" = {secs['total']:g}"))
    width = max((len(a) for a, _ in rows), default=10)
    return "\n".join(f"  {a:<{width}}  {b}" for a, b in rows)
