"""Projection heads and evaluation heads."""
from __future__ import annotations

import keras
from keras import layers

from ssl_tf.models.layers import PRECISIONS, BatchNorm, compute_dtype, dtype_policy


def projection_head(hidden_dim: int, out_dim: int = 128, num_layers: int = 2, synchronized_bn: bool = False,
                    name: str = "projector") -> keras.Sequential:
    """SimCLR projection MLP: ``num_layers`` dense layers with BN, ReLU between them.

    v1 is 2 layers (hidden = feature dim, out 128); v2 uses 3. As in SimCLR's code every
    dense layer is followed by BN (the last one without a learned offset) and has no bias.
    """
    if num_layers < 1:
        raise ValueError("num_layers must be >= 1")
    stack = []
    for i in range(num_layers):
        last = i == num_layers - 1
        stack += [layers.Dense(out_dim if last else hidden_dim, use_bias=False, name=f"dense{i}"),
                  BatchNorm(sync=synchronized_bn, momentum=0.9, epsilon=1e-5, center=not last, name=f"bn{i}")]
        if not last:
            stack.append(layers.ReLU(name=f"relu{i}"))
    return keras.Sequential(stack, name=name)


def pretext_head(num_classes: int, hidden_dim: int = 4096, dropout: float = 0.5, name: str = "pretext_head"):
    """The patch tasks' classifier (revisiting code, after AlexNet's fc7-fc8): Dense(hidden) → BN → ReLU
    → dropout → Dense(classes). ``hidden_dim=0``: a single linear layer."""
    if hidden_dim <= 0:
        return keras.Sequential([layers.Dense(num_classes)], name=name)
    return keras.Sequential([layers.Dense(hidden_dim, use_bias=False), BatchNorm(momentum=0.997, epsilon=1e-5),
                             layers.ReLU(), layers.Dropout(dropout), layers.Dense(num_classes)], name=name)


def linear_head(num_classes: int, zero_init: bool = False, name: str = "linear_head") -> layers.Dense:
    return layers.Dense(num_classes, kernel_initializer="zeros" if zero_init else "glorot_uniform", name=name)


def mlp_head(num_classes: int, hidden_dim: int = 512, name: str = "mlp_head") -> keras.Sequential:
    """A one-hidden-layer MLP probe: Dense → BN → ReLU → Dense."""
    return keras.Sequential([layers.Dense(hidden_dim, use_bias=False), layers.BatchNormalization(),
                             layers.ReLU(), layers.Dense(num_classes)], name=name)


def eval_head(kind: str, num_classes: int) -> keras.layers.Layer:
    return mlp_head(num_classes) if kind == "mlp" else linear_head(num_classes)


def mlp(dims, batch_norm: bool = True, last_bn: bool = False, activation: str = "relu",
        synchronized_bn: bool = False, name: str = "mlp", input_dim: int | None = None,
        kernel_initializer="glorot_uniform") -> keras.Sequential:
    """Dense layers of widths ``dims``; BN (when ``batch_norm``) and ``activation`` after every one
    but the last; ``last_bn`` adds a BN without learned scale/offset to the last (SimSiam's and
    MoCo v3's projector). The paper sizes are the callers' defaults, e.g. BYOL (4096, 256)."""
    stack = []
    for i, width in enumerate(dims):
        last = i == len(dims) - 1
        norm = batch_norm and (not last or last_bn)
        stack.append(layers.Dense(width, use_bias=not norm, kernel_initializer=kernel_initializer, name=f"dense{i}"))
        if norm:
            stack.append(BatchNorm(sync=synchronized_bn, momentum=0.9, epsilon=1e-5, center=not last,
                                   scale=not last, name=f"bn{i}"))
        if not last:
            stack.append(layers.Activation(activation, name=f"act{i}"))
    net = keras.Sequential(stack, name=name)
    if input_dim:
        net.build((None, input_dim))
    return net


