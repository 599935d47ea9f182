"""DINO (Caron et al. 2021, Algorithm 1, with the schedules of facebookresearch/dino main_dino.py) written
in PyTorch from the algorithm, on the same data and backbone size as ssl_tf's CIFAR-10 benchmark
(first 45,000 images of the npz, ResNet-18 x0.25 with the CIFAR stem), to tell a bug in ssl_tf from the
dynamics of the method at this scale. Every 10 steps it prints the loss, the entropy of the teacher's
centred and sharpened distribution (ln K: uniform, no signal; 0: one-hot), its mean max probability, the
number of distinct teacher argmax prototypes in the batch, and the effective rank of the student's
backbone features (ssl_tf's definition).

    pip install torch numpy     # a separate environment: ssl_tf does not need PyTorch
    python experiments/dino_pytorch_check.py --npz ../shared/data/cifar10/train.npz --steps 200
    python experiments/dino_pytorch_check.py --npz ../shared/data/cifar10/train.npz --opt adamw --head_bn

What it does: student = backbone + DINO head (Linear 2048, GELU, Linear 2048, GELU, Linear 256, optional
BatchNorm1d after the hidden Linears, L2 normalisation, a weight-normalised Linear without bias to K with
its gain fixed to 1); teacher = a copy, updated after each step as an EMA of the student with momentum
rising from --momentum to 1 on a cosine; both in train mode (batch statistics), each view pair in one
forward pass (main_dino.py's MultiCropWrapper). Two global 32-px crops per image, no local crops. Loss:
cross-entropy from softmax((t - c) / T_t) of one view to log_softmax(s / 0.1) of the other, averaged over
the two pairs and the batch; centre c = 0.9 c + 0.1 × the mean teacher output over both views. Base lr
x batch/256, linear warm-up then cosine to 0; no weight decay on biases and norm parameters.

Departs from main_dino.py: no local crops, no blur or solarisation (as ssl_tf at 32 px), no hue jitter,
brightness/contrast/saturation in a fixed order (experiments/torch_reference.py's augmentation, shared
with npid_pytorch_check.py), bilinear resampling, constant weight decay (main_dino.py: a cosine from
--weight_decay to --weight_decay_end), no LARS, schedules counted in steps rather than epochs.
"""
import copy
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
p.add_argument("--K", type=int, default=4096, help="Output dimension of the head (prototypes).")
p.add_argument("--opt", default="sgd", choices=["sgd", "adamw"])
p.add_argument("--lr", type=float, default=None,
               help="Base lr, x batch/256. Default: 0.03 for sgd (the DINO README's ResNet-50 run), "
                    "5e-4 for adamw (main_dino.py).")
p.add_argument("--wd", type=float, default=None, help="Weight decay. Default: 1e-4 for sgd, 0.04 for adamw.")
p.add_argument("--warmup_steps", type=int, default=None, help="Linear lr warm-up. Default: 10 %% of --steps.")
p.add_argument("--momentum", type=float, default=0.996, help="Teacher EMA momentum at step 0 (cosine to 1).")
p.add_argument("--teacher_temp", type=float, default=0.04)
p.add_argument("--warmup_teacher_temp", type=float, default=0.04)
p.add_argument("--teacher_warmup_steps", type=int, default=0)
p.add_argument("--head_bn", action="store_true", help="BatchNorm1d after the head's hidden Linears.")
p.add_argument("--freeze_last_layer_steps", type=int, default=0,
               help="Steps during which the last layer is not updated (main_dino.py: 1 epoch).")
p.add_argument("--clip_grad", type=float, default=0.0,
               help="Clip each parameter tensor's gradient to this norm (main_dino.py: 3.0); 0 = off.")
p.add_argument("--crop_min_scale", type=float, default=0.4, help="Global crops from this fraction of the area to 1.")
p.add_argument("--jitter", type=float, default=0.5,
               help="Colour jitter strength s (ssl_tf's): brightness, contrast, saturation in 1 ± 0.8 s; p 0.8.")
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
if args.lr is None:
    args.lr = 0.03 if args.opt == "sgd" else 5e-4
if args.wd is None:
    args.wd = 1e-4 if args.opt == "sgd" else 0.04
if args.warmup_steps is None:
    args.warmup_steps = args.steps // 10
torch.manual_seed(args.seed)
torch.set_num_threads(args.threads)
STUDENT_TEMP, CENTER_MOMENTUM = 0.1, 0.9

images = load_images(args.npz, args.n)     # ssl_tf's npz layout
n = images.shape[0]


class NormalizedLinear(nn.Module):
    """A Linear without bias whose weight is v / ||v|| per output unit: weight normalisation with the gain
    fixed to 1 (main_dino.py's norm_last_layer). v starts as nn.Linear's default initialisation."""

    def __init__(self, cin, cout):
        super().__init__()
        self.v = nn.Parameter(torch.empty(cout, cin))
        nn.init.kaiming_uniform_(self.v, a=math.sqrt(5))

    def forward(self, z):
        return z @ F.normalize(self.v, dim=1).T


