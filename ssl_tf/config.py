"""The shared run configuration: data, backbone, optimiser, schedule, evaluation, running.

A method's own parameters (temperatures, widths, queue sizes …) live in its file, as a typed
``Params`` with the paper's defaults and sources (``ssl_tf/methods/settings.py``). ``Config``
takes them as keyword arguments under their flag names (``Config(method="moco",
queue_size=4096)``) and keeps them in ``method_args`` until ``resolve`` builds the chosen method's
``Params``; after that ``cfg.params`` holds them, and ``cfg.queue_size`` reads through to it.

Shared fields left ``None`` take a default in ``resolve``: the shapes demo preset (built-in
``shapes`` dataset only), then the method's ``recipe`` (its paper's optimiser, lr, batch …), then
SimCLR's recipe below. ``resolve`` also validates, raising ``SSLTFError`` with a one-line message
naming the flag and the accepted values.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
from typing import Any, Optional

from ssl_tf.errors import SSLTFError, check as _check

MODES = ("pretrain", "linear_eval", "knn", "layerwise_eval", "finetune", "distill", "export", "report")
ALL_MODES = ("pretrain", "linear_eval", "knn", "export")   # what --mode=all runs (finetune, layerwise: ask)
BACKBONE_NAMES = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet10v2", "resnet18v2", "resnet34v2",
                  "resnet50v2", "revnet50", "vgg19", "vit_tiny", "vit_small")
EVAL_HEADS = ("linear", "mlp")
JIT_CHOICES = ("auto", "true", "false")

# Unset flags on the built-in shapes dataset: sized to finish a method's demo in a few CPU minutes.
# Colour is pure nuisance in shapes, so full-strength jitter and crops that keep most of the shape.
# A method may tune further (its ``shapes_recipe``; SimCLR's: 24 px, batch 64, sqrt-scaled LARS).
SHAPES_PRESET = dict(width=0.25, epochs=5, batch_size=128, warmup_epochs=0.5, color_jitter=1.0,
                     crop_min_scale=0.3, ft_epochs=3, eval_epochs=50)
# SimCLR's recipe (Chen et al. 2020, §B.1/B.9, tf2 CIFAR-10 settings): the default of every shared
# setting a method's recipe leaves unset. LARS 0.3 × batch/256, wd 1e-6, 10 warm-up epochs, 100
# epochs (SimCLR's short schedule), batch 256 (theirs: 4096), crops from 8% of the area, colour jitter
# 1.0 with blur above 32 px, 0.5 without blur at <= 32 px (the CIFAR-10 recipe).
SIMCLR_RECIPE = dict(optimizer="lars", lr_scaling="linear", crop_min_scale=0.08, width=1.0, epochs=100,
                     batch_size=256, warmup_epochs=10.0, weight_decay=1e-6, eval_epochs=100, lr_schedule="cosine")
BASE_LEARNING_RATE = {"lars": 0.3, "sgd": 0.3, "adam": 1e-3, "adamw": 1e-3}


def _f(default, help, choices=None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(init=False)
class Config:
    # what to run
    mode: str = _f("all", "Comma-separated steps: pretrain, linear_eval, knn, layerwise_eval, finetune, distill, "
                          "export, report, or all (= pretrain,linear_eval,knn,export).")
    method: str = _f("simclr", "Self-supervised method (ssl_tf/methods/, docs/methods.md).")
    # data
    dataset: str = _f("shapes", "Training data: shapes | shapes:TRAIN,EVAL | npz:PATH | folder:PATH | "
                                "tfds:NAME[:SPLIT].")
    data_dir: Optional[str] = _f(None, "tensorflow-datasets data directory (a prepared copy works offline).")
    eval_dataset: Optional[str] = _f(None, "Evaluation data (any source spec, e.g. npz:test.npz); default: the "
                                          "dataset's own test split, else a stratified --val_fraction of train.")
    val_fraction: float = _f(0.1, "Fraction of each class carved (seeded) from train when there is no eval split.")
    label_fraction: float = _f(1.0, "Class-balanced fraction of training labels used by probes and fine-tuning "
                                    "(SimCLR's 1%% = 0.01, 10%% = 0.1).")
    image_size: Optional[int] = _f(None, "Input side in pixels; default: the dataset's own (32 for CIFAR; "
                                            "shapes demo 24).")
    # model
    backbone: str = _f("resnet18", "Backbone (v2 = pre-activation; vgg19 has batch norm).", choices=BACKBONE_NAMES)
    width: Optional[float] = _f(None, "Channel width multiplier of the backbone (default 1; shapes demo 0.25; "
                                      "the revisiting paper's widening factors are 2, 4, 8, 12, 16).")
    global_bn: bool = _f(True, "Synchronise batch-norm statistics across replicas (SimCLR's global_bn).")
    # augmentation (every method's views)
    color_jitter: Optional[float] = _f(None, "Colour jitter strength s (SimCLR: 1.0; 0.5 at <= 32 px).")
    blur: Optional[bool] = _f(None, "Gaussian blur with p=0.5 (SimCLR: on above 32 px, off at <= 32 px).")
    crop_min_scale: Optional[float] = _f(None, "Smallest area fraction of the random resized crop (SimCLR: 0.08; "
                                                "shapes demo 0.3).")
    init_from: Optional[str] = _f(None, "Start the encoder from a pretraining run directory or checkpoint "
                                        "(FixMatch/MixMatch, pretraining on top of an SSL encoder).")
    # the method's own parameters: as set (method_args), then resolved (params); not flags themselves
    method_args: dict = dataclasses.field(default_factory=dict, compare=False, metadata={"flag": False})
    params: Any = dataclasses.field(default=None, metadata={"flag": False})
    # optimisation
    batch_size: Optional[int] = _f(None, "Global batch size, split evenly over replicas (default 256; shapes "
                                            "demo 64).")
    epochs: Optional[int] = _f(None, "Pretraining epochs (default 100 as SimCLR's short schedule; shapes demo 5).")
    max_steps: Optional[int] = _f(None, "Stop pretraining after this many steps (the schedule still spans --epochs).")
    train_minutes: Optional[float] = _f(None, "Pretraining time budget: the schedules (cosine lr, target momentum, "
                                              "ramp-ups) are sized, while training, to the steps that fit in this "
                                              "many minutes of the training loop; --epochs is then the first "
                                              "estimate only.")
    optimizer: Optional[str] = _f(None, "Optimizer (default lars for simclr as SimCLR; sgd for pretext tasks "
                                        "as the revisiting code).",
                                  choices=("lars", "sgd", "adam", "adamw"))
    learning_rate: Optional[float] = _f(None, "Base learning rate before --lr_scaling (SimCLR LARS: 0.3; pretext "
                                              "SGD: 0.1 (revisiting); Adam: 1e-3).")
    lr_scaling: Optional[str] = _f(None, "linear: lr×batch/256 (default); sqrt: lr×√batch (shapes demo); none.",
                                   choices=("linear", "sqrt", "none"))
    warmup_epochs: Optional[float] = _f(None, "Linear warmup epochs before cosine decay (SimCLR: 10).")
    lr_schedule: Optional[str] = _f(None, "cosine: --warmup_epochs of linear warm-up, then cosine decay to 0 "
                                          "(default); constant: --learning_rate throughout (BigGAN, BigBiGAN).",
                                    choices=("cosine", "constant"))
    weight_decay: Optional[float] = _f(None, "Weight decay, never on BN and biases (SimCLR: 1e-6; pretext: 1e-4).")
    momentum: float = _f(0.9, "Momentum of LARS / SGD.")
    # evaluation
    eval_head: str = _f("linear", "Offline probe head.", choices=EVAL_HEADS)
    eval_epochs: Optional[int] = _f(None, "Epochs of the offline probe on frozen features (default 100).")
    eval_batch_size: int = _f(256, "Batch size of feature extraction and the offline probe.")
    layerwise_features: int = _f(9000, "layerwise_eval: average-pool each layer's map until it has at most this "
                                       "many features (revisiting: 9000).")
    knn_k: int = _f(200, "Neighbours of the weighted kNN (InstDisc / lightly: 200).")
    knn_temperature: float = _f(0.1, "Temperature of the kNN vote weights exp(sim/T) (InstDisc: 0.1).")
    ft_epochs: Optional[int] = _f(None, "Fine-tuning epochs (default as SimCLR B.5: 60 at <= 1%% of the labels, "
                                        "else 30).")
    ft_batch_size: Optional[int] = _f(None, "Fine-tuning and distillation batch (default --batch_size, made smaller "
                                            "where an epoch would have fewer than 8 steps, down to 16).")
    ft_learning_rate: float = _f(0.05, "Fine-tuning base lr, ×batch/256, SGD momentum 0.9, no decay (SimCLR B.5).")
    ft_proj_selector: int = _f(0, "Fine-tune from this layer of the pretrained projection head: 0 = the backbone "
                                  "output, k = after the first k projection layers (SimCLRv2 uses 1 of 3).")
    fine_tune_after_block: int = _f(-1, "Freeze the backbone up to and including this block during fine-tuning: "
                                        "-1 = train all, 0 = the stem, k = block k (SimCLR's flag).")
    ft_zero_init: bool = _f(False, "Zero-initialise the fine-tuning classifier (SimCLR's zero_init_logits_layer).")
    teacher: Optional[str] = _f(None, "distill: the teacher, a classifier SavedModel returning logits (default: "
                                      "<model_dir>/classifier, written by --mode=finetune).")
    student_backbone: Optional[str] = _f(None, "distill: the student backbone (default: --backbone).",
                                         choices=BACKBONE_NAMES)
    student_width: Optional[float] = _f(None, "distill: the student width (default: --width).")
    distill_temperature: float = _f(1.0, "distill: temperature τ of teacher and student softmax (SimCLRv2: 1).")
    distill_alpha: float = _f(0.0, "distill: weight of the labelled cross-entropy mixed into the distillation "
                                   "loss, (1−α)·L_distill + α·L_label (SimCLRv2: 0 without labels).")
    distill_epochs: Optional[int] = _f(None, "distill: epochs over the training images (default --ft_epochs).")
    probe_augment: bool = _f(False, "Train the offline probe on crop+flip views through the frozen encoder "
                                    "(slower) instead of on cached features.")
    probe_lr: float = _f(0.1, "Offline probe: SGD Nesterov momentum 0.9 base lr ×batch/256, cosine, no weight "
                              "decay (SimCLR appendix B.6).")
    report_runs: Optional[str] = _f(None, "report: comma-separated run directories to compare (default: this "
                                          "--model_dir and its subdirectories holding results.json).")
    plots: bool = _f(True, "Write PNG plots (training curves, PCA embedding map, retrieval grid; a t-SNE map "
                           "with the 'plots' extra: pip install 'ssl_tf[plots]').")
    random_baseline: bool = _f(True, "Also probe a randomly initialised backbone for contrast.")
    # running
    strategy: str = _f("auto", "Distribution strategy.",
                       choices=("auto", "one_device", "mirrored", "multi_worker", "tpu"))
    tpu: Optional[str] = _f(None, "TPU name or address for --strategy=tpu.")
    num_cpu_devices: int = _f(1, "Split the CPU into this many logical devices (mirrored training on a CPU host, "
                                 "tests).")
    intra_op_threads: int = _f(0, "Threads one op may use (TensorFlow's intra-op pool); 0: TensorFlow's default, "
                                  "one per core.")
    inter_op_threads: int = _f(0, "Ops run at once (TensorFlow's inter-op pool); 0: TensorFlow's default, one per "
                                  "core (docs/performance.md).")
    cpu_kernels: bool = _f(True, "ssl_tf's CPU fast paths (ssl_tf/models/kernels.py: fused batch norm, 1-4 pixel "
                                 "convolutions as one matrix product, BN-ReLU recomputed in the backward pass); "
                                 "false: Keras's plain layers, the same numbers to float rounding.")
    jit_compile: str = _f("auto", "XLA-compile the train step: auto (off on CPU, where it measured slower; on for "
                                  "one GPU), true, false.", choices=JIT_CHOICES)
    precision: str = _f("float32", "Compute type of the backbone: float32, mixed_bfloat16 (CPUs with AVX-512 "
                                   "BF16 or AMX, TPUs: a ResNet-18 step ran 1.47x faster on an AMD Zen 4 but 1.4-1.7x "
                                   "slower on an Intel Xeon without AMX: measure yours) or "
                                   "mixed_float16 (GPUs; dynamic loss scaling) — and of DINO's head; variables, "
                                   "losses and the other heads stay float32.",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    model_dir: Optional[str] = _f(None, "Run directory (default ./runs/<method>-<dataset>-<timestamp>); "
                                        "an existing one is resumed.")
    checkpoint: Optional[str] = _f(None, "Checkpoint to evaluate/export (default: the latest in --model_dir).")
    checkpoint_every: int = _f(500, "Save a checkpoint every this many steps (and at the end).")
    keep_checkpoints: int = _f(3, "Checkpoints kept.")
    log_every: int = _f(10, "Write TensorBoard scalars every this many steps.")
    progress: bool = _f(True, "Show a progress bar.")
    seed: int = _f(0, "Seed of data order, augmentation, carving and initialisation.")
    deterministic: bool = _f(False, "TensorFlow op determinism (tf.config.experimental.enable_op_determinism): "
                                    "with --seed, bit-identical runs on CPU; somewhat slower.")
    skip_bad_images: bool = _f(False, "Skip (and count) unreadable or non-image files of a folder: dataset "
                                      "instead of stopping at the first one.")

    def __init__(self, **settings):
        """Shared settings by field name; any other name must be a registered method's parameter
        (``ssl_tf.methods.settings.param_fields``) and goes to ``method_args``."""
        method_args = dict(settings.pop("method_args", None) or {})
        fields = {f.name: f for f in dataclasses.fields(Config)}
        unknown = [k for k in settings if k not in fields]
        if unknown:
            from ssl_tf.methods import settings as method_settings  # the registry (imports TensorFlow)
            if not method_settings.REGISTRY:
                import ssl_tf.methods  # noqa: F401 — fills the registry
            declared = method_settings.param_fields()
            bad = [k for k in unknown if k not in declared]
            if bad:
                raise TypeError(f"Config: unknown setting(s) {', '.join(bad)}: neither a shared setting nor a "
                                "registered method's parameter")
            method_args.update({k: settings.pop(k) for k in unknown})
        for name, f in fields.items():
            if name in settings:
                value = settings[name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            else:
                value = f.default_factory()
            object.__setattr__(self, name, value)
        self.method_args = method_args

    def __getattr__(self, name: str):
        """A method parameter: resolved (``params``) or as set (``method_args``)."""
        if name.startswith("__"):
            raise AttributeError(name)
        params = self.__dict__.get("params")
        if params is not None:        # resolved: the method's own parameters only
            if name in {f.name for f in dataclasses.fields(params)}:
                return getattr(params, name)
        elif name in (self.__dict__.get("method_args") or {}):
            return self.__dict__["method_args"][name]
        raise AttributeError(f"Config has no {name!r}: not a shared setting nor a parameter of "
                             f"--method={self.__dict__.get('method')}")

    @property
    def modes(self) -> tuple[str, ...]:
        return _parse_modes(self.mode)


def _parse_modes(mode: str) -> tuple[str, ...]:
    parts = [m.strip() for m in mode.split(",") if m.strip()]
    out: list[str] = []
    for p in parts:
        if p == "all":
            out += [m for m in ALL_MODES if m not in out]
        elif p in MODES:
            if p not in out:
                out.append(p)
        else:
            raise SSLTFError(f"--mode={mode}: unknown step '{p}'; accepted: {', '.join(MODES)}, all "
                             "(comma-separated)")
    if not out:
        raise SSLTFError(f"--mode is empty; accepted: {', '.join(MODES)}, all")
    return tuple(m for m in MODES if m in out)


def method_class(name: str):
    from ssl_tf.methods import METHODS
    if name not in METHODS:
        raise SSLTFError(f"--method={name}: unknown; accepted: {', '.join(METHODS)}")
    return METHODS[name]


def resolve(cfg: Config, data_image_size: int | None = None) -> Config:
    """Fill every ``None`` default, build the method's ``Params`` and validate.
    ``data_image_size``: the dataset's image side."""
    c = dataclasses.replace(cfg)
    _parse_modes(c.mode)
    method = method_class(c.method)
    shared = {f.name for f in dataclasses.fields(Config)}
    args = dict(c.method_args)
    is_shapes = c.dataset.split(":")[0] == "shapes"
    presets = [method.shapes_recipe, SHAPES_PRESET] if is_shapes else []   # the method's own first
    for preset in presets + [method.recipe]:
        for key, value in preset.items():
            if key in shared:
                if getattr(c, key) is None:
                    setattr(c, key, value)
            else:
                args.setdefault(key, value)                                # a method parameter
    c.image_size = c.image_size or data_image_size or 224
    small = c.image_size <= 32
    from ssl_tf.methods.settings import make_params
    try:
        params = make_params(method, args)
    except TypeError as e:
        raise SSLTFError(f"--method={c.method}: {e}") from None
    params.resolve(c)                      # may set shared fields still unset (MoCo v1: no blur)
    for key, value in SIMCLR_RECIPE.items():
        if getattr(c, key) is None:
            setattr(c, key, value)
    c.color_jitter = (0.5 if small else 1.0) if c.color_jitter is None else c.color_jitter
    c.blur = (not small) if c.blur is None else c.blur
    c.learning_rate = c.learning_rate or BASE_LEARNING_RATE[c.optimizer]
    c.student_backbone = c.student_backbone or c.backbone
    c.student_width = c.student_width or c.width
    c.ft_epochs = c.ft_epochs or (60 if c.label_fraction <= 0.01 else 30)     # SimCLR B.5
    c.distill_epochs = c.distill_epochs or c.ft_epochs
    if c.model_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = c.dataset.split(":")[0] if not c.dataset.startswith("tfds:") else c.dataset.split(":")[1]
        c.model_dir = os.path.join("runs", f"{c.method}-{os.path.basename(name.rstrip('/'))}-{stamp}")

    for name, value in [(f.name, getattr(c, f.name)) for f in dataclasses.fields(c) if f.metadata.get("flag", True)] \
            + list(dataclasses.asdict(params).items()):
        if isinstance(value, float) and not math.isfinite(value):
            raise SSLTFError(f"--{name}={value}: must be a finite number")
    for f in dataclasses.fields(c):
        choices = f.metadata.get("choices")
        if choices and getattr(c, f.name) not in choices:
            raise SSLTFError(f"--{f.name}={getattr(c, f.name)}: unknown; accepted: {', '.join(choices)}")
    _check(c.image_size >= 8, "image_size", c.image_size,
           "must be >= 8" + (f" (the dataset's images are {c.image_size} px: pass --image_size=16 or more to "
                             "upscale them)" if cfg.image_size is None else ""))
    _check(c.width > 0, "width", c.width, "must be > 0")
    _check(c.batch_size >= 2, "batch_size", c.batch_size, "must be >= 2 (contrastive losses need pairs)")
    _check(c.epochs >= 1, "epochs", c.epochs, "must be >= 1")
    _check(c.max_steps is None or c.max_steps >= 1, "max_steps", c.max_steps, "must be >= 1")
    _check(c.train_minutes is None or 0 < c.train_minutes < float("inf"), "train_minutes", c.train_minutes,
           "must be a finite number of minutes > 0")
    _check(c.learning_rate > 0, "learning_rate", c.learning_rate, "must be > 0")
    _check(c.warmup_epochs >= 0, "warmup_epochs", c.warmup_epochs, "must be >= 0")
    _check(c.weight_decay >= 0, "weight_decay", c.weight_decay, "must be >= 0")
    _check(c.color_jitter >= 0, "color_jitter", c.color_jitter, "must be >= 0")
    _check(0 < c.crop_min_scale <= 1, "crop_min_scale", c.crop_min_scale, "must be in (0, 1]")
    _check(0 < c.val_fraction < 1, "val_fraction", c.val_fraction, "must be in (0, 1)")
    _check(0 < c.label_fraction <= 1, "label_fraction", c.label_fraction, "must be in (0, 1]")
    _check(c.knn_k >= 1, "knn_k", c.knn_k, "must be >= 1")
    _check(c.eval_batch_size >= 1, "eval_batch_size", c.eval_batch_size, "must be >= 1")
    _check(c.keep_checkpoints >= 1, "keep_checkpoints", c.keep_checkpoints, "must be >= 1")
    _check(0 <= c.momentum < 1, "momentum", c.momentum, "must be in [0, 1)")
    _check(c.ft_learning_rate > 0, "ft_learning_rate", c.ft_learning_rate, "must be > 0")
    _check(c.knn_temperature > 0, "knn_temperature", c.knn_temperature, "must be > 0")
    _check(c.eval_epochs >= 1, "eval_epochs", c.eval_epochs, "must be >= 1")
    _check(c.ft_epochs >= 1, "ft_epochs", c.ft_epochs, "must be >= 1")
    _check(c.ft_batch_size is None or c.ft_batch_size >= 1, "ft_batch_size", c.ft_batch_size, "must be >= 1")
    _check(c.layerwise_features >= 1, "layerwise_features", c.layerwise_features, "must be >= 1")
    _check(c.checkpoint_every >= 1, "checkpoint_every", c.checkpoint_every, "must be >= 1")
    _check(c.num_cpu_devices >= 1, "num_cpu_devices", c.num_cpu_devices, "must be >= 1")
    for flag in ("intra_op_threads", "inter_op_threads"):
        _check(getattr(c, flag) >= 0, flag, getattr(c, flag), "must be >= 0 (0: TensorFlow's default)")
    _check(c.log_every >= 1, "log_every", c.log_every, "must be >= 1")
    _check(c.ft_proj_selector >= 0, "ft_proj_selector", c.ft_proj_selector, "must be >= 0")
    _check(c.fine_tune_after_block >= -1, "fine_tune_after_block", c.fine_tune_after_block,
           "must be -1 (train all), 0 (stem) or a block number")
    _check(c.distill_temperature > 0, "distill_temperature", c.distill_temperature, "must be > 0")
    _check(0 <= c.distill_alpha <= 1, "distill_alpha", c.distill_alpha, "must be in [0, 1]")
    _check(c.student_width > 0, "student_width", c.student_width, "must be > 0")
    _check(c.distill_epochs >= 1, "distill_epochs", c.distill_epochs, "must be >= 1")
    _check(c.probe_lr > 0, "probe_lr", c.probe_lr, "must be > 0")
    params.validate(c)
    c.params = params
    return c


def to_dict(cfg: Config) -> dict:
    """The flat ``{flag: value}`` record of a run (results.json, checkpoints): the shared settings
    and, once resolved, the method's parameters."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("flag", True)}
    if cfg.params is not None:
        out.update(dataclasses.asdict(cfg.params))
    else:
        out.update(cfg.method_args)
    return out