@keras.saving.register_keras_serializable("ssl_tf")
class WeightNormDense(layers.Layer):
    """Dense without bias whose kernel columns are v / ||v|| (weight normalisation, Salimans &
    Kingma 2016) with the gain fixed to 1 — DINO's last layer with ``norm_last_layer=True``.

    ``matmul_dtype="bfloat16"`` (or float16) runs the product (and its gradient) in that type after
    normalising v in float32, and returns that type (``--precision=mixed_bfloat16``: DINO's
    65536-wide layer is the largest product of its step). The student's DINO loss does not call
    it: it multiplies by ``normalized_kernel()`` itself, fused with the loss."""

    def __init__(self, units: int, matmul_dtype: str = "float32", **kwargs):
        super().__init__(**kwargs)
        accepted = [compute_dtype(p) for p in PRECISIONS]
        if matmul_dtype not in accepted:
            raise ValueError(f"matmul_dtype={matmul_dtype!r}: accepted {', '.join(accepted)}")
        self.units, self.matmul_dtype = units, matmul_dtype

    def build(self, input_shape):
        # U(±1/√fan_in), torch.nn.Linear's default, which main_dino.py leaves on its last layer: only the
        # direction of a column is used, but its norm sets how fast the gradient turns it
        init = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")
        self.v = self.add_weight(shape=(input_shape[-1], self.units), initializer=init, name="v")

    def normalized_kernel(self):
        """v / ||v|| per output column, float32 (DINO's fused loss multiplies by it itself)."""
        import tensorflow as tf
        return tf.math.l2_normalize(self.v, axis=0)

    def call(self, x):
        import tensorflow as tf
        kernel = self.normalized_kernel()
        if self.matmul_dtype == "float32":
            return tf.matmul(x, kernel)
        return tf.matmul(tf.cast(x, self.matmul_dtype), tf.cast(kernel, self.matmul_dtype))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "matmul_dtype": self.matmul_dtype}


@keras.saving.register_keras_serializable("ssl_tf")
class CosineClassifier(layers.Layer):
    """BoWNet's prediction head Ω (Gidaris et al. 2020, §2.3): a "linear-plus-softmax layer" with
    "L2-normalized weight vectors w̄_k" and "a learnable magnitude parameter γ", no bias — here with the
    feature normalised too, scores γ · cos(w_k, x): the cosine classifier with a learnable scale of
    Gidaris & Komodakis 2018 (scale initialised to 10). The visual words are unbalanced; with free weight
    norms the network would make each weight's magnitude follow its word's frequency (BoWNet's reason)."""

    def __init__(self, units: int, scale: float = 10.0, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale_init = units, scale

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), initializer="he_normal", name="kernel")
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(self.scale_init),
                                     name="scale")

    def call(self, x):
        import tensorflow as tf
        unit = tf.math.l2_normalize(tf.cast(x, tf.float32), -1)
        return self.scale * tf.matmul(unit, tf.math.l2_normalize(self.kernel, 0))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale_init}


@keras.saving.register_keras_serializable("ssl_tf")
class L2Normalize(layers.Layer):
    def call(self, x):
        import tensorflow as tf
        return tf.math.l2_normalize(x, -1)


def dino_head(out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256, name: str = "dino_head",
              precision: str = "float32", batch_norm: bool = False):
    """DINO's head (Caron et al. 2021): 3-layer MLP (2048, 2048, 256) with GELU, L2
    normalisation, then a weight-normalised linear layer to ``out_dim`` (65536). ``batch_norm``
    puts a BN after each hidden layer (main_dino.py ``--use_bn_in_head``).

    ``precision='mixed_bfloat16'`` (``'mixed_float16'``): the MLP and the last product compute in
    bfloat16 (float16) with float32 variables, and so is the output; the L2 and the kernel's
    normalisations are float32."""
    with dtype_policy(precision):   # main_dino.py DINOHead._init_weights: trunc_normal(std=0.02), bias 0
        net = mlp((hidden_dim, hidden_dim, bottleneck_dim), batch_norm=batch_norm, activation="gelu",
                  kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))
    matmul_dtype = compute_dtype(precision)
    return keras.Sequential([net, L2Normalize(dtype="float32"),
                             WeightNormDense(out_dim, matmul_dtype, dtype="float32", name="last_layer")], name=name)


def head_prefix(head: keras.Sequential, num_layers: int, name: str = "proj_prefix") -> keras.Sequential:
    """The first ``num_layers`` layers of a projection MLP, sharing its weights (SimCLRv2's
    ``ft_proj_selector``): a layer is a Dense with the BN and activation that follow it."""
    groups = []
    for layer in head.layers:
        if isinstance(layer, layers.Dense) or not groups:
            groups.append([])
        groups[-1].append(layer)
    if not 0 <= num_layers <= len(groups):
        raise ValueError(f"the projection head has {len(groups)} layers, not {num_layers}")
    return keras.Sequential([layer for group in groups[:num_layers] for layer in group], name=name)


