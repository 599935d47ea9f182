"""BigBiGAN (Donahue & Simonyan 2019, *Large Scale Adversarial Representation Learning*): a generator
G(z), an encoder E(x) and a joint discriminator D(x, z) trained adversarially, so that the pairs
(x, E(x)) and (G(z), z) become indistinguishable; E's backbone is the representation.

E = the configured backbone, then an MLP head giving the mean μ and the scale σ of a Gaussian over z,
sampled with the reparameterisation trick. G = BigGAN's residual generator at the image side. D =
image path F, latent path H, joint path J, with the three scores s_x, s_z, s_xz (``models/gan.py``).
Every step: ``gan_d_steps`` updates of D on the hinge loss of the three scores, then one update of E
and G on y·(s_x + s_z + s_xz) (``losses/adversarial.py``), each with its own Adam; then the EMA of G's
weights that samples are drawn from (BigGAN). Evaluation, kNN, fine-tuning and the SavedModel use E's
backbone (the paper's linear evaluation reads the ResNet's pooled features); pretraining also writes
``<model_dir>/export_generator`` (z in, images out) and, every epoch, PNG grids of samples G(z) and of
reconstructions G(E(x)) next to x in ``<model_dir>/samples`` and TensorBoard.
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from ssl_tf import distribute
from ssl_tf.losses import bigbigan_discriminator_loss, bigbigan_encoder_generator_loss, discriminator_accuracy
from ssl_tf.methods.base import (
    Objective,
    SSLMethod,
    clone_network,
    effective_rank,
    ema_pairs,
    ema_update,
    embedding_std,
)
from ssl_tf.methods.settings import MethodParams, check, param, register
from ssl_tf.models import gan
from ssl_tf.optim import ema_decay_at

SIZES = (16, 32, 64, 128, 256)   # the generator doubles 4×4 up to the image side


@register("bigbigan", family="pretext")
class BigBiGAN(SSLMethod):
    view_recipe = "flip"

    # BigGAN's CIFAR-10 optimisation: Adam at a constant 2e-4 for G (and here E), β = (0, 0.999).
    recipe = dict(optimizer="adam", learning_rate=2e-4, lr_scaling="none", lr_schedule="constant",
                  warmup_epochs=0.0, weight_decay=0.0)
    shapes_recipe = dict(image_size=32)   # the generator needs a side of 4·2^k (the shapes demo: 24)

    @dataclasses.dataclass
    class Params(MethodParams):
        # BigBiGAN's own text gives the losses, the stochastic E and z (below); its 32 px networks and
        # optimisation follow BigGAN's CIFAR-10 configuration (BigGAN-PyTorch, arch[32] and
        # scripts/launch_cifar_ema.sh), which BigBiGAN builds on.
        gan_latent_dim: int = param(120, "Dimension of the latent z ~ N(0, I).",
                                    source="BigBiGAN §3 and its TF Hub signatures: 120")
        gan_channels: int = param(256, "Channels of every residual block of G and of D's image path F.",
                                  source="BigGAN arch[32]: 4·ch, ch 64")
        gan_mlp_units: int = param(256, "Width of D's latent (H) and joint (J) MLPs.",
                                   source="F's width at 32 px (the paper's 2048 is for 256 px ImageNet)")
        gan_mlp_depth: int = param(6, "Layers of H and of J (skip connections around pairs).",
                                   source="BigBiGAN §2: MLPs with skip connections; 6 as the TF2 port "
                                          "LEGO999/BigBiGAN-TensorFlow2.0")
        gan_encoder_hidden: int = param(256, "Width of the hidden layers of E's head (with --gan_encoder_depth > 0).",
                                        source="the TF2 port LEGO999/BigBiGAN-TensorFlow2.0: 256")
        gan_encoder_depth: int = param(0, "Hidden layers of E's head before the linear layer giving μ and σ̂.",
                                       source="BigBiGAN §3.1: μ and σ̂ from a linear layer at E's output")
        gan_stochastic_encoder: bool = param(
            True, "E samples z = μ + σ·ε; --nogan_stochastic_encoder gives D z = μ, BiGAN's deterministic E.",
            source="BigBiGAN §3.1: the stochastic E; BiGAN (Donahue et al. 2017): z = E(x)")
        gan_d_learning_rate: float = param(2e-4, "Adam learning rate of D (E and G: --learning_rate).",
                                           source="BigGAN CIFAR-10: D_lr 2e-4")
        gan_beta1: float = param(0.0, "Adam β1 of E, G and D.", source="BigGAN: 0")
        gan_beta2: float = param(0.999, "Adam β2 of E, G and D.", source="BigGAN: 0.999")
        gan_d_steps: int = param(4, "Discriminator updates per encoder/generator update (each with a new z "
                                    "on the same data batch).", source="BigGAN CIFAR-10: 4 D steps")
        gan_ema_decay: float = param(0.9999, "Decay of the EMA of G's weights that samples are drawn from "
                                             "(with TensorFlow's warm-up min(d, (1+t)/(10+t))).",
                                     source="BigGAN: 0.9999")
        gan_grid: int = param(8, "Side of the PNG grids of samples and reconstructions written every epoch.",
                              source="display only: 64 samples, 32 reconstruction pairs")

        def validate(self, shared) -> None:
            super().validate(shared)
            check(shared.image_size in SIZES, "image_size", shared.image_size,
                  f"BigBiGAN's generator doubles 4×4 up to the image side; accepted: "
                  f"{', '.join(map(str, SIZES))}")
            check(shared.optimizer == "adam", "optimizer", shared.optimizer,
                  "BigBiGAN trains E, G and D with Adam; accepted: adam")
            check(shared.precision == "float32", "precision", shared.precision,
                  "BigBiGAN's spectral norms and hinge scores run in float32; accepted: float32")
            for name in ("gan_latent_dim", "gan_channels", "gan_mlp_units", "gan_mlp_depth", "gan_encoder_hidden",
                         "gan_d_steps", "gan_grid"):
                check(getattr(self, name) >= 1, name, getattr(self, name), "must be >= 1")
            check(self.gan_encoder_depth >= 0, "gan_encoder_depth", self.gan_encoder_depth, "must be >= 0")
            check(self.gan_d_learning_rate > 0, "gan_d_learning_rate", self.gan_d_learning_rate, "must be > 0")
            for name in ("gan_beta1", "gan_beta2", "gan_ema_decay"):
                check(0 <= getattr(self, name) < 1, name, getattr(self, name), "must be in [0, 1)")

    def __init__(self, encoder, num_classes=0, image_size=32, latent_dim=120, channels=256, mlp_units=256,
                 mlp_depth=6, encoder_hidden=256, encoder_depth=0, stochastic_encoder=True, d_learning_rate=2e-4,
                 betas=(0.0, 0.999), d_steps=4, ema_decay=0.9999, grid=8, synchronized_bn=False, seed=0, **kwargs):
        super().__init__(encoder, num_classes, **kwargs)
        self.latent_dim, self.d_steps, self.ema_decay, self.betas = latent_dim, d_steps, ema_decay, betas
        self.d_learning_rate, self.grid, self.seed = d_learning_rate, grid, seed
        self.stochastic_encoder = stochastic_encoder
        self.latent_head = gan.latent_head(encoder.output_shape[-1], latent_dim, encoder_hidden, encoder_depth,
                                           synchronized_bn=synchronized_bn)
        self.generator = gan.generator(latent_dim, image_size, channels, synchronized_bn=synchronized_bn)
        self.discriminator = gan.discriminator(image_size, latent_dim, channels, mlp_units, mlp_depth)
        self.generator_ema = clone_network(self.generator, name="generator_ema")
        self.d_optimizer = None

    @classmethod
    def from_params(cls, p: Params, shared, encoder, num_classes, num_examples=1):
        return cls(encoder, num_classes, image_size=shared.image_size, latent_dim=p.gan_latent_dim,
                   channels=p.gan_channels, mlp_units=p.gan_mlp_units, mlp_depth=p.gan_mlp_depth,
                   encoder_hidden=p.gan_encoder_hidden, encoder_depth=p.gan_encoder_depth,
                   stochastic_encoder=p.gan_stochastic_encoder,
                   d_learning_rate=p.gan_d_learning_rate, betas=(p.gan_beta1, p.gan_beta2), d_steps=p.gan_d_steps,
                   ema_decay=p.gan_ema_decay, grid=p.gan_grid, synchronized_bn=shared.global_bn, seed=shared.seed)

    # -- the networks' variables and optimizers -------------------------------------------------
    @property
    def target_pairs(self):
        return [(self.generator_ema, self.generator)]

    @property
    def discriminator_variables(self):
        return self.discriminator.trainable_variables

    @property
    def method_variables(self):
        """E's and G's variables: the main optimizer's (D has its own)."""
        return (self.encoder.trainable_variables + self.latent_head.trainable_variables
                + self.generator.trainable_variables)

    @property
    def own_optimizers(self) -> dict:
        return {"d_optimizer": self.d_optimizer} if self.d_optimizer is not None else {}

    def build_with(self, batch, optimizer, probe_optimizer=None, fixed_optimizer=None, compile=True):
        """As every method, plus BigGAN's Adam β's on E/G's optimizer and D's own Adam (a constant
        ``gan_d_learning_rate``, or the shape of E/G's schedule scaled to it)."""
        opt = optimizer if compile else getattr(self, "optimizer", optimizer)
        if isinstance(opt, keras.optimizers.Adam):
            opt.beta_1, opt.beta_2 = self.betas
        super().build_with(batch, optimizer, probe_optimizer, fixed_optimizer, compile)
        if self.d_optimizer is None:
            self.d_optimizer = keras.optimizers.Adam(self.d_learning_rate, beta_1=self.betas[0],
                                                     beta_2=self.betas[1], name="d_adam")
        self.d_optimizer.build(self.discriminator_variables)

    # -- the forward passes -----------------------------------------------------------------
    def gaussian(self, x, training):
        """(backbone features h, μ, σ̂) of the images ``x``: E's Gaussian over z is N(μ, softplus(σ̂)²)."""
        h = self.encoder(x, training=training)
        mean, raw = tf.split(self.latent_head(h, training=training), 2, axis=-1)
        return h, mean, raw

    def encode(self, x, training, salt):
        """(backbone features h, μ, a sample z = μ + softplus(σ̂)·ε of E's Gaussian) of the images ``x``;
        z = μ with the deterministic E (σ̂ then gets no gradient)."""
        h, mean, raw = self.gaussian(x, training)
        if not self.stochastic_encoder:
            return h, mean, mean
        eps = self.batch_uniform(tf.shape(x)[0], [self.latent_dim], salt, sampler=tf.random.stateless_normal)
        return h, mean, mean + tf.nn.softplus(raw) * eps

    def prior(self, batch, salt):
        """z ~ N(0, I) for this replica's ``batch`` examples, drawn for the global batch."""
        return self.batch_uniform(batch, [self.latent_dim], salt, sampler=tf.random.stateless_normal)

    def scores(self, x, encoded_z, samples, z, training):
        """D's (s_x, s_z, s_xz) of the data pairs (x, E(x)) and of the sample pairs (G(z), z), one pass
        over both (D has no batch statistics)."""
        b = tf.shape(x)[0]
        s = self.discriminator([tf.concat([x, samples], 0), tf.concat([encoded_z, z], 0)], training=training)
        return [t[:b] for t in s], [t[b:] for t in s]

    def objective(self, batch, training):
        """Both losses on one draw, no update (``build_with``, evaluation of a batch): the E/G loss is
        ``loss``."""
        x = batch["views"]
        h, mean, ez = self.encode(x, training, salt=1)
        z = self.prior(tf.shape(x)[0], salt=2)
        real, fake = self.scores(x, ez, self.generator(z, training=training), z, training)
        logs = {"d_loss": bigbigan_discriminator_loss(real, fake), **discriminator_accuracy(real, fake)}
        return Objective(bigbigan_encoder_generator_loss(real, fake), features=h, embeddings=mean, logs=logs)

    # -- the step: D, then E and G ------------------------------------------------------------
    def train_step(self, batch):
        x = batch["views"]
        b, n = tf.shape(x)[0], distribute.num_replicas()
        step = tf.identity(self.optimizer.iterations)
        d_vars = self.discriminator_variables
        for i in range(self.d_steps):
            z = self.prior(b, salt=4 * i + 2)
            _, _, ez = self.encode(x, True, salt=4 * i + 3)
            samples = self.generator(z, training=True)
            ez, samples = tf.stop_gradient(ez), tf.stop_gradient(samples)
            with tf.GradientTape() as tape:
                real, fake = self.scores(x, ez, samples, z, training=True)
                d_loss = bigbigan_discriminator_loss(real, fake)
                scaled = d_loss / n      # replica gradients are summed: the update is the global mean's
            grads = tape.gradient(scaled, d_vars)
            self.d_optimizer.apply_gradients(zip(grads, d_vars))
        eg_vars = self.method_variables
        with tf.GradientTape() as tape:
            h, mean, ez = self.encode(x, True, salt=1)
            z = self.prior(b, salt=0)
            real, fake = self.scores(x, ez, self.generator(z, training=True), z, training=True)
            loss = bigbigan_encoder_generator_loss(real, fake)
            scaled = loss / n
        grads = tape.gradient(scaled, eg_vars)
        self.optimizer.apply_gradients(zip(grads, eg_vars))
        ema_update(ema_pairs(self.generator_ema, self.generator, include_bn_stats=True),
                   ema_decay_at(self.ema_decay, step))
        logs = {"loss": loss, "d_loss": d_loss, **discriminator_accuracy(real, fake)}
        logs["embedding_std"], logs["effective_rank"] = embedding_std(mean), effective_rank(mean)
        if self.probe is not None:
            logs.update(self.probe_step(h, batch["label"]))
        return logs

    # -- things to look at --------------------------------------------------------------------
    def epoch_images(self, batch) -> dict:
        """{"samples": G_ema(z) on a fixed z, "reconstructions": x beside G_ema(μ(x))} as [n, H, W, 3]
        in [0, 1], for the PNG grids and TensorBoard."""
        count = self.grid * self.grid
        z = tf.random.stateless_normal([count, self.latent_dim], [self.seed, 7919])
        x = batch["views"][:max(count // 2, 1)]
        _, mean, _ = self.gaussian(x, False)
        pairs = tf.stack([x, self.generator_ema(mean, training=False)], 1)
        return {"samples": self.generator_ema(z, training=False),
                "reconstructions": tf.reshape(pairs, [-1, *x.shape[1:]])}

    def exports(self) -> dict:
        """Networks written beside the encoder's SavedModel: ``export_generator`` (z → images)."""
        return {"export_generator": self.generator_ema}

