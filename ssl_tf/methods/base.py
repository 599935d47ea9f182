"""The shared machinery of every method: one ``train_step``, an online probe, a collapse monitor.

A method subclasses ``SSLMethod`` and writes ``objective(batch, training)``: its loss as in
the paper, returned with the backbone features the online probe should see. The base
class does the rest:

* scales the loss by 1/replicas (the optimizer sums replica gradients, so the update is
  the gradient of the global mean loss) and applies it to the method's own variables;
* trains the online linear probe on stop-gradient features with its own optimizer, on
  labelled examples only (label -1 = unlabelled);
* reports the collapse monitor: ``embedding_std``, the mean per-dimension std of
  L2-normalised embeddings times √d (about 1 spread out, 0 at complete collapse), and
  ``effective_rank`` of the embedding batch (the runner warns at epoch end on collapse);
* calls ``after_update(aux, step)`` once the optimizer has stepped: where momentum/EMA
  target networks, queues, memory banks and centres are updated;
* gives ``fixed_lr_variables`` (SimSiam's predictor) to a second optimizer with a constant lr.

Shared by the momentum and teacher-student methods: ``clone_network`` (a target network of
the same architecture), ``ema_pairs``/``ema_update`` (θ_t ← m·θ_t + (1 − m)·θ_o, BN
statistics included or not), ``encode_views`` (multi-crop batching by resolution),
``after`` (the target's forward before the online one), ``write_rows`` (in-place row
updates of queues and memory banks) and ``MemoryBank`` (NPID's bank, also CMC's and PIRL's).
"""
from __future__ import annotations

import inspect
import typing

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.data import pipeline, views
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError
from ssl_tf.losses import batch_info_nce, memory_bank_logits, memory_bank_nce, nce_normaliser
from ssl_tf.models import linear_head, representation_layers
from ssl_tf.models.layers import BatchNorm
from ssl_tf.optim import loss_scale as scaling


class Objective(typing.NamedTuple):
    loss: tf.Tensor                 # scalar, mean over this replica's examples
    features: tf.Tensor | None      # [b, F] backbone features of one view, for the probe
    embeddings: tf.Tensor | None    # [b, D] for the collapse monitor
    logs: dict                      # extra scalars to report
    aux: dict = {}                  # tensors handed to ``after_update`` (keys to enqueue, …)


def embedding_std(z):
    """Mean per-dimension std of L2-normalised ``z``, times √d (≈1 spread out, 0 collapsed)."""
    u = tf.math.l2_normalize(z, -1)
    d = tf.cast(tf.shape(u)[-1], u.dtype)
    return tf.reduce_mean(tf.math.reduce_std(u, axis=0)) * tf.sqrt(d)


def effective_rank(z):
    """exp of the entropy of the normalised singular values of the L2-normalised batch ``z``
    (Roy & Vetterli 2007; RankMe, Garrido et al. 2023): between 1 (collapsed to one direction)
    and min(b, d)."""
    s = tf.linalg.svd(tf.math.l2_normalize(tf.cast(z, tf.float32), -1), compute_uv=False)
    p = s / tf.maximum(tf.reduce_sum(s), 1e-12) + 1e-12
    return tf.exp(-tf.reduce_sum(p * tf.math.log(p)))


def feature_map(encoder: keras.Model, layer: str, flag: str):
    """The symbolic output of ``encoder``'s representation layer ``layer`` (a local feature map for Deep
    InfoMax, AMDIM), or a one-line error naming ``--flag`` and the layers there are."""
    names = [n for n in representation_layers(encoder) if n != "pooled"]
    if layer not in names:
        raise SSLTFError(f"--{flag}={layer}: the {encoder.name} backbone has no such layer; accepted: "
                         f"{', '.join(names)}")
    return encoder.get_layer(layer).output


