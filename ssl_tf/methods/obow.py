"""OBoW (Gidaris et al. 2021, *OBoW: Online Bag-of-Visual-Words Generation for Self-Supervised
Learning*): a student predicts the bag of visual words of a teacher's feature maps.

The teacher, an EMA of the student (momentum 0.99 → 1 on a cosine), sees the evaluation view (flipped
at random); its maps at two levels (``--obow_levels``, ResNet blocks 3 and 4) are quantised
against each level's vocabulary of K words with OBoW's soft assignment, and each image's target is
the bag of words over its locations (``losses.soft_bow``). The vocabulary is online: a queue to
which every step adds one locally averaged teacher feature per image of the global batch. The
student sees 2 global and ``num_local_crops`` local crops; its pooled feature of each crop is
scored against one weight vector per word, generated from the current vocabulary by a small
network (``models.word_generator``), scaled by κ. Loss: the cross-entropy between the teacher's
bag and the student's softmax, averaged over the crops of each kind, summed over the two kinds
and averaged over the levels (valeoai/obow ``builder_obow.py``).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.data import views
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import bow_prediction_loss, local_average_pick, soft_bow, word_distances
from ssl_tf.methods.base import Objective, SSLMethod, after, clone_network, encode_views, enqueue, feature_map
from ssl_tf.methods.settings import MomentumParams, check, param, register
from ssl_tf.models import word_generator
from ssl_tf.optim import cosine_momentum

# valeoai/obow builder_obow.py: the running mean of the distance to the nearest word moves by 0.01 a
# step, starting from 0.5
MIN_DISTANCE_MOMENTUM, MIN_DISTANCE_START = 0.99, 0.5


def _levels(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


@register("obow", family="joint")
class OBoW(SSLMethod):
    view_recipe = "obow"

    # valeoai/obow ResNet18_OBoW_full.yaml (ImageNet, ResNet-18): SGD 0.05 at batch 128 (0.1 × batch/256),
    # momentum 0.9, wd 5e-4, cosine; ResNet50_OBoW_full.yaml: 10 warm-up epochs. Student crops from 8 %.
    recipe = dict(optimizer="sgd", learning_rate=0.1, lr_scaling="linear", weight_decay=5e-4, warmup_epochs=10.0,
                  crop_min_scale=0.08)

    @dataclasses.dataclass
    class Params(MomentumParams):
        target_momentum: float = param(0.99, "Momentum of the teacher, rising to 1 on a cosine.",
                                       source="valeoai/obow ResNet*_OBoW_full.yaml: alpha 0.99, cosine to 1")
        obow_levels: str = param("block3,block4", "Teacher layers whose maps give the bags of words "
                                 "(comma-separated backbone layer names).",
                                 source="OBoW §4.1: conv4 and conv5; obow bow_levels [block3, block4]")
        obow_words: int = param(8192, "Vocabulary size K of each level (a multiple of --batch_size: the queue "
                                "takes one batch a step).", source="OBoW §4.1: K 8192")
        obow_inv_delta: float = param(10.0, "Inverse softness of the assignment: codes softmax(−d² · inv_delta / "
                                      "μ), μ the running mean distance to the nearest word.",
                                      source="valeoai/obow ResNet18_OBoW_full.yaml: inv_delta 10 (ResNet-50: 15)")
        obow_kappa: float = param(5.0, "Scale κ of the student's scores (fixed).",
                                  source="valeoai/obow ResNet18_OBoW_full.yaml: kappa 5 (ResNet-50: 8)")
        obow_crop_max: float = param(0.6, "Global crops cover --crop_min_scale to this fraction of the image.",
                                     source="valeoai/obow datasets.py: RandomResizedCrop scale (0.08, 0.6)")
        num_local_crops: int = param(5, "Local crops per image besides the 2 global ones.",
                                     source="OBoW §4.1: 5 of 9 patches")
        local_crop_size: Optional[int] = param(None, "Local crop side (default: image_size × 96/224, half the "
                                                     "image at <= 32 px).", source="OBoW §4.1: 96 at 224 px")

        def resolve(self, shared):
            if self.local_crop_size is None:
                self.local_crop_size = views.local_crop_side(shared.image_size)

        def validate(self, shared):
            super().validate(shared)
            check(len(_levels(self.obow_levels)) >= 1, "obow_levels", self.obow_levels,
                  "name one or more backbone layers, e.g. block3,block4")
            check(self.obow_words >= 1, "obow_words", self.obow_words, "must be >= 1")
            check(self.obow_words % shared.batch_size == 0, "obow_words", self.obow_words,
                  f"must be a multiple of --batch_size={shared.batch_size} (each step replaces one batch of words)")
            check(self.obow_inv_delta > 0, "obow_inv_delta", self.obow_inv_delta, "must be > 0")
            check(self.obow_kappa > 0, "obow_kappa", self.obow_kappa, "must be > 0")
            check(shared.crop_min_scale < self.obow_crop_max <= 1, "obow_crop_max", self.obow_crop_max,
                  f"must be in (--crop_min_scale={shared.crop_min_scale}, 1]")
            check(self.num_local_crops >= 0, "num_local_crops", self.num_local_crops, "must be >= 0")
            check(self.local_crop_size >= 4, "local_crop_size", self.local_crop_size, "must be >= 4")

        def augment(self):
            return dict(num_local_crops=self.num_local_crops, local_size=self.local_crop_size,
                        global_crop_max=self.obow_crop_max)

    def __init__(self, encoder, num_classes=0, levels=("block3", "block4"), words=8192, inv_delta=10.0, kappa=5.0,
                 momentum=0.99, num_examples=None, ema_bn_stats=False, seed=0, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        levels = list(levels)
        if num_examples is not None and words > num_examples:
            raise SSLTFError(f"--obow_words={words}: more words than the {num_examples} training images give "
                              "features in an epoch; accepted: at most the training set's size")
        self.levels, self.inv_delta, self.kappa = levels, inv_delta, kappa
        self.momentum, self.ema_bn_stats, self.seed = momentum, ema_bn_stats, seed
        self.teacher_encoder = clone_network(encoder, name="teacher_encoder")
        maps = [feature_map(self.teacher_encoder, level, "obow_levels") for level in levels]
        self.teacher_maps = keras.Model(self.teacher_encoder.input, maps, name="teacher_maps")
        feature_dim = encoder.output_shape[-1]
        self.vocabularies, self.pointers, self.min_distances, self.generators = [], [], [], []
        for level, fmap in zip(levels, maps):
            # valeoai/obow: the queue starts as randn clamped at 0 (teacher features follow a ReLU)
            self.vocabularies.append(self.add_weight(
                shape=(words, fmap.shape[-1]), trainable=False, name=f"words_{level}",
                initializer=lambda shape, dtype=None: tf.maximum(tf.random.normal(shape), 0.0),
                aggregation="only_first_replica"))
            self.pointers.append(self.add_weight(shape=(), dtype="int32", initializer="zeros", trainable=False,
                                                 name=f"words_pointer_{level}", aggregation="only_first_replica"))
            self.min_distances.append(self.add_weight(
                shape=(), initializer=keras.initializers.Constant(MIN_DISTANCE_START), trainable=False,
                name=f"mean_min_distance_{level}", aggregation="only_first_replica"))
            self.generators.append(word_generator(fmap.shape[-1], feature_dim, name=f"generator_{level}"))

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, levels=_levels(p.obow_levels), words=p.obow_words,
                   inv_delta=p.obow_inv_delta, kappa=p.obow_kappa, momentum=p.target_momentum,
                   num_examples=num_examples if num_examples > 1 else None, ema_bn_stats=p.ema_bn_stats,
                   seed=shared.seed)

    @property
    def target_pairs(self):
        return [(self.teacher_encoder, self.encoder)]

    def teacher_bags(self, images, training):
        """Each level's bag of words [b, K] of the teacher's view, with what the step's vocabulary
        update needs: one locally averaged feature per image of the global batch and the new mean
        distance to the nearest word."""
        bags, update = [], {}
        # tf.nest.flatten: a Keras model of one output (--obow_levels=block4) returns a tensor, not a list
        for i, fmap in enumerate(tf.nest.flatten(self.teacher_maps(images, training=training))):
            fmap = tf.stop_gradient(tf.cast(fmap, tf.float32))
            if fmap.shape[1] > 4:   # OBoW drops the border of its 14×14 and 7×7 maps; a 4×4 map keeps it
                fmap = fmap[:, 1:-1, 1:-1]
            b, side, channels = tf.shape(fmap)[0], fmap.shape[1], fmap.shape[-1]
            distances = word_distances(tf.reshape(fmap, [b, -1, channels]), self.vocabularies[i])
            nearest = tf.reduce_min(distances, -1)
            batch_mean = (distribute.cross_replica_sum(tf.reduce_sum(nearest))
                          / distribute.cross_replica_sum(tf.cast(tf.size(nearest), tf.float32)))
            mean = MIN_DISTANCE_MOMENTUM * self.min_distances[i] + (1 - MIN_DISTANCE_MOMENTUM) * batch_mean
            bags.append(soft_bow(distances, self.inv_delta, mean))
            kernel = min(3, side)   # OBoW: 3×3 local averages
            where = self.batch_uniform(b, [], 5 + i, minval=0, maxval=(side - kernel + 1) ** 2, dtype=tf.int32)
            update[f"words_{i}"] = distribute.gather(local_average_pick(fmap, where, kernel))
            update[f"mean_min_distance_{i}"] = mean
        return bags, update

    def objective(self, batch, training):
        teacher_view, global_views, local_views = batch["views"]   # [b, S, S, 3], [b, 2, S, S, 3], [b, n, s, s, 3]
        bags, update = self.teacher_bags(teacher_view, training)
        crops = [global_views[:, 0], global_views[:, 1]] + [local_views[:, i] for i in range(local_views.shape[1])]
        crops = after(bags, *crops)                           # the teacher's forward first (base.after)
        features = encode_views(self.encoder, crops, training)
        kinds = [features[:2]] + ([features[2:]] if len(features) > 2 else [])
        per_level = []
        for i, bag in enumerate(bags):
            weights = self.generators[i](self.vocabularies[i], training=training)          # [K, C], unit rows
            per_level.append(tf.add_n([
                tf.add_n([bow_prediction_loss(bag, self.kappa * tf.matmul(f, weights, transpose_b=True))
                          for f in kind]) / len(kind) for kind in kinds]))
        loss = tf.add_n(per_level) / len(per_level)
        logs = {f"loss_{level}": value for level, value in zip(self.levels, per_level)}
        return Objective(loss, features=features[0], embeddings=features[0], logs=logs, aux=update)

    def after_update(self, aux, step):
        self.momentum_update(cosine_momentum(self.momentum, step, self.total_steps))
        for i in range(len(self.levels)):
            enqueue(self.vocabularies[i], self.pointers[i], aux[f"words_{i}"])
            self.min_distances[i].assign(aux[f"mean_min_distance_{i}"])
