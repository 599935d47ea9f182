"""NPID as the authors' PyTorch code runs it (zhirongw/lemniscate.pytorch: NCE with Z fixed on the first
batch, bank momentum 0.5, T 0.07, 4096 noise rows, SGD 0.03, wd 5e-4, no warm-up), written from the paper
and the algorithm, on the same data and backbone size as ssl_tf's benchmark (ResNet-18 x0.25, CIFAR stem),
to tell a bug in ssl_tf from the dynamics of the method at this scale. Prints the loss and the
embedding's effective rank (ssl_tf's definition) every 10 steps. The data, augmentation, backbone and
effective rank are experiments/torch_reference.py's, shared with dino_pytorch_check.py.

    pip install torch==2.13.0 numpy     # a separate environment: ssl_tf does not need PyTorch
    python experiments/npid_pytorch_check.py --npz ../shared/data/cifar10/train.npz --steps 200

Its output on a 2-core AMD EPYC (Zen 3), 2026-12-04, is in benchmarks/cifar10_methods.md.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch_reference import (  # experiments/torch_reference.py
    ResNet18,
    augment,
    effective_rank,
    index_batches,
    load_images,
    parser,
)

p = parser(__doc__.splitlines()[0])
p.add_argument("--loss", default="nce", choices=["nce", "softmax"])
p.add_argument("--lr", type=float, default=0.03)
args = p.parse_args()
torch.manual_seed(0)
torch.set_num_threads(args.threads)

images = load_images(args.npz, args.n)     # ssl_tf's npz layout
n = images.shape[0]


class Net(nn.Module):
    """The backbone, a linear layer to ``dim`` and L2 normalisation: NPID's embedding."""

    def __init__(self, width, dim=128):
        super().__init__()
        self.backbone = ResNet18(width)
        self.fc = nn.Linear(self.backbone.dim, dim)

    def forward(self, x):
        return F.normalize(self.fc(self.backbone(x)), dim=1)


dim, K, T, momentum = 128, 4096, 0.07, 0.5
net = Net(args.width, dim)
opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
stdv = 1.0 / math.sqrt(dim / 3)
bank = torch.rand(n, dim) * 2 * stdv - stdv
Z = None
batches = index_batches(n, args.batch, 1)
start = time.time()
for step in range(args.steps):
    idx = next(batches)
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