def clone_network(network: keras.Model, sync_bn: bool | None = None, name: str | None = None) -> keras.Model:
    """A network of the same architecture with a copy of ``network``'s weights (a momentum / EMA
    target). ``sync_bn`` overrides the cross-replica BN of every ``BatchNorm`` (MoCo's keys must
    not sync)."""
    def clone_layer(layer):
        config = layer.get_config()
        if isinstance(layer, BatchNorm) and sync_bn is not None:
            config["sync"] = sync_bn
        return layer.__class__.from_config(config)
    clone = keras.models.clone_model(network, clone_function=clone_layer)
    if name:
        clone.name = name
    clone.set_weights(network.get_weights())
    return clone


def ema_pairs(target, online, include_bn_stats: bool = False):
    """(target variable, online variable) pairs of two networks of the same architecture: the
    trainable weights, plus BN moving statistics when ``include_bn_stats`` (else the target keeps
    the statistics of its own forward passes, as MoCo and BYOL's code do)."""
    if include_bn_stats:
        t, o = target.weights, online.weights
    else:
        t, o = target.trainable_weights, online.trainable_weights
    if len(t) != len(o) or any(a.shape != b.shape for a, b in zip(t, o)):
        raise ValueError("ema_pairs: the target and online networks differ in architecture")
    return list(zip(t, o))


def ema_update(pairs, momentum):
    """θ_t ← m·θ_t + (1 − m)·θ_o for every pair (MoCo eq. 2, BYOL eq. 1, DINO's teacher)."""
    m = tf.cast(momentum, tf.float32)
    for target, online in pairs:
        target.assign(m * target + (1.0 - m) * online)


def write_rows(variable, rows, values):
    """``variable[rows] = values`` in place (a queue or memory bank of K rows): a scatter into
    the variable's own buffer rather than ``assign`` of an updated copy of all K rows (one
    K × d copy per step; its effect on MoCo's peak RSS was within the run-to-run spread). Under a
    strategy, the variables of the ``only_first_replica`` kind take the first replica's rows."""
    target = getattr(variable, "value", variable)   # a Keras variable wraps a tf.Variable
    target.scatter_update(tf.IndexedSlices(tf.cast(values, target.dtype), rows))


def enqueue(queue, pointer, values):
    """Write ``values`` [B, C] over the B oldest rows of ``queue`` [K, C], a ring whose oldest row is
    at ``pointer`` (MoCo's keys, OBoW's words); K is a multiple of B, so a batch never wraps halfway."""
    n = tf.shape(values)[0]
    write_rows(queue, (pointer + tf.range(n)) % queue.shape[0], values)
    pointer.assign((pointer + n) % queue.shape[0])


def updated_rows(rows, features, momentum: float):
    """The memory-bank update v ← (m·v + (1 − m)·f) / ||m·v + (1 − m)·f|| (NPID §3.2)."""
    return tf.math.l2_normalize(momentum * rows + (1.0 - momentum) * features, -1)