class DINOHead(nn.Module):
    def __init__(self, cin, K, bn, hidden=2048, bottleneck=256):
        super().__init__()
        layers = []
        for a, b in ((cin, hidden), (hidden, hidden)):
            layers += [nn.Linear(a, b)] + ([nn.BatchNorm1d(b)] if bn else []) + [nn.GELU()]
        layers.append(nn.Linear(hidden, bottleneck))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = NormalizedLinear(bottleneck, K)

    def forward(self, h):
        return self.last_layer(F.normalize(self.mlp(h), dim=1))


class Net(nn.Module):
    """Backbone + DINO head: (pooled backbone features, K logits)."""

    def __init__(self, width, K, bn):
        super().__init__()
        self.backbone = ResNet18(width)
        self.head = DINOHead(self.backbone.dim, K, bn)

    def forward(self, x):
        h = self.backbone(x)
        return h, self.head(h)


student = Net(args.width, args.K, args.head_bn)
teacher = copy.deepcopy(student)
for q in teacher.parameters():
    q.requires_grad = False
student.train()
teacher.train()      # as main_dino.py: the teacher's batch norms use the batch statistics too

decay = [q for q in student.parameters() if q.ndim > 1]
no_decay = [q for q in student.parameters() if q.ndim <= 1]     # biases, batch-norm scales and shifts
groups = [{"params": decay, "weight_decay": args.wd}, {"params": no_decay, "weight_decay": 0.0}]
if args.opt == "sgd":
    opt = torch.optim.SGD(groups, lr=0.0, momentum=0.9)
else:
    opt = torch.optim.AdamW(groups, lr=0.0)
base_lr = args.lr * args.batch / 256
warmup = min(args.warmup_steps, args.steps)


def lr_at(step):
    if step < warmup:
        return base_lr * step / warmup
    return 0.5 * base_lr * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))


def momentum_at(step):
    return 1 - (1 - args.momentum) * 0.5 * (1 + math.cos(math.pi * step / args.steps))


def teacher_temp_at(step):
    if step < args.teacher_warmup_steps:
        frac = step / args.teacher_warmup_steps
        return args.warmup_teacher_temp + (args.teacher_temp - args.warmup_teacher_temp) * frac
    return args.teacher_temp


print("# " + " ".join(f"{k}={v}" for k, v in vars(args).items()) + f" base_lr={base_lr:g} ln_K={math.log(args.K):.3f}",
      flush=True)
center = torch.zeros(1, args.K)
batches = index_batches(n, args.batch, args.seed + 1)
start = time.time()
for step in range(args.steps):
    idx = next(batches)
    for group in opt.param_groups:
        group["lr"] = lr_at(step)
    x = torch.cat([augment(images[idx], args.crop_min_scale, 0.8 * args.jitter) for _ in range(2)])   # views 1, 2
    with torch.no_grad():
        _, t = teacher(x)                                   # [2b, K], both global views
    h, s = student(x)
    temp = teacher_temp_at(step)
    t_log = F.log_softmax((t - center) / temp, dim=1)       # centred, sharpened teacher
    t_prob = t_log.exp()
    s_log = F.log_softmax(s / STUDENT_TEMP, dim=1)
    t1, t2 = t_prob.chunk(2)
    s1, s2 = s_log.chunk(2)
    loss = (-(t1 * s2).sum(1).mean() - (t2 * s1).sum(1).mean()) / 2     # teacher view a -> student view b != a
    opt.zero_grad()
    loss.backward()
    if args.clip_grad > 0:
        for q in student.parameters():
            if q.grad is not None:
                coef = args.clip_grad / (q.grad.norm(2) + 1e-6)
                if coef < 1:
                    q.grad.mul_(coef)
    if step < args.freeze_last_layer_steps:
        for q in student.head.last_layer.parameters():
            q.grad = None                                   # as main_dino.py: no update at all, no decay either
    opt.step()
    with torch.no_grad():
        m = momentum_at(step)
        for qs, qt in zip(student.parameters(), teacher.parameters()):
            qt.mul_(m).add_(qs.detach(), alpha=1 - m)
        center = CENTER_MOMENTUM * center + (1 - CENTER_MOMENTUM) * t.mean(0, keepdim=True)
    if step % 10 == 0 or step == args.steps - 1:
        with torch.no_grad():
            b = idx.shape[0]
            entropy = float(-(t1 * t_log[:b]).sum(1).mean())
            max_prob = float(t1.max(1).values.mean())
            distinct = int(t1.argmax(1).unique().numel())
            rank = effective_rank(h[:b].detach())
        print(f"step {step} loss {loss.item():.3f} teacher_entropy {entropy:.3f} max_prob {max_prob:.4f} "
              f"distinct_argmax {distinct} eff_rank {rank:.2f} {time.time() - start:.0f}s", flush=True)
