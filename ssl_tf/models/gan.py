"""BigBiGAN's networks (Donahue & Simonyan 2019) at CIFAR scale: a BigGAN-style residual generator, the
joint discriminator (image path F, latent path H, joint path J, three scores) and the encoder's latent
head, all built from spectrally normalised layers (Miyato et al. 2018).

Images are in [0, 1] everywhere, as every ssl_tf network sees them: the generator ends in
(tanh + 1)/2, and the discriminator maps its input to [-1, 1] itself.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from ssl_tf.models.layers import BatchNorm


def spectral_normalize(w, u):
    """One power iteration (Miyato et al. 2018, algorithm 1) on the matrix ``w`` [n_in, n_out] from the
    running estimate ``u`` [1, n_out] of its first right-singular vector:

        v = ũ wᵀ / ||ũ wᵀ||,   ũ' = v w / ||v w||,   σ = v w ũ'ᵀ,

    returns (w / σ, ũ', σ). ũ' and v carry no gradient (the paper's choice): σ's gradient flows through w
    only. Repeated, σ converges to w's largest singular value."""
    v = tf.stop_gradient(tf.math.l2_normalize(tf.matmul(u, w, transpose_b=True), -1))
    wv = tf.matmul(v, w)
    u_new = tf.stop_gradient(tf.math.l2_normalize(wv, -1))
    sigma = tf.reduce_sum(wv * u_new)
    return w / sigma, u_new, sigma


class _SpectralNorm:
    """The kernel of a Dense or Conv2D divided by its spectral norm, ``u`` updated on training calls.
    One ``u`` for every replica: replicas hold the same kernel and ``u``, so they compute the same update."""

    def _add_u(self):
        self.sn_u = self.add_weight(shape=(1, self.kernel.shape[-1]), initializer=keras.initializers.RandomNormal(),
                                    trainable=False, name="sn_u", aggregation="only_first_replica")

    def normalized_kernel(self, training):
        kernel = self.kernel
        w, u, _ = spectral_normalize(tf.reshape(kernel, [-1, kernel.shape[-1]]), self.sn_u)
        if training:
            self.sn_u.assign(u)
        return tf.reshape(w, kernel.shape)


@keras.saving.register_keras_serializable("ssl_tf")
class SNDense(_SpectralNorm, keras.layers.Dense):
    """A Dense layer whose kernel is spectrally normalised (SN-GAN, used by every BigGAN network)."""

    def build(self, input_shape):
        super().build(input_shape)
        self._add_u()

    def call(self, inputs, training=None):
        y = tf.matmul(inputs, self.normalized_kernel(training))
        if self.use_bias:
            y = y + self.bias
        return self.activation(y) if self.activation is not None else y


@keras.saving.register_keras_serializable("ssl_tf")
class SNConv2D(_SpectralNorm, keras.layers.Conv2D):
    """A 'same'-padded Conv2D whose kernel is spectrally normalised."""

    def __init__(self, filters, kernel_size, **kwargs):
        kwargs.setdefault("padding", "same")
        super().__init__(filters, kernel_size, **kwargs)

    def build(self, input_shape):
        super().build(input_shape)
        self._add_u()

    def call(self, inputs, training=None):
        y = tf.nn.conv2d(inputs, self.normalized_kernel(training), self.strides, self.padding.upper())
        return y + self.bias if self.use_bias else y


def _upsample(x):
    return keras.layers.UpSampling2D(2)(x)


def _downsample(x):
    return keras.layers.AveragePooling2D(2)(x)


def generator(latent_dim: int, image_size: int, channels: int, synchronized_bn: bool = False,
              name: str = "generator") -> keras.Model:
    """BigGAN's generator at ``image_size`` (Brock et al. 2019, table 4 (a) at 32 px, without classes):
    z → SN-linear to 4×4×ch → log2(size/4) residual up-blocks (BN, ReLU, ×2 nearest upsampling, 3×3
    conv, BN, ReLU, 3×3 conv; shortcut: upsampling and 1×1 conv) → BN, ReLU, 3×3 conv to RGB, tanh."""
    blocks = int(round(math.log2(image_size / 4)))
    z = keras.Input((latent_dim,), name="z")
    h = keras.layers.Reshape((4, 4, channels))(SNDense(4 * 4 * channels, name="linear")(z))
    for i in range(blocks):
        def norm(tag):
            return BatchNorm(sync=synchronized_bn, momentum=0.99, epsilon=1e-5, name=f"up{i}_{tag}")
        y = SNConv2D(channels, 3, name=f"up{i}_conv1")(_upsample(keras.layers.ReLU()(norm("bn1")(h))))
        y = SNConv2D(channels, 3, name=f"up{i}_conv2")(keras.layers.ReLU()(norm("bn2")(y)))
        h = keras.layers.Add()([y, SNConv2D(channels, 1, name=f"up{i}_shortcut")(_upsample(h))])
    h = keras.layers.ReLU()(BatchNorm(sync=synchronized_bn, momentum=0.99, epsilon=1e-5, name="out_bn")(h))
    rgb = SNConv2D(3, 3, activation="tanh", name="to_rgb")(h)
    images = keras.layers.Rescaling(0.5, offset=0.5, name="images")(rgb)      # [-1, 1] → [0, 1]
    return keras.Model(z, images, name=name)


def _d_block(h, channels, down, first, name):
    """BigGAN's residual down-block (table 4 (b)): [ReLU,] 3×3 conv, ReLU, 3×3 conv [, 2×2 average pool];
    shortcut: 1×1 conv where the channels or the size change. The first block has no leading ReLU (the
    input is an image) and pools before its shortcut's conv (SN-GAN's optimised block)."""
    y = h if first else keras.layers.ReLU()(h)
    y = SNConv2D(channels, 3, name=f"{name}_conv1")(y)
    y = SNConv2D(channels, 3, name=f"{name}_conv2")(keras.layers.ReLU()(y))
    skip = h
    if down:
        y = _downsample(y)
        skip = _downsample(skip) if first else skip
    if down or h.shape[-1] != channels:
        skip = SNConv2D(channels, 1, name=f"{name}_shortcut")(skip)
        skip = _downsample(skip) if down and not first else skip
    return keras.layers.Add()([y, skip])


def _residual_mlp(h, units, depth, name):
    """``depth`` SN-linear layers of ``units`` with ReLU, a skip connection around every pair after
    the first (BigBiGAN §2: H and J are MLPs with skip connections)."""
    h = keras.layers.ReLU()(SNDense(units, name=f"{name}_0")(h))
    for i in range(1, depth, 2):
        y = keras.layers.ReLU()(SNDense(units, name=f"{name}_{i}")(h))
        if i + 1 < depth:
            y = SNDense(units, name=f"{name}_{i + 1}")(y)
        h = keras.layers.ReLU()(keras.layers.Add()([h, y])) if i + 1 < depth else y
    return h


def discriminator(image_size: int, latent_dim: int, channels: int, mlp_units: int, mlp_depth: int,
                  name: str = "discriminator") -> keras.Model:
    """BigBiGAN's joint discriminator (§2): F, BigGAN's discriminator at ``image_size`` (down-blocks to
    8×8, two more blocks, ReLU, sum over space); H, an MLP on z; J, an MLP on [F(x), H(z)]. Each path's
    output is scored by a linear layer: (x, z) → (s_x, s_z, s_xz), each [b]."""
    x = keras.Input((image_size, image_size, 3), name="images")
    z = keras.Input((latent_dim,), name="z")
    h = keras.layers.Rescaling(2.0, offset=-1.0)(x)                 # [0, 1] → [-1, 1], as G's tanh
    downs = max(int(round(math.log2(image_size / 8))), 1)
    for i in range(downs):
        h = _d_block(h, channels, down=True, first=i == 0, name=f"down{i}")
    for i in range(2):
        h = _d_block(h, channels, down=False, first=False, name=f"block{i}")
    f = keras.layers.Lambda(lambda t: tf.reduce_sum(tf.nn.relu(t), [1, 2]), name="sum_pool")(h)
    hz = _residual_mlp(z, mlp_units, mlp_depth, "latent")
    j = _residual_mlp(keras.layers.Concatenate()([f, hz]), mlp_units, mlp_depth, "joint")
    scores = [keras.layers.Reshape(())(SNDense(1, name=f"score_{tag}")(t)) for tag, t in
              (("x", f), ("z", hz), ("xz", j))]
    return keras.Model([x, z], scores, name=name)


def latent_head(input_dim: int, latent_dim: int, hidden: int, depth: int, synchronized_bn: bool = False,
                name: str = "latent_head") -> keras.Model:
    """E's head on the backbone's pooled features (BigBiGAN §2 and appendix: an MLP after the ResNet)
    → the mean μ and the scale σ = softplus(·) of a Gaussian over z: [b, 2·latent_dim] as [μ, σ̂]."""
    h = inputs = keras.Input((input_dim,), name="features")
    for i in range(depth):
        h = keras.layers.Dense(hidden, use_bias=False, name=f"hidden{i}")(h)
        h = keras.layers.ReLU()(BatchNorm(sync=synchronized_bn, momentum=0.9, epsilon=1e-5, name=f"bn{i}")(h))
    return keras.Model(inputs, keras.layers.Dense(2 * latent_dim, name="mean_scale")(h), name=name)