def classifier_head(num_classes: int, input_dim: int, zero_init: bool = False, name: str = "classifier"):
    """A linear classifier as a built Sequential (so ``clone_network`` can copy it for an EMA)."""
    return keras.Sequential([keras.Input((input_dim,)), linear_head(num_classes, zero_init, name=f"{name}_dense")],
                            name=name)


def cpc_context(dim: int, hidden: int = 256, blocks: int = 5, name: str = "context") -> keras.Model:
    """CPC's context network over the [B, G, G, dim] grid of patch vectors (Hénaff et al. 2020,
    appendix A.2): "a PixelCNN-style" stack of ``blocks`` residual blocks, each

        1×1 conv (hidden) → ReLU → 1×3 conv (hidden) → pad one row on top → 2×1 conv (hidden,
        valid) → ReLU → 1×1 conv (dim), added to the block's input;

    then a ReLU. The 2×1 convolution over a grid padded on top sees a row and the one above it,
    nothing below: output row i depends on input rows ≤ i only, so it can predict the rows under it."""
    grid = keras.Input((None, None, dim))
    x = grid
    for i in range(blocks):
        y = layers.Conv2D(hidden, 1, activation="relu", name=f"b{i}_in")(x)
        y = layers.Conv2D(hidden, (1, 3), padding="same", name=f"b{i}_row")(y)
        y = layers.ZeroPadding2D(((1, 0), (0, 0)), name=f"b{i}_pad_top")(y)
        y = layers.Conv2D(hidden, (2, 1), padding="valid", activation="relu", name=f"b{i}_up")(y)
        x = layers.Add(name=f"b{i}_add")([x, layers.Conv2D(dim, 1, name=f"b{i}_out")(y)])
    return keras.Model(grid, layers.ReLU(name="relu")(x), name=name)


def word_generator(word_dim: int, out_dim: int, hidden_dim: int | None = None, name: str = "word_generator"):
    """OBoW's dynamic prediction head (Gidaris et al. 2021, §3.2): "the weights of the BoW prediction
    head are generated from the current vocabulary by a small network", so the head follows the
    changing words. Each word → L2 normalisation → Dense(hidden, no bias) → BN → ReLU → Dense(out_dim)
    → L2 normalisation: one unit-norm weight vector per word (valeoai/obow ``BoWPredictor``, hidden
    2 × out_dim). The BN's batch is the vocabulary, the same on every replica: no sync needed."""
    hidden_dim = hidden_dim or 2 * out_dim
    x = keras.Input((word_dim,))
    y = layers.Dense(hidden_dim, use_bias=False, name="dense0")(L2Normalize(name="normalize_words")(x))
    y = layers.ReLU(name="relu0")(BatchNorm(name="bn0")(y))
    y = L2Normalize(name="normalize_weights")(layers.Dense(out_dim, name="dense1")(y))
    return keras.Model(x, y, name=name)


def mi_embedding(input_dim: int, units: int = 2048, synchronized_bn: bool = False,
                 name: str = "mi_embedding") -> keras.Model:
    """Deep InfoMax's encode-and-dot-product embedding (Hjelm et al. 2019, appendix A.2; rdevon/DIM
    ``MI1x1ConvNet``): Dense(units) → BN → ReLU → Dense(units), plus a linear shortcut Dense(units),
    then layer norm. On the last axis it is a 1×1 convolution of a local map or an MLP of a vector;
    DIM scores a pair by the dot product of the two embeddings."""
    x = keras.Input((input_dim,))
    y = layers.Dense(units, use_bias=False, name="dense0")(x)
    y = layers.ReLU(name="relu0")(BatchNorm(sync=synchronized_bn, momentum=0.9, epsilon=1e-5, name="bn0")(y))
    y = layers.Dense(units, name="dense1")(y)
    y = layers.Add(name="add")([y, layers.Dense(units, use_bias=False, name="shortcut")(x)])
    return keras.Model(x, layers.LayerNormalization(name="ln")(y), name=name)


def prior_discriminator(name: str = "prior_discriminator") -> keras.Sequential:
    """Deep InfoMax's prior discriminator (rdevon/DIM ``models/discriminator.py``): 1000 → 200 → 1, ReLU."""
    return keras.Sequential([layers.Dense(1000, activation="relu", name="dense0"),
                             layers.Dense(200, activation="relu", name="dense1"), layers.Dense(1, name="logit")],
                            name=name)
