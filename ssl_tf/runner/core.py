"""``Runner``: the strategy, the data and the resolved settings of one ``ssl-tf`` run, the
building blocks every mode shares, and ``run`` — each of ``--mode``'s steps in order.

The modes live one per module (pretrain, evaluate, finetune, distill, export, report), the
training loop in ``loop`` and the run's record in ``results``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import time
from typing import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from ssl_tf import backend, checkpoints, config as config_lib, distribute, eval as eval_lib, optim
from ssl_tf.data import subsets, views
from ssl_tf.data.sources import Examples, load_dataset
from ssl_tf.errors import SSLTFError
from ssl_tf.methods import METHODS
from ssl_tf.models import backbone_builder, kernels
from ssl_tf.runner import distill, evaluate, export, finetune, lock, pretrain, report, results
from ssl_tf.runner.loop import written_by


class Runner:
    """One run: ``Runner(Config(...)).run()`` does what ``ssl-tf`` does with the same settings."""

    def __init__(self, cfg: config_lib.Config, log: Callable[[str], None] = print):
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
        self.method = METHODS[cfg.method]
        self.machine = backend.fingerprint(cfg.precision)   # every timing below is this machine's
        bf16_note = backend.bf16_note(self.machine) if cfg.precision == "mixed_bfloat16" else None
        if bf16_note:
            log(f"--precision=mixed_bfloat16: {bf16_note}")
        # Under several replicas BN is synchronised when --global_bn (SimCLR's global_bn).
        self.model_cfg = dataclasses.replace(cfg, global_bn=cfg.global_bn and self.replicas > 1)
        _usable_run_dir(cfg.model_dir)
        self._lock_depth = 0
        self.results_path = os.path.join(cfg.model_dir, "results.json")
        self.results = results.load(self.results_path)
        train = self.data.train
        self.labelled_idx = (subsets.label_fraction(train.labels, cfg.label_fraction, cfg.seed)
                             if (train.labels >= 0).any() else np.zeros([0], np.int64))
        self._encoder = None
        self.feature_cache = {}   # result key -> ((train x, y), (eval x, y))

    # ------------------------------------------------------------------ the modes
    MODES = {"pretrain": pretrain.run, "linear_eval": evaluate.linear_eval, "knn": evaluate.knn,
             "layerwise_eval": evaluate.layerwise_eval, "finetune": finetune.run, "distill": distill.run,
             "export": export.run, "report": report.run}

    @contextlib.contextmanager
    def locked(self):
        """Hold ``model_dir/.lock`` (the chief, for multi-worker runs) while a step runs: another process
        on the same directory is refused in one line until this one is done."""
        if not self.is_chief or self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        path = lock.acquire(self.cfg.model_dir)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            lock.release(path)

    def _step(self, mode: str):
        with self.locked():
            return self.MODES[mode](self)

    def pretrain(self) -> dict:
        return self._step("pretrain")

    def linear_eval(self) -> dict:
        return self._step("linear_eval")

    def knn(self) -> dict:
        return self._step("knn")

    def layerwise_eval(self) -> dict:
        return self._step("layerwise_eval")

    def finetune(self) -> dict:
        return self._step("finetune")

    def distill(self) -> dict:
        return self._step("distill")

    def export(self) -> dict:
        return self._step("export")

    def report(self) -> str:
        return self._step("report")

    def plots(self) -> list[str]:
        return results.plots(self)

    def run(self) -> dict:
        """Every step of --mode in order (then the plots); returns results.json's content."""
        with self.locked():
            return self._run()

    def _run(self) -> dict:
        start, seconds = time.perf_counter(), {}
        steps = [(mode, self.MODES[mode]) for mode in self.cfg.modes]
        evaluating = [m for m in self.cfg.modes if m in ("linear_eval", "knn", "layerwise_eval", "finetune")]
        if evaluating:   # before any training: a run that cannot evaluate stops now, not after pretraining
            self.eval_sets(evaluating[0])
        if self.cfg.plots and set(self.cfg.modes) - {"export", "report"}:
            steps.append(("plots", results.plots))
        for name, step in steps:
            begun = time.perf_counter()
            step(self)
            seconds[name] = round(time.perf_counter() - begun, 1)
        # where this process's time went (start-up and data loading before Runner.run excluded)
        self.results["seconds_by_step"] = dict(seconds, total=round(time.perf_counter() - start, 1))
        results.save(self)
        return self.results

    def derived(self, **changes) -> "Runner":
        """Another run on this one's strategy and data, with ``changes`` to the settings (its own
        ``model_dir``): a run that must pretrain before this one (``SSLMethod.prior_runs``). The method
        parameters carry over, as resolved here."""
        args = {**(dataclasses.asdict(self.cfg.params) if self.cfg.params is not None else {}),
                **{k: changes.pop(k) for k in list(changes) if k not in self._SHARED}}
        cfg = config_lib.resolve(dataclasses.replace(self.cfg, params=None, method_args=args, mode="pretrain",
                                                     **changes), self.cfg.image_size)
        child = copy.copy(self)
        _usable_run_dir(cfg.model_dir)
        child.cfg, child.method = cfg, METHODS[cfg.method]
        child.model_cfg = dataclasses.replace(cfg, global_bn=cfg.global_bn and self.replicas > 1)
        child.results_path = os.path.join(cfg.model_dir, "results.json")
        child.results = results.load(child.results_path)
        child._lock_depth, child._encoder, child.feature_cache = 0, None, {}
        return child

    _SHARED = frozenset(f.name for f in dataclasses.fields(config_lib.Config))

    # ------------------------------------------------------------------ building blocks
    def build_encoder(self) -> keras.Model:
        c = self.model_cfg
        backbone = backbone_builder(c.backbone, width=c.width, synchronized_bn=c.global_bn,
                                    input_mode=self.method.encoder_input, precision=c.precision)
        return self.method.make_encoder(backbone, c)

    def augment_config(self) -> views.AugmentConfig:
        """The shared augmentation settings and what the method's parameters add (patches, crops …)."""
        c = self.cfg
        shared = dict(image_size=c.image_size, crop_scale=(c.crop_min_scale, 1.0), color_jitter=c.color_jitter,
                      blur_p=0.5 if c.blur else 0.0, global_crop_scale=(c.crop_min_scale, 1.0))
        return views.AugmentConfig(**shared, **c.params.augment())

    def use_jit(self) -> bool:
        if self.cfg.jit_compile != "auto":
            return self.cfg.jit_compile == "true"
        return self.replicas == 1 and bool(tf.config.list_logical_devices("GPU"))

    def run_info(self, phase: str = "pretrain") -> dict:
        """What a checkpoint directory records about the run that wrote it."""
        return {"method": self.cfg.method, "phase": phase, "config": config_lib.to_dict(self.cfg)}

    def fraction_labelled_train(self) -> Examples:
        """Every training image, labelled only within --label_fraction (the rest: label -1)."""
        train = self.data.train
        labels = np.full(len(train), -1, np.int64)
        labels[self.labelled_idx] = train.labels[self.labelled_idx]
        return dataclasses.replace(train, labels=labels)

    def classifier_training(self, num_examples: int):
        """(global batch, optimizer factory) of fine-tuning and distillation: --ft_batch_size, by default
        --batch_size made small enough for ``MIN_FT_STEPS`` steps per epoch, and at most the
        examples; Nesterov SGD at --ft_learning_rate × batch/256 with cosine decay (SimCLR B.5)."""
        c, r = self.cfg, self.replicas
        wanted = c.ft_batch_size or min(c.batch_size, max(MIN_FT_BATCH, num_examples // MIN_FT_STEPS))
        # the chosen batch even per replica: oneDNN (TensorFlow 2.21) corrupts the heap in training steps of
        # ResNets whose stem has fewer than 16 channels (×0.125 and narrower) at odd batch sizes
        multiple = r if c.ft_batch_size or wanted < 2 * r else 2 * r
        batch = max(multiple, min(wanted, num_examples) // multiple * multiple)

        def make_optimizer(total, per_epoch, constant=False):
            lr = optim.scale_learning_rate(c.ft_learning_rate, batch, "linear")
            return keras.optimizers.SGD(optim.WarmupCosine(lr, 0, total), momentum=0.9, nesterov=True)
        return batch, make_optimizer

    def encoder(self) -> keras.Model:
        """The pretrained encoder: from this process, else from --checkpoint / the latest in model_dir."""
        if self._encoder is not None:
            return self._encoder
        with self.strategy.scope():
            encoder = self.build_encoder()
        self.load_encoder(encoder, self.cfg.checkpoint or self.cfg.model_dir,
                          "--checkpoint" if self.cfg.checkpoint else "--model_dir")
        self._encoder = encoder
        return encoder

    def set_encoder(self, encoder: keras.Model) -> None:
        self._encoder = encoder
        self.feature_cache.clear()

    def load_encoder(self, encoder: keras.Model, path: str, flag: str) -> str:
        """Restore ``encoder`` from a pretraining checkpoint, or the latest one in a run directory
        (or its ``pretrain/``); the evaluation network of the method that wrote it (DINO: the
        teacher) is read."""
        shown = path
        checkpoint = checkpoints.pretraining_checkpoint(path)
        if not checkpoint:
            raise SSLTFError(f"{flag}={shown}: no pretraining checkpoint found; run --mode=pretrain first "
                             "or pass --checkpoint")
        method = written_by(checkpoint) or self.cfg.method
        attr = METHODS[method].eval_encoder_attr if method in METHODS else "encoder"
        try:
            checkpoints.read_encoder(encoder, checkpoint, attr)
        except (tf.errors.OpError, AssertionError, ValueError) as e:
            raise SSLTFError(f"{flag}={checkpoint}: does not hold a {self.cfg.backbone} encoder of "
                             f"width {self.cfg.width} ({str(e).splitlines()[0][:200]})") from None
        self.log(f"loaded encoder from {checkpoint}")
        return checkpoint

    def classifier_top1(self, classify) -> float:
        """Top-1 (%) of ``classify`` (images -> logits) on the evaluation set."""
        logits, labels = eval_lib.extract(classify, self.data.eval, self.cfg.image_size, self.cfg.eval_batch_size)
        return round(float(np.mean(np.argmax(logits, -1) == labels) * 100), 2)

    def random_encoder(self) -> keras.Model:
        keras.utils.set_random_seed(self.cfg.seed)
        return self.build_encoder()

    def encoders_to_evaluate(self) -> Iterator[tuple[str, Callable[[], keras.Model]]]:
        """(result key, encoder factory): the pretrained one, and a random-init one when --random_baseline."""
        yield "top1", self.encoder
        if self.cfg.random_baseline:
            yield "random_init_top1", self.random_encoder

    def eval_sets(self, tag: str) -> tuple[Examples, Examples]:
        if self.data.eval is None or not len(self.labelled_idx):
            raise SSLTFError(f"--mode={tag} needs labelled training data and an evaluation set; pass "
                             "--eval_dataset with a labelled source, or leave the evaluation steps out of --mode "
                             "(e.g. --mode=pretrain,export)")
        return self.data.train.subset(self.labelled_idx), self.data.eval

    def features(self, key: str, make_encoder, tag: str):
        """Frozen features of the labelled train subset and the eval set, extracted once per run
        and encoder (linear_eval and knn share them)."""
        if key not in self.feature_cache:
            train, test = self.eval_sets(tag)
            c, encoder = self.cfg, make_encoder()
            self.feature_cache[key] = (eval_lib.extract(encoder, train, c.image_size, c.eval_batch_size),
                                       eval_lib.extract(encoder, test, c.image_size, c.eval_batch_size))
        return self.feature_cache[key]

    def write_export(self, write, model, name: str) -> str:
        """``write`` ``model`` to ``model_dir/name`` (atomically); other workers than the chief skip."""
        path = os.path.join(self.cfg.model_dir, name)
        return write(model, path, self.cfg.image_size) if self.is_chief else path


# Fine-tuning steps per epoch, at least: with 1% of CIFAR-10 (450 labels) a batch of 256 made one step per
# epoch, 30 steps in all, and left the classifier below the frozen probe on the same labels; a batch of 64
# (7 steps, 420 in 60 epochs) fine-tuned above it (benchmarks/cifar10_methods.md, label efficiency).
MIN_FT_STEPS = 8
MIN_FT_BATCH = 16   # … but batches no smaller than this (batch statistics of a handful of images are noise)


def _usable_run_dir(path: str) -> None:
    """Create the run directory, or say in one line why it cannot be one."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SSLTFError(f"--model_dir={path}: is a file, not a directory; pass a directory (new or a run's)")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise SSLTFError(f"--model_dir={path}: cannot be created ({e.strerror or e}); pass a writable "
                         "directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SSLTFError(f"--model_dir={path}: not writable (read-only file system or permissions); pass a "
                         "writable directory")


def _image_side(examples: Examples) -> int | None:
    if examples.images is not None:
        return int(examples.images.shape[1])
    return None
