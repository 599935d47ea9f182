"""View recipes: what a method sees of one image.

A recipe is a pure function ``(uint8 image [H, W, 3], seed [2]) -> views`` built from
``ops``. Methods name the recipe they need; ``views_for`` builds it from the config.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf

from ssl_tf.data import ops, patches, randaugment


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    image_size: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)   # SimCLR: area 8%..100%
    color_jitter: float = 1.0                       # strength s (SimCLR ImageNet: 1.0; CIFAR: 0.5)
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    blur_p: float = 0.0                             # SimCLR: 0.5 on ImageNet, off at <= 32 px
    solarize_p: float = 0.0
    # pretext tasks (Revisiting self-supervised learning)
    patch_size: int = 16                            # side of a grid patch (revisiting: 64 at 224 px)
    patch_jitter: float = 21 / 85                   # random gap, fraction of a cell (revisiting)
    patch_grayscale_p: float = 0.66                 # else green-magenta projection (chromatic guard)
    jigsaw_crop_scale: tuple[float, float] = (0.6, 1.0)   # PIRL's crop before its grid (VISSL crop_scale_patches)
    num_copies: int = 8                             # exemplar copies per image (revisiting: 8)
    exemplar_rotation: float = 20.0                 # degrees, ± (Dosovitskiy et al.: up to 20)
    # CPC v2 (Hénaff et al. 2020): the overlapping patch grid and its per-patch augmentation
    cpc_patch_size: int = 8                         # CPC: 64 at 256 px; 8 at 32 px keeps the 7×7 grid
    cpc_patch_stride: int = 4                       # half a patch: CPC's 50% overlap
    cpc_color_drop: float = 1.0                     # CPC v2 §4.3: colour dropping in each patch
    cpc_grayscale_p: float = 0.25
    # multi-crop (DINO, Caron et al. 2021): 2 global crops + ``num_local_crops`` small ones
    num_local_crops: int = 6
    local_size: int = 16                            # DINO: 96 at 224 px
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    global_crop_max: float = 1.0                    # OBoW: global crops cover at most 60% of the area
    # semi-supervised (FixMatch, MixMatch)
    translate: float = 0.125                        # weak view: shift by up to 12.5% (FixMatch)
    randaugment_ops: int = 2                        # strong view: RandAugment ops per image (FixMatch: 2)
    num_guesses: int = 2                            # MixMatch: K weak views per unlabelled image


def simclr_view(image, seed, cfg: AugmentConfig):
    """One SimCLR view: crop+resize, flip, colour jitter (p=0.8), grayscale (p=0.2), blur, solarize."""
    s = ops.split_seed(seed, 6)
    x = ops.to_float(image)
    x = ops.random_resized_crop(x, s[0], cfg.image_size, scale=cfg.crop_scale)
    x = ops.random_flip(x, s[1])
    x = ops.random_color_jitter(x, s[2], cfg.color_jitter, cfg.color_jitter_p)
    x = ops.random_grayscale(x, s[3], cfg.grayscale_p)
    x = ops.random_blur(x, s[4], cfg.blur_p)
    x = ops.random_solarize(x, s[5], cfg.solarize_p)
    return tf.ensure_shape(x, [cfg.image_size, cfg.image_size, 3])


def two_views(image, seed, cfg: AugmentConfig):
    """The SimCLR pair: two independent draws of ``simclr_view``."""
    s = ops.split_seed(seed, 2)
    return simclr_view(image, s[0], cfg), simclr_view(image, s[1], cfg)


def asymmetric_two_views(image, seed, cfg: AugmentConfig):
    """BYOL's pair (Grill et al. 2020, table 6): view 1 always blurred, view 2 blurred with p=0.1
    and solarized with p=0.2 (blur only when the config enables it, i.e. above 32 px)."""
    s = ops.split_seed(seed, 2)
    blur = cfg.blur_p > 0
    first = dataclasses.replace(cfg, blur_p=1.0 if blur else 0.0, solarize_p=0.0)
    second = dataclasses.replace(cfg, blur_p=0.1 if blur else 0.0, solarize_p=0.2)
    return simclr_view(image, s[0], first), simclr_view(image, s[1], second)


def multi_crop(image, seed, cfg: AugmentConfig):
    """DINO's multi-crop: two global views as BYOL's pair but with crops of ``global_crop_scale``,
    stacked [2, S, S, 3], and ``num_local_crops`` views of ``local_crop_scale`` at ``local_size``
    (blur p=0.5 when enabled), stacked [n, s, s, 3]."""
    s = ops.split_seed(seed, 1 + cfg.num_local_crops)
    scale = (cfg.global_crop_scale[0], min(cfg.global_crop_scale[1], cfg.global_crop_max))
    globals_ = tf.stack(asymmetric_two_views(image, s[0], dataclasses.replace(cfg, crop_scale=scale)))
    local = dataclasses.replace(cfg, image_size=cfg.local_size, crop_scale=cfg.local_crop_scale,
                                blur_p=0.5 if cfg.blur_p > 0 else 0.0, solarize_p=0.0)
    locals_ = [simclr_view(image, s[1 + i], local) for i in range(cfg.num_local_crops)]
    locals_ = tf.stack(locals_) if locals_ else tf.zeros([0, cfg.local_size, cfg.local_size, 3])
    return globals_, locals_


def local_crop_side(image_size: int) -> int:
    """The default side of multi-crop's local crops: 96 at 224 px (DINO §3.1) scaled to the image,
    half the image at <= 32 px."""
    return image_size // 2 if image_size <= 32 else round(image_size * 96 / 224)


def obow_views(image, seed, cfg: AugmentConfig):
    """OBoW's views (Gidaris et al. 2021, §4): the teacher's — the evaluation view (valeoai/obow: resize
    and centre crop), flipped at random, no colour change — and the student's multi-crop, ``multi_crop``
    with crops of ``global_crop_scale`` (OBoW: 8 % to 60 % of the area) and ``num_local_crops`` small
    ones: ([S, S, 3], [2, S, S, 3], [n, s, s, 3])."""
    s = ops.split_seed(seed, 2)
    return (ops.random_flip(eval_view(image, cfg.image_size), s[0]), *multi_crop(image, s[1], cfg))


def bownet_views(image, seed, cfg: AugmentConfig):
    """BoWNet's pair (Gidaris et al. 2020, §3.2): the teacher's view — the evaluation view, flipped at
    random, no colour change — whose bag of words is the target, and the student's perturbed view
    (``simclr_view``: random resized crop, flip, colour jitter, grayscale; CutMix is applied to the
    batch in the model): ([S, S, 3], [S, S, 3])."""
    s = ops.split_seed(seed, 2)
    return flip_view(image, s[0], cfg), simclr_view(image, s[1], cfg)


def flip_view(image, seed, cfg: AugmentConfig):
    """The evaluation view flipped at random (BoWNet's teacher; BigBiGAN's data at 32 px)."""
    return ops.random_flip(eval_view(image, cfg.image_size), seed)


def crop_flip_view(image, seed, cfg: AugmentConfig):
    """Light augmentation for fine-tuning and probes: random resized crop and flip only."""
    s = ops.split_seed(seed, 2)
    x = ops.random_resized_crop(ops.to_float(image), s[0], cfg.image_size, scale=cfg.crop_scale)
    return tf.ensure_shape(ops.random_flip(x, s[1]), [cfg.image_size, cfg.image_size, 3])


def at_size(x, size: int):
    """``x`` resized to size×size unless it is already (a streamed source's images differ)."""
    return x if x.shape[0] == size and x.shape[1] == size else ops.resize(x, size)


def weak_view(image, seed, cfg: AugmentConfig):
    """FixMatch's weak augmentation: flip, then translate by up to ``translate`` of the side
    (reflect padding and a random crop back to size)."""
    s = ops.split_seed(seed, 2)
    x = ops.random_flip(at_size(ops.to_float(image), cfg.image_size), s[0])
    pad = int(round(cfg.translate * cfg.image_size))
    if pad > 0:
        x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
        x = tf.image.stateless_random_crop(x, [cfg.image_size, cfg.image_size, 3], s[1])
    return tf.ensure_shape(x, [cfg.image_size, cfg.image_size, 3])


def weak_strong(image, seed, cfg: AugmentConfig):
    """FixMatch's pair: a weak view and a strong one (weak + RandAugment + Cutout), independent draws."""
    s = ops.split_seed(seed, 3)
    strong = randaugment.rand_augment(weak_view(image, s[1], cfg), s[2], cfg.randaugment_ops)
    return weak_view(image, s[0], cfg), tf.ensure_shape(strong, [cfg.image_size, cfg.image_size, 3])


def weak_views(image, seed, cfg: AugmentConfig):
    """MixMatch's K weak views of one unlabelled image: [K, S, S, 3]."""
    s = ops.split_seed(seed, cfg.num_guesses)
    return tf.stack([weak_view(image, s[i], cfg) for i in range(cfg.num_guesses)])


def eval_view(image, image_size: int):
    """Deterministic eval preprocessing: centre crop (87.5%) + resize above 32 px, plain resize at <= 32 px."""
    x = ops.to_float(image)
    if image_size > 32:
        x = ops.center_crop_resize(x, image_size)
    else:
        x = ops.resize(x, image_size)
    return tf.ensure_shape(x, [image_size, image_size, 3])


def rotations(image, seed, cfg: AugmentConfig):
    """RotNet's collate (Gidaris et al. 2018): one light view in all four rotations, [4, S, S, 3];
    copy r is rotated by r × 90° counter-clockwise and carries label r."""
    x = crop_flip_view(image, seed, cfg)
    return tf.stack([tf.image.rot90(x, k) for k in range(4)])


def patch_grid(image, seed, cfg: AugmentConfig):
    """The 3×3 grid of jittered patches, each with its own chromatic guard: [9, P, P, 3]. An image of
    another size (a streamed source) is first resized to S×S, the run's scale."""
    s = ops.split_seed(seed, 2 + 9)
    x = ops.random_flip(at_size(ops.to_float(image), cfg.image_size), s[0])
    tiles = patches.grid_patches(x, s[1], cfg.patch_size, cfg.patch_jitter)
    guarded = [ops.chromatic_guard(tiles[i], s[2 + i], cfg.patch_grayscale_p) for i in range(9)]
    return tf.ensure_shape(tf.stack(guarded), [9, cfg.patch_size, cfg.patch_size, 3])


def pirl_pair(image, seed, cfg: AugmentConfig):
    """PIRL's input (Misra & van der Maaten 2020 §4.1; VISSL's ImgPilToPatchesAndImage): one view of
    the image as ``simclr_view``, and the 3×3 jigsaw grid of an independent crop of
    ``jigsaw_crop_scale`` of its area, each of the 9 patches with its own flip, colour jitter and
    greyscale: ([S, S, 3], [9, P, P, 3])."""
    s = ops.split_seed(seed, 6)
    x = ops.random_resized_crop(ops.to_float(image), s[1], cfg.image_size, scale=cfg.jigsaw_crop_scale)
    tiles = patches.grid_patches(x, s[2], cfg.patch_size, cfg.patch_jitter)
    tiles = ops.patchwise_flip(tiles, s[3])
    tiles = ops.patchwise_jitter(tiles, s[4], cfg.color_jitter, cfg.color_jitter_p)
    tiles = ops.patchwise_grayscale(tiles, s[5], cfg.grayscale_p)
    return simclr_view(image, s[0], cfg), tf.ensure_shape(tiles, [9, cfg.patch_size, cfg.patch_size, 3])


def cpc_patches(image, seed, cfg: AugmentConfig):
    """CPC v2's input: a random crop and flip of the image, cut into the G×G grid of overlapping
    patches, then each patch augmented on its own — flip, colour jitter (p 0.8), greyscale and
    colour dropping: [G·G, P, P, 3], row-major."""
    s = ops.split_seed(seed, 6)
    x = ops.random_resized_crop(ops.to_float(image), s[0], cfg.image_size, scale=cfg.crop_scale)
    x = ops.random_flip(x, s[1])
    p = cfg.cpc_patch_size
    tiles = tf.reshape(patches.overlapping_grid(x, p, cfg.cpc_patch_stride), [-1, p, p, 3])
    tiles = ops.patchwise_flip(tiles, s[2])
    tiles = ops.patchwise_jitter(tiles, s[3], cfg.color_jitter, cfg.color_jitter_p)
    tiles = ops.patchwise_grayscale(tiles, s[4], cfg.cpc_grayscale_p)
    tiles = ops.patchwise_color_drop(tiles, s[5], cfg.cpc_color_drop)
    g = patches.overlapping_side(cfg.image_size, p, cfg.cpc_patch_stride)
    return tf.ensure_shape(tiles, [g * g, p, p, 3])


def exemplar_view(image, seed, cfg: AugmentConfig):
    """One heavily augmented exemplar copy (Dosovitskiy et al. 2014): translation and scaling
    (random resized crop), flip, rotation, contrast/brightness/saturation/hue, grayscale."""
    s = ops.split_seed(seed, 5)
    x = ops.random_resized_crop(ops.to_float(image), s[0], cfg.image_size, scale=cfg.crop_scale)
    x = ops.random_flip(x, s[1])
    x = ops.random_rotate(x, s[2], cfg.exemplar_rotation * 3.141592653589793 / 180.0)
    x = ops.random_color_jitter(x, s[3], cfg.color_jitter, cfg.color_jitter_p)
    x = ops.random_grayscale(x, s[4], cfg.grayscale_p)
    return tf.ensure_shape(x, [cfg.image_size, cfg.image_size, 3])


def exemplar_copies(image, seed, cfg: AugmentConfig):
    """``num_copies`` independent exemplar views of one image: [K, S, S, 3]."""
    s = ops.split_seed(seed, cfg.num_copies)
    return tf.stack([exemplar_view(image, s[i], cfg) for i in range(cfg.num_copies)])


RECIPES = {
    "one_view": simclr_view,
    "two_views": two_views,
    "asymmetric_two_views": asymmetric_two_views,
    "multi_crop": multi_crop,
    "obow": obow_views,
    "bownet": bownet_views,
    "crop_flip": crop_flip_view,
    "flip": flip_view,
    "rotations": rotations,
    "patch_grid": patch_grid,
    "cpc_patches": cpc_patches,
    "pirl_pair": pirl_pair,
    "exemplar": exemplar_copies,
    "weak": weak_view,
    "weak_strong": weak_strong,
    "weak_views": weak_views,
}


def views_for(recipe: str, cfg: AugmentConfig):
    """``(image, seed) -> views`` for a named recipe."""
    fn = RECIPES[recipe]
    return lambda image, seed: fn(image, seed, cfg)
