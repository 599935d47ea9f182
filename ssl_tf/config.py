"""The typed run configuration: every ``ssl-tf`` flag is a field here.

Fields left ``None`` take a default from ``resolve``: the paper's value, adjusted for small
images where the reference code does so, or — on the built-in ``shapes`` dataset only — the
demo preset that fits the demo into a few CPU minutes. ``resolve`` also validates, raising
``SSLTFError`` with a one-line message naming the flag and the accepted values.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Optional

from ssl_tf.errors import SSLTFError

MODES = ("pretrain", "linear_eval", "knn", "layerwise_eval", "finetune", "distill", "export", "report")
ALL_MODES = ("pretrain", "linear_eval", "knn", "export")   # what --mode=all runs (finetune, layerwise: ask)
JOINT_EMBEDDING_METHODS = ("simclr", "moco", "moco_v3", "byol", "simsiam", "dino", "npid", "barlow_twins", "vicreg")
PRETEXT_METHODS = ("rotation", "relative_patch_location", "jigsaw", "exemplar", "colorization", "s4l_rotation",
                   "s4l_exemplar")
SEMI_METHODS = ("fixmatch", "mixmatch")
METHOD_NAMES = JOINT_EMBEDDING_METHODS + PRETEXT_METHODS + SEMI_METHODS
BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "resnet18v2", "resnet34v2", "resnet50v2", "revnet50", "vgg19",
                  "vit_tiny", "vit_small")
EVAL_HEADS = ("linear", "mlp")
JIT_CHOICES = ("auto", "true", "false")

# Unset flags on the built-in shapes dataset: sized to finish the demo in a few CPU minutes.
# Colour is pure nuisance in shapes, so full-strength jitter and crops that keep most of the shape;
# LARS with square-root lr scaling, which SimCLR (appendix B.1) found better for short training,
# at 0.15·√batch (measured over 200 steps of batch 256: linear probe 21.4% random -> 39.4% at
# 0.15·√256, 34.9% at SimCLR's 0.075·√256, 37.2% at 0.3·√256, 33.3% with Adam 4e-3). Batch 128:
# twice the steps in about the same time (full demo: +19.6 points over random vs +14.4 at 256).
# The demo (SimCLR) at 24 px and batch 64, sized to end within 5 minutes on a 2-core AVX2 CPU (measured:
# 2 min 22 s on a 2-core AMD EPYC Zen 4, 3 min 0 s with its oneDNN limited to AVX2 kernels): there
# (2026-12-01; pretrain + probes + kNN, linear top-1 over the random backbone's) 32 px / batch 128 took
# 171.5 s at +17.3 points, 24 px / 128 took 110.7 s at +15.6, 24 px / 64 took 114.3 s at +19.2 (the
# shapes stay recognisable at 24 px; the step costs ~0.6x).
SHAPES_PRESET = dict(width=0.25, epochs=5, batch_size=128, warmup_epochs=0.5, color_jitter=1.0,
                     crop_min_scale=0.3, ft_epochs=3, eval_epochs=50)
SHAPES_METHOD_PRESET = {"simclr": dict(optimizer="lars", learning_rate=0.15, lr_scaling="sqrt", weight_decay=1e-6,
                                       temperature=0.2, batch_size=64, image_size=24)}

# The pretext tasks' recipe in the revisiting code (config/<task>/imagenet.sh, trainer.py): SGD with
# momentum 0.9, lr 0.1 × batch/256, weight decay 1e-4, 5 warmup epochs of 35 (their step decay at
# epochs 15 and 25 is replaced by our cosine). Exemplar: 8 copies of 64 images per batch.
PRETEXT_DEFAULTS = dict(optimizer="sgd", learning_rate=0.1, lr_scaling="linear", weight_decay=1e-4,
                        warmup_epochs=5.0, epochs=35)
# The momentum, teacher-student and redundancy-reduction methods: each from its official code / paper
# (docs/methods.md, "Defaults and their sources"). Temperatures of MoCo v1 (0.07) and of ViT MoCo v3 (0.2) in resolve.
JOINT_DEFAULTS = {
    "simclr": dict(proj_dim=128, proj_layers=2),
    # MoCo v2 (facebookresearch/moco main_moco.py + --mlp --aug-plus --cos): SGD 0.03×batch/256, wd 1e-4, T 0.2
    "moco": dict(optimizer="sgd", learning_rate=0.03, weight_decay=1e-4, warmup_epochs=0.0, temperature=0.2,
                 proj_dim=128, target_momentum=0.999, crop_min_scale=0.2),
    # MoCo v3 ResNet-50 (facebookresearch/moco-v3): LARS 0.6, wd 1e-6, T 1.0, m 0.99 cosine, 4096-4096-256
    "moco_v3": dict(optimizer="lars", learning_rate=0.6, weight_decay=1e-6, temperature=1.0, proj_hidden=4096,
                    proj_dim=256, pred_hidden=4096, target_momentum=0.99),
    # BYOL (Grill et al. 2020, §3.2 / appendix C): LARS 0.2, wd 1.5e-6, τ 0.996, 4096-256
    "byol": dict(optimizer="lars", learning_rate=0.2, weight_decay=1.5e-6, proj_hidden=4096, proj_dim=256,
                 pred_hidden=4096, target_momentum=0.996),
    # SimSiam (Chen & He 2021, §4): SGD 0.05×batch/256, wd 1e-4, no warmup, 2048-2048-2048, predictor 512
    "simsiam": dict(optimizer="sgd", learning_rate=0.05, weight_decay=1e-4, warmup_epochs=0.0, proj_hidden=2048,
                    proj_dim=2048, pred_hidden=512, crop_min_scale=0.2),
    # DINO (facebookresearch/dino main_dino.py): AdamW 5e-4×batch/256, wd 0.04, 10 warmup, m 0.996, global crops 0.4-1
    "dino": dict(optimizer="adamw", learning_rate=5e-4, weight_decay=0.04, target_momentum=0.996,
                 crop_min_scale=0.4),
    # NPID (zhirongw/lemniscate.pytorch): SGD 0.03, wd 5e-4, T 0.07, 128-d, crops 0.2-1
    "npid": dict(optimizer="sgd", learning_rate=0.03, weight_decay=5e-4, warmup_epochs=0.0, temperature=0.07,
                 proj_dim=128, crop_min_scale=0.2),
    # Barlow Twins (facebookresearch/barlowtwins): LARS 0.2, wd 1.5e-6, 8192-8192-8192
    "barlow_twins": dict(optimizer="lars", learning_rate=0.2, weight_decay=1.5e-6, proj_hidden=8192, proj_dim=8192),
    # VICReg (facebookresearch/vicreg): LARS base 0.2, wd 1e-6, 8192-8192-8192
    "vicreg": dict(optimizer="lars", learning_rate=0.2, weight_decay=1e-6, proj_hidden=8192, proj_dim=8192),
}
# FixMatch (Sohn et al. 2020, §4 and appendix B.1, CIFAR-10): SGD Nesterov 0.03, wd 5e-4, B 64, μ 7, τ 0.95,
# λ_u 1, EMA 0.999, no warmup. MixMatch (Berthelot et al. 2019, §4 / official code): Adam 0.002, wd 0.02·lr
# (decoupled: our adamw with 4e-5 ≈ 0.02 × 0.002), B 64, λ_u 75 on CIFAR-10, T 0.5, K 2, α 0.75, EMA 0.999.
SEMI_DEFAULTS = {
    "fixmatch": dict(optimizer="sgd", learning_rate=0.03, lr_scaling="none", weight_decay=5e-4, warmup_epochs=0.0,
                     batch_size=64, mu=7, unlabelled_weight=1.0),
    "mixmatch": dict(optimizer="adamw", learning_rate=0.002, lr_scaling="none", weight_decay=4e-5,
                     warmup_epochs=0.0, batch_size=64, mu=1, unlabelled_weight=75.0),
}
METHOD_DEFAULTS = {**JOINT_DEFAULTS, **SEMI_DEFAULTS, **{m: PRETEXT_DEFAULTS for m in PRETEXT_METHODS},
                   "exemplar": {**PRETEXT_DEFAULTS, "batch_size": 64},
                   "s4l_exemplar": {**PRETEXT_DEFAULTS, "batch_size": 64}}


def _f(default, help, choices=None):
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass
class Config:
    # what to run
    mode: str = _f("all", "Comma-separated steps: pretrain, linear_eval, knn, layerwise_eval, finetune, distill, "
                          "export, report, or all (= pretrain,linear_eval,knn,export).")
    method: str = _f("simclr", "Self-supervised method.", choices=METHOD_NAMES)
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
    proj_layers: Optional[int] = _f(None, "SimCLR projection MLP layers (SimCLR v1: 2, v2: 3).")
    proj_dim: Optional[int] = _f(None, "Projection / embedding output dimension (SimCLR, MoCo, NPID: 128; BYOL, "
                                       "MoCo v3: 256; SimSiam: 2048; Barlow Twins, VICReg: 8192).")
    proj_hidden: Optional[int] = _f(None, "Projection hidden width (SimCLR: the backbone's feature dimension; BYOL, "
                                          "MoCo v3: 4096; SimSiam: 2048; Barlow Twins, VICReg: 8192).")
    pred_hidden: Optional[int] = _f(None, "Predictor hidden width (BYOL, MoCo v3: 4096; SimSiam: 512).")
    global_bn: bool = _f(True, "Synchronise batch-norm statistics across replicas (SimCLR's global_bn).")
    # SimCLR
    temperature: Optional[float] = _f(None, "NT-Xent temperature (SimCLR: 0.1; 0.5 at <= 32 px as the reference "
                                            "CIFAR recipe).")
    color_jitter: Optional[float] = _f(None, "Colour jitter strength s (SimCLR: 1.0; 0.5 at <= 32 px).")
    blur: Optional[bool] = _f(None, "Gaussian blur with p=0.5 (SimCLR: on above 32 px, off at <= 32 px).")
    crop_min_scale: Optional[float] = _f(None, "Smallest area fraction of the random resized crop (SimCLR: 0.08; "
                                                "shapes demo 0.3).")
    # momentum, teacher-student and redundancy-reduction methods
    moco_version: int = _f(2, "MoCo: 1 (linear head, T 0.07, no blur) or 2 (MLP head, T 0.2, blur).")
    queue_size: int = _f(65536, "MoCo: negative keys in the queue (K = 65536); a multiple of --batch_size.")
    bn_groups: int = _f(8, "MoCo: key batch-norm groups of the shuffled global batch (shuffle BN; MoCo: 8 GPUs).")
    target_momentum: Optional[float] = _f(None, "Momentum / EMA of the target network (MoCo 0.999 constant; BYOL, "
                                                "DINO 0.996 and MoCo v3 0.99, rising to 1 on a cosine).")
    ema_bn_stats: bool = _f(False, "Also move BN moving statistics of the target by EMA (default: the target keeps "
                                   "its own, as MoCo's and BYOL's code).")
    fix_pred_lr: bool = _f(True, "SimSiam: train the predictor at the constant base lr (official --fix-pred-lr).")
    dino_out_dim: int = _f(65536, "DINO: output dimension K of the head (65536).")
    student_temperature: float = _f(0.1, "DINO: student temperature (0.1).")
    teacher_temperature: float = _f(0.07, "DINO: teacher temperature after warm-up (0.07).")
    warmup_teacher_temperature: float = _f(0.04, "DINO: teacher temperature at step 0 (0.04).")
    teacher_warmup_epochs: float = _f(30, "DINO: epochs of the linear teacher-temperature warm-up (30).")
    center_momentum: float = _f(0.9, "DINO: momentum of the teacher-output centre (0.9).")
    num_local_crops: int = _f(6, "DINO: local crops per image besides the 2 global ones (6).")
    local_crop_size: Optional[int] = _f(None, "DINO: local crop side (96 at 224 px; default image_size × 96/224, "
                                              "16 at 32 px).")
    local_crop_scale: float = _f(0.4, "DINO: local crops cover 5%% to this fraction of the image (0.4); global "
                                      "crops from this to 100%% (--crop_min_scale, 0.4).")
    nce_k: int = _f(4096, "NPID: negatives drawn from the memory bank per example (4096).")
    nce_m: float = _f(0.5, "NPID: memory-bank momentum (0.5).")
    npid_loss: str = _f("nce", "NPID: nce (the paper's) or softmax over the drawn negatives.",
                        choices=("nce", "softmax"))
    barlow_lambda: Optional[float] = _f(None, "Barlow Twins: off-diagonal weight λ (0.0051 at 8192 dims, scaled "
                                              "×8192/--proj_dim).")
    vicreg_sim: float = _f(25.0, "VICReg: invariance weight λ (25).")
    vicreg_var: float = _f(25.0, "VICReg: variance weight μ (25).")
    vicreg_cov: float = _f(1.0, "VICReg: covariance weight ν (1).")
    # pretext tasks and S4L
    patch_size: Optional[int] = _f(None, "Side of each grid patch of relative_patch_location and jigsaw "
                                         "(default image_size // 2; revisiting: 64 at 224 px).")
    patch_jitter: float = _f(21 / 85, "Random gap between grid patches, as a fraction of a cell (revisiting: 21/85).")
    head_hidden: int = _f(4096, "Hidden units of the patch tasks' classifier (revisiting: 4096; 0 = linear).")
    num_permutations: int = _f(1000, "Jigsaw: size of the maximal-Hamming permutation set (Noroozi & Favaro: 1000).")
    perm_subset_size: int = _f(8, "Jigsaw: permutations used per training batch (revisiting: 8).")
    jigsaw_plus: bool = _f(False, "Jigsaw++: replace up to 2 tiles of each image with another image's tiles.")
    num_exemplar_copies: int = _f(8, "Exemplar: augmented copies per image (revisiting: 8).")
    embed_dim: int = _f(1000, "Exemplar: embedding dimension (revisiting: 1000).")
    triplet_margin: float = _f(0.5, "Exemplar: triplet semi-hard margin (revisiting: 0.5).")
    rebalance_lambda: float = _f(0.5, "Colorization: class-rebalancing mix λ with the uniform prior "
                                      "(Zhang et al.: 0.5).")
    ssl_weight: float = _f(1.0, "S4L: weight w of the self-supervised loss in L_sup + w·L_self (Zhai et al. 2019).")
    # semi-supervised methods (FixMatch, MixMatch)
    mu: Optional[int] = _f(None, "Unlabelled images per labelled one in a batch (FixMatch μ = 7; MixMatch 1).")
    threshold: float = _f(0.95, "FixMatch: confidence threshold τ of the pseudo-labels (0.95).")
    unlabelled_weight: Optional[float] = _f(None, "Weight λ_u of the unlabelled loss (FixMatch 1; MixMatch 75 on "
                                                  "CIFAR-10, ramped up linearly).")
    unlabelled_rampup: float = _f(1 / 64, "MixMatch: fraction of training over which λ_u ramps up linearly "
                                          "(16,384 of 2^20 steps = 1/64).")
    sharpen_temperature: float = _f(0.5, "MixMatch: sharpening temperature T (0.5).")
    mixup_alpha: float = _f(0.75, "MixMatch: MixUp Beta(α, α) parameter (0.75).")
    num_guesses: int = _f(2, "MixMatch: weak augmentations K averaged for the label guess (2).")
    ema_decay: float = _f(0.999, "FixMatch/MixMatch: decay of the weight EMA used for evaluation (0.999).")
    init_from: Optional[str] = _f(None, "Start the encoder from a pretraining run directory or checkpoint "
                                        "(FixMatch/MixMatch, pretraining on top of an SSL encoder).")
    # optimisation
    batch_size: Optional[int] = _f(None, "Global batch size, split evenly over replicas (default 256; shapes "
                                            "demo 64).")
    epochs: Optional[int] = _f(None, "Pretraining epochs (default 100 as SimCLR's short schedule; shapes demo 5).")
    max_steps: Optional[int] = _f(None, "Stop pretraining after this many steps (the schedule still spans --epochs).")
    optimizer: Optional[str] = _f(None, "Optimizer (default lars for simclr as SimCLR; sgd for pretext tasks "
                                        "as the revisiting code).",
                                  choices=("lars", "sgd", "adam", "adamw"))
    learning_rate: Optional[float] = _f(None, "Base learning rate before --lr_scaling (SimCLR LARS: 0.3; pretext "
                                              "SGD: 0.1 (revisiting); Adam: 1e-3).")
    lr_scaling: Optional[str] = _f(None, "linear: lr×batch/256 (default); sqrt: lr×√batch (shapes demo); none.",
                                   choices=("linear", "sqrt", "none"))
    warmup_epochs: Optional[float] = _f(None, "Linear warmup epochs before cosine decay (SimCLR: 10).")
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
    ft_epochs: Optional[int] = _f(None, "Fine-tuning epochs (SimCLR: 60 at 1%% labels, 30 at 10%%; default 30).")
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


def _check(cond: bool, flag: str, value, accepted: str):
    if not cond:
        raise SSLTFError(f"--{flag}={value}: {accepted}")


def resolve(cfg: Config, data_image_size: int | None = None) -> Config:
    """Fill every ``None`` default and validate. ``data_image_size``: the dataset's image side."""
    c = dataclasses.replace(cfg)
    _parse_modes(c.mode)
    is_shapes = c.dataset.split(":")[0] == "shapes"
    if c.method not in METHOD_NAMES:
        raise SSLTFError(f"--method={c.method}: unknown; accepted: {', '.join(METHOD_NAMES)}")
    if c.method == "moco" and c.moco_version == 1:
        c.temperature = 0.07 if c.temperature is None else c.temperature    # MoCo v1
        c.blur = False if c.blur is None else c.blur
    if c.method == "moco_v3" and c.backbone.startswith("vit") and c.temperature is None:
        c.temperature = 0.2                                                 # MoCo v3 ViT
    presets = [SHAPES_METHOD_PRESET.get(c.method, {}), SHAPES_PRESET] if is_shapes else []   # the method's first
    for preset in presets + [METHOD_DEFAULTS.get(c.method, {})]:
        for key, value in preset.items():
            if getattr(c, key) is None:
                setattr(c, key, value)
    c.image_size = c.image_size or data_image_size or 224
    small = c.image_size <= 32
    c.optimizer = c.optimizer or "lars"
    defaults = dict(lr_scaling="linear", crop_min_scale=0.08, width=1.0, epochs=100, batch_size=256,
                    warmup_epochs=10.0, weight_decay=1e-6,
                    temperature=0.5 if small else 0.1, color_jitter=0.5 if small else 1.0, blur=not small,
                    eval_epochs=100, ft_epochs=30,
                    learning_rate={"lars": 0.3, "sgd": 0.3, "adam": 1e-3, "adamw": 1e-3}[c.optimizer])
    for key, value in defaults.items():
        if getattr(c, key) is None:
            setattr(c, key, value)
    c.proj_layers = c.proj_layers or 2
    c.mu = c.mu or 7
    c.unlabelled_weight = 1.0 if c.unlabelled_weight is None else c.unlabelled_weight
    c.student_backbone = c.student_backbone or c.backbone
    c.student_width = c.student_width or c.width
    c.distill_epochs = c.distill_epochs or c.ft_epochs
    c.proj_dim = c.proj_dim or 128
    c.pred_hidden = c.pred_hidden or 4096
    c.target_momentum = 0.996 if c.target_momentum is None else c.target_momentum
    c.local_crop_size = c.local_crop_size or (c.image_size // 2 if small else round(c.image_size * 96 / 224))
    if c.model_dir is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = c.dataset.split(":")[0] if not c.dataset.startswith("tfds:") else c.dataset.split(":")[1]
        c.model_dir = os.path.join("runs", f"{c.method}-{os.path.basename(name.rstrip('/'))}-{stamp}")

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
    _check(c.learning_rate > 0, "learning_rate", c.learning_rate, "must be > 0")
    _check(c.warmup_epochs >= 0, "warmup_epochs", c.warmup_epochs, "must be >= 0")
    _check(c.weight_decay >= 0, "weight_decay", c.weight_decay, "must be >= 0")
    _check(c.temperature > 0, "temperature", c.temperature, "must be > 0")
    _check(c.color_jitter >= 0, "color_jitter", c.color_jitter, "must be >= 0")
    _check(0 < c.crop_min_scale <= 1, "crop_min_scale", c.crop_min_scale, "must be in (0, 1]")
    _check(c.proj_layers >= 1, "proj_layers", c.proj_layers, "must be >= 1")
    _check(c.proj_dim >= 1, "proj_dim", c.proj_dim, "must be >= 1")
    _check(0 < c.val_fraction < 1, "val_fraction", c.val_fraction, "must be in (0, 1)")
    _check(0 < c.label_fraction <= 1, "label_fraction", c.label_fraction, "must be in (0, 1]")
    _check(c.knn_k >= 1, "knn_k", c.knn_k, "must be >= 1")
    _check(c.knn_temperature > 0, "knn_temperature", c.knn_temperature, "must be > 0")
    _check(c.eval_epochs >= 1, "eval_epochs", c.eval_epochs, "must be >= 1")
    _check(c.ft_epochs >= 1, "ft_epochs", c.ft_epochs, "must be >= 1")
    c.patch_size = c.patch_size or max(8, c.image_size // 2)
    _check(c.patch_size >= 4, "patch_size", c.patch_size, "must be >= 4")
    _check(0 <= c.patch_jitter < 1, "patch_jitter", c.patch_jitter, "must be in [0, 1)")
    _check(c.head_hidden >= 0, "head_hidden", c.head_hidden, "must be >= 0")
    _check(2 <= c.num_permutations <= 362880, "num_permutations", c.num_permutations, "must be in [2, 9!]")
    _check(1 <= c.perm_subset_size <= c.num_permutations, "perm_subset_size", c.perm_subset_size,
           f"must be in [1, --num_permutations={c.num_permutations}]")
    _check(c.num_exemplar_copies >= 2, "num_exemplar_copies", c.num_exemplar_copies,
           "must be >= 2 (the triplet loss needs positives)")
    _check(c.embed_dim >= 1, "embed_dim", c.embed_dim, "must be >= 1")
    _check(c.triplet_margin >= 0, "triplet_margin", c.triplet_margin, "must be >= 0")
    _check(0 <= c.rebalance_lambda <= 1, "rebalance_lambda", c.rebalance_lambda, "must be in [0, 1]")
    _check(c.ssl_weight >= 0, "ssl_weight", c.ssl_weight, "must be >= 0")
    _check(c.moco_version in (1, 2), "moco_version", c.moco_version, "accepted: 1, 2")
    _check(c.queue_size >= 1, "queue_size", c.queue_size, "must be >= 1")
    if c.method == "moco":
        _check(c.queue_size % c.batch_size == 0, "queue_size", c.queue_size,
               f"must be a multiple of --batch_size={c.batch_size} (each step replaces one batch of keys)")
        _check(c.batch_size % c.bn_groups == 0, "bn_groups", c.bn_groups,
               f"must divide --batch_size={c.batch_size}")
    _check(c.bn_groups >= 1, "bn_groups", c.bn_groups, "must be >= 1")
    _check(0 <= c.target_momentum <= 1, "target_momentum", c.target_momentum, "must be in [0, 1]")
    _check(c.dino_out_dim >= 2, "dino_out_dim", c.dino_out_dim, "must be >= 2")
    for flag in ("student_temperature", "teacher_temperature", "warmup_teacher_temperature"):
        _check(getattr(c, flag) > 0, flag, getattr(c, flag), "must be > 0")
    _check(c.teacher_warmup_epochs >= 0, "teacher_warmup_epochs", c.teacher_warmup_epochs, "must be >= 0")
    _check(0 <= c.center_momentum < 1, "center_momentum", c.center_momentum, "must be in [0, 1)")
    _check(c.num_local_crops >= 0, "num_local_crops", c.num_local_crops, "must be >= 0")
    _check(c.local_crop_size >= 4, "local_crop_size", c.local_crop_size, "must be >= 4")
    _check(0.05 < c.local_crop_scale <= 1, "local_crop_scale", c.local_crop_scale, "must be in (0.05, 1]")
    _check(c.nce_k >= 1, "nce_k", c.nce_k, "must be >= 1")
    _check(0 <= c.nce_m < 1, "nce_m", c.nce_m, "must be in [0, 1)")
    _check(c.barlow_lambda is None or c.barlow_lambda >= 0, "barlow_lambda", c.barlow_lambda, "must be >= 0")
    _check(c.pred_hidden >= 1, "pred_hidden", c.pred_hidden, "must be >= 1")
    _check(c.proj_hidden is None or c.proj_hidden >= 1, "proj_hidden", c.proj_hidden, "must be >= 1")
    _check(c.layerwise_features >= 1, "layerwise_features", c.layerwise_features, "must be >= 1")
    _check(c.checkpoint_every >= 1, "checkpoint_every", c.checkpoint_every, "must be >= 1")
    _check(c.num_cpu_devices >= 1, "num_cpu_devices", c.num_cpu_devices, "must be >= 1")
    for flag in ("intra_op_threads", "inter_op_threads"):
        _check(getattr(c, flag) >= 0, flag, getattr(c, flag), "must be >= 0 (0: TensorFlow's default)")
    _check(c.log_every >= 1, "log_every", c.log_every, "must be >= 1")
    _check(c.mu >= 1, "mu", c.mu, "must be >= 1")
    _check(0 < c.threshold <= 1, "threshold", c.threshold, "must be in (0, 1]")
    _check(c.unlabelled_weight >= 0, "unlabelled_weight", c.unlabelled_weight, "must be >= 0")
    _check(0 <= c.unlabelled_rampup <= 1, "unlabelled_rampup", c.unlabelled_rampup, "must be in [0, 1]")
    _check(c.sharpen_temperature > 0, "sharpen_temperature", c.sharpen_temperature, "must be > 0")
    _check(c.mixup_alpha > 0, "mixup_alpha", c.mixup_alpha, "must be > 0")
    _check(c.num_guesses >= 1, "num_guesses", c.num_guesses, "must be >= 1")
    _check(0 <= c.ema_decay < 1, "ema_decay", c.ema_decay, "must be in [0, 1)")
    _check(c.ft_proj_selector >= 0, "ft_proj_selector", c.ft_proj_selector, "must be >= 0")
    _check(c.fine_tune_after_block >= -1, "fine_tune_after_block", c.fine_tune_after_block,
           "must be -1 (train all), 0 (stem) or a block number")
    _check(c.distill_temperature > 0, "distill_temperature", c.distill_temperature, "must be > 0")
    _check(0 <= c.distill_alpha <= 1, "distill_alpha", c.distill_alpha, "must be in [0, 1]")
    _check(c.student_width > 0, "student_width", c.student_width, "must be > 0")
    _check(c.distill_epochs >= 1, "distill_epochs", c.distill_epochs, "must be >= 1")
    _check(c.probe_lr > 0, "probe_lr", c.probe_lr, "must be > 0")
    return c


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)