class MemoryBank(keras.layers.Layer):
    """NPID's memory bank (Wu et al. 2018 §3.2): one L2-normalised row per training image, moved
    towards that image's newest feature after every step. NPID scores an image's feature against
    its own row, CMC one view's feature against the other view's bank, PIRL the jigsaw tiles'
    feature against the image's row. The NCE normaliser Z is estimated on the first batch and
    then kept (the authors' code), so it lives here, beside the rows it normalises."""

    def __init__(self, num_examples: int, dim: int, momentum: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.num_examples, self.momentum = num_examples, momentum
        stdv = 1.0 / (dim / 3) ** 0.5     # the authors' initialisation: uniform in [-stdv, stdv]
        # One copy of the bank, not one per replica: after_update writes the gathered global batch.
        self.rows = self.add_weight(shape=(num_examples, dim), trainable=False, name="rows",
                                    initializer=lambda shape, dtype=None: tf.random.uniform(shape, -stdv, stdv),
                                    aggregation="only_first_replica")
        self.z = self.add_weight(shape=(), initializer="zeros", trainable=False, name="nce_z",
                                 aggregation="only_first_replica")
        self.built = True

    def draw(self, method: "SSLMethod", batch, count: int, salt: int = 2):
        """``count`` row indices for each of this replica's ``batch`` examples, uniform over the dataset
        (NPID's noise P_n = 1/n), drawn for the global batch (``SSLMethod.batch_uniform``)."""
        return method.batch_uniform(batch, [count], salt, minval=0, maxval=self.num_examples, dtype=tf.int64)

    def loss(self, features, index, negatives, temperature: float, kind: str = "nce", z=None):
        """(loss, Z): ``features`` [b, d] (L2-normalised) against their own rows ``index`` and the
        drawn rows ``negatives`` [b, K], by ``memory_bank_nce``; Z is ``z`` if given, else the kept
        one, or the replica-mean estimate of this batch while none is kept yet."""
        logits = memory_bank_logits(features, tf.gather(self.rows, index), tf.gather(self.rows, negatives),
                                    temperature)
        if z is None:
            estimate = distribute.cross_replica_sum(nce_normaliser(logits, self.num_examples))
            z = tf.where(self.z > 0, self.z, estimate / distribute.num_replicas())
        return memory_bank_nce(logits, self.num_examples, z, kind), z

    def update(self, index, features, z):
        """Move the rows ``index`` towards ``features`` (the gathered global batch) and keep ``z``."""
        write_rows(self.rows, index, updated_rows(tf.gather(self.rows, index), features, self.momentum))
        self.z.assign(z)


def contrast_both_ways(a, b, temperature: float):
    """(InfoNCE(a → b), InfoNCE(b → a)): each replica's rows of ``a`` against the gathered batch of ``b``
    and the other way round, the same image's row the positive (CMC's and PIRL's batch-negative losses)."""
    offset = distribute.replica_id() * tf.shape(a)[0]
    return (batch_info_nce(a, distribute.gather(b), temperature, offset),
            batch_info_nce(b, distribute.gather(a), temperature, offset))


def after(first, *tensors):
    """``tensors`` as they are, but usable only once ``first`` (any nest of tensors) exists.
    Methods run their target / key / teacher forward first and hand the online network its
    views through ``after``: the target's activations are freed before the online forward
    starts keeping its own for the backward pass. Left to TensorFlow's scheduler, the two
    forwards overlap and the step's peak RSS was ~380 MB higher for MoCo."""
    with tf.control_dependencies(tf.nest.flatten(first)):
        return [tf.identity(t) for t in tensors]


def target_outputs(encoder, head, views, training):
    """A target network's (encoder then head) outputs for each view, without gradient."""
    return [tf.stop_gradient(head(h, training=training)) for h in encode_views(encoder, views, training)]


def encode_views(network, views, training):
    """Run ``network`` on a list of view batches, concatenating consecutive views of the same
    resolution into one pass (DINO's multi-crop wrapper): [f(v) for v in views]."""
    out, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[1:] == views[start].shape[1:]:
            end += 1
        y = network(tf.concat(views[start:end], 0), training=training)
        out += tf.split(y, end - start, 0)
        start = end
    return out


def _endless(dataset) -> bool:
    """Whether a dataset never ends for practical purposes (ssl_tf's streams count to 2^62)."""
    n = int(dataset.cardinality())
    return n == int(tf.data.INFINITE_CARDINALITY) or n > 2 ** 40


class SSLMethod(keras.Model):
    name: str = ""               # --method name and family, set by settings.register
    family: str = ""
    needs_labels = False         # trains on labelled data too (S4L, FixMatch, MixMatch)
    recipe: dict = {}            # shared settings (optimizer, lr, batch …) whose defaults the method's paper changes
    shapes_recipe: dict = {}     # … and on the built-in shapes demo dataset
    view_recipe = "two_views"    # the data/views.py recipe the method trains on
    encoder_input = "rgb"        # what the backbone sees of its RGB input: rgb | lightness
    eval_encoder_attr = "encoder"  # which network evaluation and export use (DINO: the teacher)
    total_steps = 1              # the schedules' length and dynamic loss scaling: ``set_schedule``
    steps_per_epoch = 1
    loss_scaling = False

    def __init__(self, encoder: keras.Model, num_classes: int = 0, online_probe: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_classes = num_classes
        self.probe = linear_head(num_classes, name="online_probe") if (online_probe and num_classes > 0) else None
        self.probe_optimizer = None
        self.fixed_optimizer = None

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type != "checkpoint":
            return children
        # Keras keeps a list attribute as its own TrackedList, which tf.train.Checkpoint does not walk. Only
        # the trainable variables of a listed layer reached checkpoints (through the optimizer); a method's
        # listed state — OBoW's word queues and their pointers, CMC's memory banks, BN statistics of listed
        # networks — was left out and a resumed run restarted it. Each item becomes a child "<attr>_<i>".
        for attr, value in list(vars(self).items()):
            if attr.startswith("_") or not isinstance(value, (list, tuple)):
                continue
            for i, item in enumerate(value):
                if isinstance(item, tf.__internal__.tracking.Trackable):
                    children.setdefault(f"{attr}_{i}", item)
        return children

    @classmethod
    def make_encoder(cls, backbone, cfg) -> keras.Model:
        """The encoder the method trains, evaluation probes, fine-tuning starts from and export writes,
        from ``backbone(image_size, norm)`` (a builder of the configured backbone) and the resolved
        ``cfg``: the backbone itself by default (CPC v2: the mean over a patch grid)."""
        return backbone(cfg.image_size, "batch")

    @classmethod
    def from_params(cls, p, shared, encoder: keras.Model, num_classes: int, num_examples: int = 1) -> "SSLMethod":
        """The method built from its own resolved ``Params`` ``p`` and the shared ``Config``."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg, encoder: keras.Model, num_classes: int, num_examples: int = 1) -> "SSLMethod":
        """The method of a resolved ``Config`` (``config.resolve``): its ``params`` and shared settings."""
        if cfg.params is None or not isinstance(cfg.params, cls.Params):
            raise ValueError(f"{cls.__name__}.from_config: pass a Config resolved for --method={cls.name} "
                             "(ssl_tf.config.resolve)")
        method = cls.from_params(cfg.params, cfg, encoder, num_classes, num_examples)
        method.params = cfg.params      # its views' settings (patch size, local crops …) for ``stream``
        return method

    @classmethod
    def prior_runs(cls, cfg) -> list[dict]:
        """Runs that ``ssl-tf`` pretrains before this one (BoWNet's teacher and earlier rounds), each as
        ``Config`` changes with its own ``model_dir``; may point the resolved ``cfg`` at them."""
        return []

    def prepare(self, examples: Examples, log=print) -> None:
        """Runs once, after the method is built and before training, with the training ``examples``
        (BoWNet: k-means builds the vocabulary). ``fit`` users call it themselves."""
        return None

    # -- the one hook a method writes -------------------------------------------------
    def objective(self, batch, training: bool) -> Objective:
        raise NotImplementedError

    def after_update(self, aux: dict, step):
        """Runs after the optimizer step (``step``: its index before the update)."""
        return None

    @property
    def target_pairs(self) -> list:
        """(target, online) network pairs: momentum / EMA / teacher networks, never given to the optimizer."""
        return []

    @property
    def targets(self) -> list:
        return [target for target, _ in self.target_pairs]

    def momentum_update(self, momentum):
        """Every target ← m·target + (1 − m)·online (BN statistics too when ``ema_bn_stats``)."""
        include = getattr(self, "ema_bn_stats", False)
        ema_update([p for target, online in self.target_pairs for p in ema_pairs(target, online, include)], momentum)

    @property
    def own_optimizers(self) -> dict:
        """Optimizers the method keeps beside ``optimizer`` (BigBiGAN's discriminator's), by checkpoint name:
        the runner checkpoints them and re-sizes their schedules."""
        return {}

    def epoch_images(self, batch) -> dict:
        """{name: [n, H, W, 3] in [0, 1]} to look at after every epoch (BigBiGAN's samples and
        reconstructions), from a training ``batch``: the runner writes PNG grids and TensorBoard images."""
        return {}

    def exports(self) -> dict:
        """{directory name: network} SavedModels written beside the encoder's once pretraining ends
        (BigBiGAN's generator: z in, images out)."""
        return {}

    @property
    def fixed_lr_variables(self) -> list:
        """Variables trained by ``fixed_optimizer`` at a constant learning rate."""
        return []

    # -- data -------------------------------------------------------------------------
    def input_stream(self, examples: Examples, augment: views.AugmentConfig, *, global_batch: int, seed: int,
                     start_step: int = 0, input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
        """This input pipeline's per-replica batches (default: one stream of ``view_recipe`` views)."""
        return pipeline.train_stream(examples, views.views_for(self.view_recipe, augment), global_batch=global_batch,
                                     seed=seed, start_step=start_step, input_context=input_context)

    def batches_per_epoch(self, examples: Examples, global_batch: int) -> int:
        return pipeline.steps_per_epoch(examples, global_batch)

    # -- setup ------------------------------------------------------------------------
    def call(self, images: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.encoder(images, training=training)

    def build_with(self, batch: dict, optimizer: keras.optimizers.Optimizer,
                   probe_optimizer: keras.optimizers.Optimizer | None = None,
                   fixed_optimizer: keras.optimizers.Optimizer | None = None, compile: bool = True) -> None:
        """Create every variable by running the objective on ``batch`` (a subclassed model's
        ``build`` cannot), then build the optimizers on the method's and the probe's variables.
        The objective runs eagerly on the first two examples only: shapes are what create the
        variables, and an eager pass over a whole batch would hold every activation at once (it
        set the peak memory of a whole run). ``compile=False``: keep the user's ``compile`` settings
        (``optimizer`` is then the compiled one)."""
        if self.loss_scaling:   # the loss scale and its count of finite steps, checkpointed with the model
            self.loss_scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(scaling.INITIAL_SCALE),
                                              trainable=False, name="loss_scale", aggregation="only_first_replica")
            self.loss_scale_good_steps = self.add_weight(shape=(), dtype="int64", initializer="zeros", trainable=False,
                                                         name="loss_scale_good_steps", aggregation="only_first_replica")
        out = self.objective(tf.nest.map_structure(lambda t: t[:2] if t.shape.rank else t, batch), training=False)
        if self.probe is not None:
            self.probe(out.features)
        if compile:
            self.compile(optimizer=optimizer, jit_compile=False)
        fixed = self.fixed_lr_variables
        if fixed:
            if fixed_optimizer is None:
                raise SSLTFError(f"{type(self).__name__} trains some variables at a fixed learning rate: set "
                                 "method.fixed_optimizer (an optimizer at that constant rate) before fit, or pass "
                                 "fixed_optimizer to build_with")
            self.fixed_optimizer = fixed_optimizer
            self.fixed_optimizer.build(fixed)
        self.optimizer.build(self._split(self.method_variables)[0])
        if self.probe is not None:
            self.probe_optimizer = probe_optimizer or keras.optimizers.Adam(1e-3)
            self.probe_optimizer.build(self.probe.trainable_variables)
        self.built = self.ready_to_train = True   # every variable exists: Keras callbacks may load weights now

    # -- the Keras-native path (one device) ----------------------------------------------
    def stream(self, examples: Examples, batch_size: int, augment: views.AugmentConfig | None = None,
               seed: int = 0) -> tf.data.Dataset:
        """``fit``'s input: endless, seeded batches of ``examples`` in this method's view recipe
        (``augment`` defaults to ``AugmentConfig`` at the images' own side, with what the method's
        ``Params`` set when it was built by ``build_method`` or ``from_config``). One pass over the data
        is ``self.batches_per_epoch(examples, batch_size)`` steps."""
        if augment is None:
            side = examples.images.shape[1] if examples.images is not None else views.AugmentConfig.image_size
            params = getattr(self, "params", None)
            augment = views.AugmentConfig(image_size=int(side), **(params.augment() if params is not None else {}))
        return self.input_stream(examples, augment, global_batch=batch_size, seed=seed)

    def fit(self, *args, **kwargs):
        """Keras ``fit`` on one device, after ``compile(optimizer=…)``, with ``x`` a ``tf.data.Dataset``
        (``stream``). The first call builds the method on ``x``'s first batch (``build_with``, keeping
        the compile settings). Every call sizes the method's schedules (target momentum, teacher
        temperature, ramp-ups) to ``epochs × steps_per_epoch`` (a finite dataset's length when no
        ``steps_per_epoch``), retracing the step when they change. Strategies, atomic checkpoints and
        the evaluation modes are the runner's (``ssl-tf``): Keras ``fit`` fails under
        MultiWorkerMirroredStrategy (keras-team/keras#20585)."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        shuffle_given = "shuffle" in bound.arguments
        bound.apply_defaults()
        if not shuffle_given:   # a stream is shuffled by its seed; Keras would warn that it ignores shuffle=True
            bound.arguments["shuffle"] = False
        x, epochs, steps = bound.arguments["x"], bound.arguments["epochs"], bound.arguments["steps_per_epoch"]
        if not isinstance(x, tf.data.Dataset):
            raise SSLTFError(f"fit: x must be a tf.data.Dataset such as method.stream(examples, batch_size); got "
                             f"{type(x).__name__}")
        if steps is None:
            n = int(x.cardinality())
            if _endless(x) or n < 0:
                raise SSLTFError("fit: x is an endless (or unknown-length) stream; pass steps_per_epoch "
                                 "(method.batches_per_epoch(examples, batch_size) steps are one pass over the data)")
            steps = n
        self.set_schedule(int(steps), int(steps) * int(epochs))
        if not getattr(self, "ready_to_train", False):
            if getattr(self, "optimizer", None) is None:
                raise SSLTFError("fit: call compile(optimizer=...) first, e.g. "
                                 "method.compile(optimizer=ssl_tf.optim.build_optimizer('lars', 0.3, 1e-6))")
            self.build_with(next(iter(x)), self.optimizer, probe_optimizer=self.probe_optimizer,
                            fixed_optimizer=self.fixed_optimizer, compile=False)
        return super().fit(*bound.args[1:], **bound.kwargs)

    def set_schedule(self, steps_per_epoch: int, total_steps: int, loss_scaling: bool | None = None) -> None:
        """The training length the method's schedules follow (target momentum, teacher temperature,
        ramp-ups) and, for ``mixed_float16``, dynamic loss scaling. Call before the first step; a
        change later retraces Keras's step (the schedules are constants of the traced step)."""
        if (self.steps_per_epoch, self.total_steps) != (steps_per_epoch, total_steps):
            self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
            self.train_function = None
        if loss_scaling is not None:
            self.loss_scaling = loss_scaling

    def current_step(self):
        """The optimizer's step count (0 before it is built) as int64."""
        optimizer = getattr(self, "optimizer", None)
        if optimizer is not None and optimizer.built:
            return tf.cast(optimizer.iterations, tf.int64)
        return tf.constant(0, tf.int64)

    def step_seed(self, salt: int = 0, per_replica: bool = True):
        """A [2] seed for in-model randomness that differs per step, replica (unless not
        ``per_replica``) and ``salt`` and is a pure function of them (with the method's ``seed``):
        reproducible, resumable."""
        step = self.current_step()
        replica = tf.cast(distribute.replica_id(), tf.int64) if per_replica else tf.constant(0, tf.int64)
        return tf.stack([tf.cast(getattr(self, "seed", 0), tf.int64), (step * 1024 + replica) * 16 + salt])

    def batch_uniform(self, batch, shape, salt: int, sampler=tf.random.stateless_uniform, **uniform):
        """``tf.random.stateless_uniform([batch, *shape], …)`` (or another stateless ``sampler``) for this
        replica's ``batch`` examples: drawn for the global batch with one seed per step and sliced per
        replica, so that 2 replicas draw what one device does (memory-bank negatives, AMDIM's locations,
        PIRL's tile orders, BigBiGAN's latents)."""
        size = tf.concat([[tf.cast(batch, tf.int32) * distribute.num_replicas()], tf.cast(shape, tf.int32)], 0)
        everyone = sampler(size, self.step_seed(salt, per_replica=False), **uniform)
        rid = distribute.replica_id()
        return everyone[rid * batch:(rid + 1) * batch]

    @property
    def method_variables(self):
        """The variables the method's loss trains: not the probe's, not the target networks'."""
        skip = {id(v) for v in self.probe.trainable_variables} if self.probe is not None else set()
        for target in self.targets:
            skip |= {id(v) for v in target.weights}
        return [v for v in self.trainable_variables if id(v) not in skip]

    def _split(self, variables):
        fixed = {id(v) for v in self.fixed_lr_variables}
        return [v for v in variables if id(v) not in fixed], [v for v in variables if id(v) in fixed]

    # -- the step ---------------------------------------------------------------------
    def train_step(self, batch: dict) -> dict:
        variables = self.method_variables
        step = tf.identity(self.optimizer.iterations)
        with tf.GradientTape() as tape:
            out = self.objective(batch, training=True)
            scaled = out.loss / distribute.num_replicas()
            if self.loss_scaling:
                scaled = scaled * self.loss_scale
        grads = tape.gradient(scaled, variables)
        logs = {"loss": out.loss, **out.logs}
        if self.loss_scaling:
            # float32 gradients of float32 variables: dividing by a power of two is exact. A step
            # with any non-finite gradient (on any replica) is skipped and halves the scale.
            grads = [None if g is None else g / self.loss_scale for g in grads]
            overflow = distribute.cross_replica_sum(1.0 - tf.cast(scaling.all_finite(grads), tf.float32))
            finite = tf.equal(overflow, 0.0)
            distribute.run_if(finite, lambda *g: self._apply(variables, list(g)), *grads)
            new_scale, new_good = scaling.next_loss_scale(self.loss_scale, self.loss_scale_good_steps, finite)
            self.loss_scale.assign(new_scale)
            self.loss_scale_good_steps.assign(new_good)
            logs["loss_scale"] = tf.identity(self.loss_scale)
        else:
            self._apply(variables, grads)
        self.after_update(out.aux, step)
        if out.embeddings is not None:
            logs["embedding_std"] = embedding_std(out.embeddings)
            logs["effective_rank"] = effective_rank(out.embeddings)
        if self.probe is not None:
            logs.update(self.probe_step(out.features, batch["label"]))
        return logs

    def _apply(self, variables, grads):
        """One optimizer update of ``variables`` (main and fixed-lr groups) with ``grads``."""
        by_id = dict(zip((id(v) for v in variables), grads))
        main, fixed = self._split(variables)
        self.optimizer.apply_gradients([(by_id[id(v)], v) for v in main])
        if fixed:
            self.fixed_optimizer.apply_gradients([(by_id[id(v)], v) for v in fixed])

    def probe_step(self, features, labels):
        features = tf.stop_gradient(features)
        mask = tf.cast(labels >= 0, tf.float32)
        count = tf.maximum(tf.reduce_sum(mask), 1.0)
        safe = tf.maximum(labels, 0)
        with tf.GradientTape() as tape:
            logits = self.probe(features)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(safe, logits)
            loss = tf.reduce_sum(per_example * mask) / count
            scaled = loss / distribute.num_replicas()
        grads = tape.gradient(scaled, self.probe.trainable_variables)
        self.probe_optimizer.apply_gradients(zip(grads, self.probe.trainable_variables))
        correct = tf.cast(tf.equal(tf.argmax(logits, -1), tf.cast(safe, tf.int64)), tf.float32)
        return {"probe_loss": loss, "probe_acc": tf.reduce_sum(correct * mask) / count}
