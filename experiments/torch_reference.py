"""Shared parts of the PyTorch reference re-implementations in experiments/ (npid_pytorch_check.py,
dino_pytorch_check.py): ssl_tf's npz data, a torch-only augmentation, the ResNet-18 with the CIFAR stem
and a width factor, and ssl_tf's effective rank. They check ssl_tf against the methods' own algorithms
at the scale of its CIFAR-10 benchmark (benchmarks/cifar10_methods.md), outside TensorFlow.

Needs PyTorch, which ssl_tf does not: `pip install torch numpy` in a separate environment. Imported by
its sibling scripts as `torch_reference` (Python puts a script's own folder first on the path).
"""
import argparse
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)   # CIFAR-10's per-channel mean and std
STD = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)


def load_images(path, n):
    """The first ``n`` images of an npz in ssl_tf's layout (``data["images"]``, uint8 NHWC) as a uint8
    tensor [n, 3, H, W]."""
    data = np.load(path)
    return torch.from_numpy(data["images"][:n]).permute(0, 3, 1, 2)


def normalize(x):
    """Float images in [0, 1], [b, 3, H, W], standardised with CIFAR-10's channel mean and std."""
    return (x - MEAN) / STD


def gray(t):
    return (0.299 * t[:, :1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:]).expand_as(t)


def augment(x, min_scale=0.2, jitter=0.4, size=32):
    """One random view of each uint8 image of ``x`` [b, 3, H, W], normalised, [b, 3, size, size]:
    a random resized crop (area ``min_scale``-1, aspect ratio 3/4-4/3, bilinear) with a horizontal
    flip, colour jitter (brightness, contrast and saturation factors in 1 ± ``jitter``, in that order;
    p 0.8), greyscale p 0.2. torchvision's pipeline without the hue jitter; the defaults are NPID's
    (crop from 20 % of the area, ColorJitter 0.4)."""
    b = x.shape[0]
    x = x.float() / 255.0
    area = torch.empty(b).uniform_(min_scale, 1.0)
    logr = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3))
    r = torch.exp(logr)
    sw = torch.sqrt(area * r).clamp(max=1.0)
    sh = torch.sqrt(area / r).clamp(max=1.0)
    tx = (torch.rand(b) * 2 - 1) * (1 - sw)
    ty = (torch.rand(b) * 2 - 1) * (1 - sh)
    flip = torch.where(torch.rand(b) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sw * flip
    theta[:, 0, 2] = tx
    theta[:, 1, 1] = sh
    theta[:, 1, 2] = ty
    grid = F.affine_grid(theta, (b, 3, size, size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jit = (torch.rand(b) < 0.8).float().view(b, 1, 1, 1)
    bri = torch.empty(b, 1, 1, 1).uniform_(1 - jitter, 1 + jitter)
    con = torch.empty(b, 1, 1, 1).uniform_(1 - jitter, 1 + jitter)
    sat = torch.empty(b, 1, 1, 1).uniform_(1 - jitter, 1 + jitter)
    y = (x * bri).clamp(0, 1)
    m = gray(y).mean((1, 2, 3), keepdim=True)
    y = ((y - m) * con + m).clamp(0, 1)
    g = gray(y)
    y = ((y - g) * sat + g).clamp(0, 1)
    x = jit * y + (1 - jit) * x
    g = (torch.rand(b) < 0.2).float().view(b, 1, 1, 1)
    x = g * gray(x) + (1 - g) * x
    return normalize(x)


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.short(x))


class ResNet18(nn.Module):
    """ResNet-18 with the CIFAR stem (one 3×3 convolution, stride 1, no max pool) and ``width`` × its
    channels (64, 128, 256, 512): global-average-pooled features [b, ``self.dim``]
    (``self.dim`` = 128 at width 0.25)."""

    def __init__(self, width):
        super().__init__()
        w = [int(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        layers, cin = [], w[0]
        for i, c in enumerate(w):
            for j in range(2):
                layers.append(Block(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        self.blocks = nn.Sequential(*layers)
        self.dim = cin

    def forward(self, x):
        return self.blocks(self.stem(x)).mean((2, 3))


def effective_rank(z):
    """ssl_tf's effective rank (ssl_tf/methods/base.py): exp of the entropy of the normalised singular
    values of the L2-normalised batch ``z``; 1 = collapsed to one direction, at most min(b, d)."""
    s = torch.linalg.svdvals(F.normalize(z, dim=1))
    q = s / s.sum() + 1e-12
    return float(torch.exp(-(q * q.log()).sum()))


def index_batches(n, batch, seed):
    """Endless batches of image indices: a seeded permutation, drawn anew when the next batch would
    run past its end (the last partial batch of each pass is dropped)."""
    g = torch.Generator().manual_seed(seed)
    perm, pos = torch.randperm(n, generator=g), 0
    while True:
        if pos + batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        yield perm[pos:pos + batch]
        pos += batch


def parser(description):
    """The flags both checks share: data, steps, batch, threads and backbone size."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--npz", required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--n", type=int, default=45000, help="The first N images of the npz.")
    p.add_argument("--width", type=float, default=0.25)
    return p
