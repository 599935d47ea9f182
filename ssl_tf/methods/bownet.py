"""BoWNet (Gidaris et al. 2020, *Learning Representations by Predicting Bags of Visual Words*): a
student predicts, from a perturbed view, the bag of visual words of a trained teacher's feature map.

    teacher Φ̂ (a finished run: RotNet by default) → map at --bow_layer → k-means → K words
    target y(x):  each location's nearest word (L2), counted over the locations — the image's
                  histogram of visual words — L1-normalised (§2.2)
    student:      Φ(g(x)) pooled → Ω: softmax_k(γ · cos(w_k, Φ)), γ learned (§2.3)
    loss:         −Σ_k y_k(x) log Ω_k(Φ(g(x)))

The vocabulary is built once, before training (``prepare``): k-means over the teacher's local features
of --bow_kmeans_images training images. The teacher sees the image itself (the evaluation view,
flipped at random: a histogram does not change under a flip); the student a random crop, flip,
colour jitter and grayscale, with CutMix (Yun et al. 2019) on the batch, whose targets mix by area,
λ·y(x_A) + (1 − λ)·y(x_B) (§2.3). Rounds (--bow_rounds): the trained student becomes the next
round's teacher, Φ̂ ← Φ (§2). Under ``ssl-tf`` the teacher runs train first, in subdirectories of the
run directory (``prior_runs``).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from ssl_tf import checkpoints
from ssl_tf.data import ops, pipeline
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import bow_prediction_loss, hard_bow, kmeans, word_distances
from ssl_tf.methods.base import Objective, SSLMethod, after, feature_map
from ssl_tf.methods.settings import REGISTRY, MethodParams, check, param, register
from ssl_tf.models import CosineClassifier, backbone_builder

TEACHER_DIR, ROUND_DIR = "teacher_rotation", "bow_round_{}"


def teacher_chain(p, model_dir: str | None, epochs: int, minutes: float | None) -> tuple[list[dict], str | None]:
    """(the runs to pretrain before this one, as Config changes with their ``model_dir``; this run's
    teacher). Without --teacher_run the first is a rotation run (RotNet, the paper's teacher) in
    ``model_dir/teacher_rotation``; each extra round is a BoWNet run taught by the one before it.
    A --train_minutes budget is shared equally by every run, this one included."""
    runs, teacher = [], p.teacher_run
    if model_dir is None:
        return runs, teacher
    share = None if minutes is None else minutes / (p.bow_rounds + (teacher is None))
    if teacher is None:
        teacher = os.path.join(model_dir, TEACHER_DIR)
        runs.append(dict(method="rotation", model_dir=teacher, epochs=p.bow_teacher_epochs or epochs,
                         train_minutes=share))
    for r in range(1, p.bow_rounds):
        done = os.path.join(model_dir, ROUND_DIR.format(r))
        runs.append(dict(method="bownet", model_dir=done, teacher_run=teacher, bow_rounds=1, train_minutes=share))
        teacher = done
    return runs, teacher


def load_teacher_encoder(path: str, image_size: int) -> keras.Model:
    """The encoder of a finished ssl_tf run (its directory, ``pretrain/`` or a checkpoint), rebuilt with the
    backbone and width that run recorded, frozen; it must have trained on ``image_size`` images."""
    checkpoint = checkpoints.pretraining_checkpoint(path)
    if not checkpoint:
        raise SSLTFError(f"--teacher_run={path}: no pretraining checkpoint found; accepted: the directory of a "
                         "finished ssl-tf run (e.g. --method=rotation) or one of its checkpoints")
    info = checkpoints.metadata(checkpoint)
    method, cfg = info.get("method"), info.get("config") or {}
    cls = REGISTRY.get(method)
    if cls is None or not {"backbone", "width", "image_size"} <= set(cfg):
        raise SSLTFError(f"--teacher_run={path}: {checkpoint} does not record the method and backbone that wrote "
                         "it; accepted: a run written by this version of ssl-tf")
    if cls.make_encoder.__func__ is not SSLMethod.make_encoder.__func__ or cls.encoder_input != "rgb":
        raise SSLTFError(f"--teacher_run={path}: written by --method={method}, whose encoder is not a plain RGB "
                         "backbone; accepted: a run of rotation, bownet or another method that trains one")
    if cfg["image_size"] != image_size:
        raise SSLTFError(f"--teacher_run={path}: trained on {cfg['image_size']} px images, this run on --image_size="
                         f"{image_size}; accepted: a teacher trained at the same size")
    build = backbone_builder(cfg["backbone"], width=cfg["width"])
    encoder = build(cfg["image_size"], "batch")
    try:
        checkpoints.read_encoder(encoder, checkpoint, cls.eval_encoder_attr)
    except (tf.errors.OpError, AssertionError, ValueError) as e:
        raise SSLTFError(f"--teacher_run={path}: {checkpoint} cannot be read as its {cfg['backbone']} encoder "
                         f"({str(e).splitlines()[0][:160]})") from None
    encoder.trainable = False
    return encoder


@register("bownet", family="pretext")
class BoWNet(SSLMethod):
    view_recipe = "bownet"

    # The optimiser of the CIFAR-100 reproduction (StoneY1/Reproducing-BowNet, arXiv 2201.03556): SGD 0.05 at
    # batch 128 (0.1 × batch/256), momentum 0.9, wd 5e-4; cosine here. The paper's own schedule is not quoted.
    recipe = dict(optimizer="sgd", learning_rate=0.1, lr_scaling="linear", weight_decay=5e-4, warmup_epochs=0.0,
                  crop_min_scale=0.08)

    @dataclasses.dataclass
    class Params(MethodParams):
        teacher_run: Optional[str] = param(None, "The teacher: a finished ssl-tf run (directory or checkpoint) with "
                                           "an RGB backbone encoder; by default ssl-tf first trains a rotation teacher "
                                           "(RotNet) in <model_dir>/teacher_rotation.",
                                           source="BoWNet Fig. 1: a RotNet teacher")
        bow_teacher_epochs: Optional[int] = param(None, "Epochs of that rotation teacher (default --epochs; with "
                                                        "--train_minutes the budget is shared instead).",
                                                  source="ours: the paper's RotNet is a fully trained network")
        bow_rounds: int = param(1, "Rounds: each round's student is the next round's teacher.",
                                source="BoWNet §2: Φ̂ ← Φ and train again")
        bow_layer: str = param("block3", "Teacher layer whose map is quantised into visual words.",
                               source="BoWNet (ImageNet): conv4 of the ResNet-50 RotNet, the second-to-last "
                                      "stage (ours: block3, 8×8 at 32 px)")
        bow_words: int = param(2048, "Vocabulary size K (k-means clusters).",
                               source="BoWNet's CIFAR-100 vocabulary as the reproduction (arXiv 2201.03556) "
                                      "reads it: K 2048, for 32 px images as ours")
        bow_pooling: str = param("count", "How the words of the locations pool into the bag: count (histogram) or "
                                 "max (whether each word occurs); L1-normalised either way.",
                                 source="BoWNet §2.2 gives both; its abstract: the histogram", choices=("count", "max"))
        bow_kmeans_images: int = param(10000, "Training images whose teacher features k-means clusters (all "
                                              "locations of each).",
                                       source="ours: 10,000 images × 64 locations = 640,000 features, over 300 per "
                                              "word at K 2048 (the paper's subset size is not quoted)")
        bow_kmeans_iters: int = param(20, "Lloyd iterations of k-means.",
                                      source="faiss's Kmeans default (niter 20), the library the authors use")
        bow_scale: float = param(10.0, "Initial value of the head's learnable scale γ (scores γ · cos(w_k, Φ)).",
                                 source="Gidaris & Komodakis 2018's cosine classifier: a learnable scale from 10 "
                                        "(BoWNet learns γ without stating its start)")
        cutmix_p: float = param(0.5, "Probability that a batch of student views is CutMixed.",
                                source="BoWNet §2.3: CutMix among the perturbations; p 0.5: CutMix's CIFAR "
                                       "recipe (clovaai/CutMix-PyTorch)")

        def validate(self, shared):
            super().validate(shared)
            check(self.bow_rounds >= 1, "bow_rounds", self.bow_rounds, "must be >= 1")
            check(self.bow_teacher_epochs is None or self.bow_teacher_epochs >= 1, "bow_teacher_epochs",
                  self.bow_teacher_epochs, "must be >= 1")
            check(self.bow_words >= 2, "bow_words", self.bow_words, "must be >= 2")
            check(self.bow_kmeans_images >= 1, "bow_kmeans_images", self.bow_kmeans_images, "must be >= 1")
            check(self.bow_kmeans_iters >= 1, "bow_kmeans_iters", self.bow_kmeans_iters, "must be >= 1")
            check(self.bow_scale > 0, "bow_scale", self.bow_scale, "must be > 0")
            check(0 <= self.cutmix_p <= 1, "cutmix_p", self.cutmix_p, "must be in [0, 1]")
            if self.teacher_run is not None:
                check(bool(self.teacher_run.strip()), "teacher_run", self.teacher_run,
                      "must name a run directory or checkpoint")

    def __init__(self, encoder, num_classes=0, teacher_encoder=None, layer="block3", words=2048, scale=10.0,
                 pooling="count", cutmix_p=0.5, kmeans_images=10000, kmeans_iters=20, image_size=None, seed=0,
                 **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        if teacher_encoder is None:   # the Keras path without a teacher: a random-init one of the same shape
            teacher_encoder = keras.models.clone_model(encoder)
            self.teacher_source = "a random-init copy of the student's backbone (no teacher given)"
        else:
            self.teacher_source = "the given teacher"
        teacher_encoder.trainable = False              # fixed: its words and targets do not move
        self.teacher_encoder = teacher_encoder
        self.teacher_map = keras.Model(teacher_encoder.input, feature_map(teacher_encoder, layer, "bow_layer"),
                                       name="teacher_map")
        self.words, self.pooling, self.cutmix_p, self.seed = words, pooling, cutmix_p, seed
        self.kmeans_images, self.kmeans_iters, self.image_size = kmeans_images, kmeans_iters, image_size
        self.vocabulary = self.add_weight(shape=(words, self.teacher_map.output_shape[-1]), initializer="zeros",
                                          trainable=False, name="vocabulary", aggregation="only_first_replica")
        self.head = CosineClassifier(words, scale, name="bow_head")
        self.prepared = False

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        teacher = load_teacher_encoder(p.teacher_run, shared.image_size) if p.teacher_run else None
        method = cls(encoder, num_classes, teacher_encoder=teacher, layer=p.bow_layer, words=p.bow_words,
                     scale=p.bow_scale, pooling=p.bow_pooling, cutmix_p=p.cutmix_p, kmeans_images=p.bow_kmeans_images,
                     kmeans_iters=p.bow_kmeans_iters, image_size=shared.image_size, seed=shared.seed)
        if p.teacher_run:
            method.teacher_source = f"--teacher_run={p.teacher_run}"
        return method

    @classmethod
    def prior_runs(cls, cfg) -> list[dict]:
        runs, teacher = teacher_chain(cfg.params, cfg.model_dir, cfg.epochs, cfg.train_minutes)
        if runs:
            cfg.params.teacher_run = teacher
            cfg.train_minutes = runs[-1]["train_minutes"]
        return runs

    def teacher_features(self, images):
        """The teacher's local features [b, h·w, C] (frozen, BN in inference mode)."""
        fmap = tf.stop_gradient(tf.cast(self.teacher_map(images, training=False), tf.float32))
        return tf.reshape(fmap, [tf.shape(fmap)[0], -1, fmap.shape[-1]])

    def prepare(self, examples: Examples, log=print, batch_size: int = 256) -> list[float]:
        """Build the vocabulary: k-means (``bow_words`` clusters) over the teacher's local features of the
        first ``kmeans_images`` of a seeded shuffle of ``examples``. Returns the mean squared distance to
        the nearest word after each iteration."""
        n = min(self.kmeans_images, len(examples))
        if n < 1:
            raise SSLTFError("BoWNet.prepare: no training images to build the vocabulary from")
        pick = np.sort(np.random.default_rng(self.seed).permutation(len(examples))[:n])
        side = self.image_size or examples.images.shape[1]
        forward = tf.function(self.teacher_features, reduce_retracing=True)
        points = tf.concat([tf.reshape(forward(x), [-1, self.vocabulary.shape[-1]])
                            for x, _ in pipeline.eval_batches(examples.subset(pick), side, batch_size)], 0)
        if points.shape[0] < self.words:
            raise SSLTFError(f"--bow_words={self.words}: more words than the {points.shape[0]} teacher features of "
                             f"{n} images; accepted: at most {points.shape[0]} (or raise --bow_kmeans_images)")
        centroids, inertia = kmeans(points, self.words, self.kmeans_iters, self.seed)
        self.vocabulary.assign(centroids)
        self.prepared = True
        log(f"[bownet] vocabulary: k-means of {points.shape[0]} features of {n} images from {self.teacher_source}, "
            f"{self.words} words; mean squared distance {inertia[0]:.4g} -> {inertia[-1]:.4g} in "
            f"{len(inertia)} iterations")
        return inertia

    def bags(self, images):
        """Each image's bag of words [b, K] under the teacher and the vocabulary (BoWNet §2.2)."""
        return hard_bow(word_distances(self.teacher_features(images), self.vocabulary), self.pooling)

    def mix(self, views, bags):
        """CutMix on the batch with probability ``cutmix_p``: each view takes a box from the next one."""
        if self.cutmix_p == 0:
            return views, bags
        b = tf.shape(views)[0]
        draws = tf.random.stateless_uniform([4], self.step_seed(11, per_replica=False))   # one draw for the batch
        partner = (tf.range(b) + 1) % b
        mixed, mixed_bags, _ = ops.cutmix(views, bags, draws[1:], partner)
        apply = draws[0] < self.cutmix_p
        return tf.where(apply, mixed, views), tf.where(apply, mixed_bags, bags)

    def objective(self, batch, training):
        if not self.prepared:
            raise SSLTFError("BoWNet: call prepare(examples) before training: k-means builds its vocabulary from "
                             "the teacher's features of the training images")
        teacher_view, student_view = batch["views"]
        bags = self.bags(teacher_view)
        student_view, targets = self.mix(student_view, bags)
        student_view, = after(targets, student_view)       # the teacher's forward first (base.after)
        features = self.encoder(student_view, training=training)
        logits = self.head(features)
        loss = bow_prediction_loss(targets, logits)
        used = tf.reduce_mean(tf.cast(tf.reduce_sum(bags, 0) > 0, tf.float32))
        return Objective(loss, features=features, embeddings=features,
                         logs={"bow_scale": tf.identity(self.head.scale), "words_used": used})
