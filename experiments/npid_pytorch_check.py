"""NPID as the authors' PyTorch code runs it (zhirongw/lemniscate.pytorch: NCE with Z fixed on the first
batch, bank momentum 0.5, T 0.07, 4096 noise rows, SGD 0.03, wd 5e-4, no warm-up), written from the paper
and the algorithm, on the same data and backbone size as ssl_tf's benchmark (ResNet-18 x0.25, CIFAR stem),
to tell a bug in ssl_tf from the dynamics of the method at this scale. Prints the loss and the
embedding's effective rank (ssl_tf's definition) every 10 steps.

    pip install torch==2.13.0 numpy     # a separate environment: ssl_tf does not need PyTorch
    python experiments/npid_pytorch_check.py --npz ../shared/data/cifar10/train.npz --steps 200

Its output on a 2-core AMD EPYC (Zen 3), 2026-12-04, is in benchmarks/cifar10_methods.md.
"""
import argparse
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--npz", required=True)
p.add_argument("--steps", type=int, default=200)
p.add_argument("--batch", type=int, default=256)
p.add_argument("--loss", default="nce", choices=["nce", "softmax"])
p.add_argument("--lr", type=float, default=0.03)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--n", type=int, default=45000)
p.add_argument("--width", type=float, default=0.25)
args = p.parse_args()
torch.manual_seed(0)
torch.set_num_threads(args.threads)

data = np.load(args.npz)
images = torch.from_numpy(data["images"][:args.n]).permute(0, 3, 1, 2)     # ssl_tf's npz layout
n = images.shape[0]
MEAN = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
STD = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)


def gray(t):
    return (0.299 * t[:, :1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:]).expand_as(t)


def augment(x):
    """Random resized crop (area 0.2-1, ratio 3/4-4/3) with flip, colour jitter 0.4 (brightness, contrast,
    saturation; p 0.8), grayscale p 0.2 - torchvision's NPID pipeline without the hue jitter."""
    b = x.shape[0]
    x = x.float() / 255.0
    area = torch.empty(b).uniform_(0.2, 1.0)
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
    grid = F.affine_grid(theta, (b, 3, 32, 32), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    jit = (torch.rand(b) < 0.8).float().view(b, 1, 1, 1)
    bri = torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4)
    con = torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4)
    sat = torch.empty(b, 1, 1, 1).uniform_(0.6, 1.4)
    y = (x * bri).clamp(0, 1)
    m = gray(y).mean((1, 2, 3), keepdim=True)
    y = ((y - m) * con + m).clamp(0, 1)
    g = gray(y)
    y = ((y - g) * sat + g).clamp(0, 1)
    x = jit * y + (1 - jit) * x
    g = (torch.rand(b) < 0.2).float().view(b, 1, 1, 1)
    x = g * gray(x) + (1 - g) * x
    return (x - MEAN) / STD


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
    def __init__(self, width, dim=128):
        super().__init__()
        w = [int(c * width) for c in (64, 128, 256, 512)]
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        layers, cin = [], w[0]
        for i, c in enumerate(w):
            for j in range(2):
                layers.append(Block(cin, c, 2 if (j == 0 and i > 0) else 1))
                cin = c
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, dim)

    def forward(self, x):
        h = self.blocks(self.stem(x)).mean((2, 3))
        return F.normalize(self.fc(h), dim=1)


def effective_rank(z):
    s = torch.linalg.svdvals(F.normalize(z, dim=1))
    q = s / s.sum() + 1e-12
    return float(torch.exp(-(q * q.log()).sum()))


dim, K, T, momentum = 128, 4096, 0.07, 0.5
net = ResNet18(args.width, dim)
opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
stdv = 1.0 / math.sqrt(dim / 3)
bank = torch.rand(n, dim) * 2 * stdv - stdv
Z = None
g = torch.Generator().manual_seed(1)
perm = torch.randperm(n, generator=g)
pos = 0
start = time.time()
for step in range(args.steps):
    if pos + args.batch > n:
        perm, pos = torch.randperm(n, generator=g), 0
    idx = perm[pos:pos + args.batch]
    pos += args.batch
    x = augment(images[idx])
    f = net(x)
    neg = torch.randint(0, n, (args.batch, K))
    w = torch.cat([bank[idx].unsqueeze(1), bank[neg]], 1)          # [b, 1+K, d], no gradient
    logits = torch.einsum("bkd,bd->bk", w, f) / T
    if args.loss == "softmax":
        loss = F.cross_entropy(logits, torch.zeros(args.batch, dtype=torch.long))
    else:
        out = torch.exp(logits)
        if Z is None:
            Z = float(out.detach().mean() * n)
        p_ = out / Z
        noise = K / n
        loss = -(torch.log(p_[:, 0] / (p_[:, 0] + noise)) + torch.log(noise / (p_[:, 1:] + noise)).sum(1)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        bank[idx] = F.normalize(momentum * bank[idx] + (1 - momentum) * f.detach(), dim=1)
    if step % 10 == 0 or step == args.steps - 1:
        with torch.no_grad():
            fd = f.detach()
            pair = float(((fd @ fd.T).sum() - args.batch) / (args.batch * (args.batch - 1)))
        print(f"step {step} loss {loss.item():.3f} eff_rank {effective_rank(fd):.2f} "
              f"mean pair cos {pair:.3f} Z {Z} {time.time() - start:.0f}s", flush=True)
