"""Train-step throughput of ssl_tf against a PyTorch reference on the same CPU.

    python experiments/throughput.py                                  # ResNet-18, batch 256, 32 px
    python experiments/throughput.py --methods simclr --width 0.25 --batch 64 --steps 5
    python experiments/throughput.py --overrides '{"precision": "mixed_bfloat16"}'   # a lever
    python experiments/throughput.py --methods simclr --no_torch --tf_only floor --threads 2,1
    python experiments/throughput.py --worker tf --what step --method byol --no_recompute   # one lever off
    python experiments/throughput.py --methods moco --tf_only step --forward   # + the forward alone, both sides
    pip install /path/to/torch-2.13.0+cpu-...whl                      # optional, benchmark only

For each method it measures, each in a fresh subprocess and alternating the frameworks round
by round (so both see the same machine state):

  floor     the backbone's own forward + backward (+ SGD update) on the method's views
  floor+target  the floor plus the target/teacher backbone's forward on the largest-resolution
            views (BYOL: both views, DINO: the 2 global crops; MoCo keys only one view of the
            two, so it overestimates there): what the algorithm itself costs beyond the floor
  tf step   ssl_tf's full train step (losses, gathers, EMA, queues, online probe)
  torch     our PyTorch re-implementation of the same step, eager and ``torch.compile``
  torch floor compile  (``--torch_floor``) PyTorch's compiled floor: the backbone alone, to tell
            the frameworks' convolutions from the methods' machinery
  augment   ssl_tf's tf.data view pipeline alone (images/s, uint8 in memory -> views)
  forward   (``--forward``) the backbone's training-mode forward alone, without gradient, on the
            method's views, ssl_tf and PyTorch compiled: the work of a key / target encoder

Each number is the median over ``--steps`` timed steps after ``--warmup`` steps, on fixed
views (augmentation excluded from step timings), with the process's peak RSS. Views and
heads come from ssl_tf's resolved defaults, so both frameworks run the same shapes. The
PyTorch step uses SGD with momentum where ssl_tf uses LARS (a per-layer elementwise cost,
small next to the convolutions) and no shuffle BN (one device).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0


def timed(step, arg, args) -> dict:
    """Median-able step times after warm-up, the peak RSS and the memory the steps add (peak RSS
    minus the RSS once the model and data exist: activations, gradients, optimizer slots)."""
    import gc
    gc.collect()
    before = current_mb()
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step(arg)
        times.append(time.perf_counter() - t0)
    return {"seconds": times[args.warmup:], "peak_rss_mb": peak_mb(), "step_mb": max(0.0, peak_mb() - before)}


# ----------------------------------------------------------------------------- TensorFlow side

def _tf_setup(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, ROOT)
    import numpy as np

    from ssl_tf import backend  # oneDNN chosen before TensorFlow loads
    tf = backend.import_tensorflow()
    if args.threads:   # lever: intra,inter op thread pools (set before the first op)
        intra, inter = (int(x) for x in args.threads.split(","))
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    from ssl_tf.models import layers
    layers.Conv2D.recompute = not args.no_recompute   # lever: keep every BN-ReLU output (the old behaviour)
    from ssl_tf.config import Config
    from ssl_tf.data.sources import Examples
    from ssl_tf.methods import METHODS
    from ssl_tf.runner import Runner
    cfg = Config(method=args.method, dataset="shapes:64,16", image_size=32, width=args.width, batch_size=args.batch,
                 progress=False, plots=False, model_dir=os.path.join("/tmp", f"throughput-{os.getpid()}"),
                 jit_compile=args.jit, **json.loads(args.overrides))
    runner = Runner(cfg, log=lambda *a: None)
    rng = np.random.default_rng(0)
    # OBoW's queue takes one feature per image a step: its vocabulary must fit the images of an epoch
    n = max(4 * args.batch, 512, getattr(runner.model_cfg.params, "obow_words", 0))
    data = Examples("random", rng.integers(0, 10, n), 10, images=rng.integers(0, 256, (n, 32, 32, 3), np.uint8))
    return tf, runner, data, METHODS


def tf_worker(args) -> dict:
    tf, runner, data, METHODS = _tf_setup(args)
    cfg, augment = runner.model_cfg, runner.augment_config()
    encoder = runner.build_encoder()
    model = METHODS[cfg.method].from_config(cfg, encoder, 10, num_examples=len(data))
    model.prepare(data, log=lambda *a: None)     # BoWNet: k-means builds the vocabulary first
    model.set_schedule(100, 1000)
    stream = model.input_stream(data, augment, global_batch=args.batch, seed=0)
    if args.what == "augment":
        it = iter(stream)
        next(it)
        times = []
        for _ in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            next(it)
            times.append(time.perf_counter() - t0)
        return {"seconds": times[args.warmup:], "peak_rss_mb": peak_mb(), "machine": _machine(runner)}
    sample = next(iter(stream))
    from ssl_tf import optim
    model.build_with(sample, optim.build_optimizer(cfg.optimizer, 0.1, cfg.weight_decay, cfg.momentum),
                     fixed_optimizer=optim.build_optimizer(cfg.optimizer, 0.1, cfg.weight_decay, cfg.momentum))
    jit = runner.use_jit()
    crops = _tf_crops(tf, sample["views"])

    def backbone_sum(crops):   # the backbone's training-mode forward on every view batch, as one scalar
        return tf.add_n([tf.reduce_mean(tf.cast(encoder(x, training=True), tf.float32)) for x in crops])
    if args.what in ("floor", "floor_target"):
        opt = tf.keras.optimizers.SGD(0.01, momentum=0.9)
        # floor_target adds the target/teacher backbone's forward on the largest views: the work the
        # paper's algorithm needs before any machinery (methods with a target network only)
        target = model.targets[0] if args.what == "floor_target" and model.targets else None

        def floor_step(crops):
            with tf.GradientTape() as tape:
                loss = backbone_sum(crops)
            grads = tape.gradient(loss, encoder.trainable_variables)
            opt.apply_gradients(zip(grads, encoder.trainable_variables))
            if target is not None:
                loss += tf.reduce_mean(tf.cast(target(crops[0], training=True), tf.float32))
            return loss
        step, arg = tf.function(floor_step, jit_compile=jit), crops
    elif args.what == "forward":   # the backbone's training-mode forward alone, no gradient
        step, arg = tf.function(backbone_sum, jit_compile=jit), crops
    else:
        step, arg = tf.function(model.train_step, jit_compile=jit), sample
    result = timed(lambda a: tf.nest.map_structure(lambda t: t.numpy(), step(a)), arg, args)
    return {**result, "jit": jit, "views": [list(x.shape) for x in crops], "machine": _machine(runner)}


def _machine(runner) -> str:
    from ssl_tf import backend
    return backend.describe(runner.machine)


def _tf_crops(tf, views):
    """Every view batch of a sample as [n, s, s, 3] tensors, one per resolution (views of equal
    size concatenated, as the methods encode them)."""
    by_size = {}
    for t in tf.nest.flatten(views):
        if t.shape.rank == 5:
            parts = [t[:, i] for i in range(t.shape[1])]
        elif t.shape.rank == 4:
            parts = [t]
        else:
            continue
        for p in parts:
            if p.shape[0]:
                by_size.setdefault(int(p.shape[1]), []).append(p)
    return [tf.concat(v, 0) for _, v in sorted(by_size.items(), reverse=True)]


# ----------------------------------------------------------------------------- PyTorch side

def torch_worker(args) -> dict:
    import copy

    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    torch.set_num_threads(os.cpu_count() or 2)
    torch.manual_seed(0)
    spec = json.loads(args.spec)

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
            self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = F.relu(self.b1(self.c1(x)))
            return F.relu(self.b2(self.c2(y)) + self.short(x))

    def resnet18(width):   # the CIFAR stem: 3x3 conv, no max-pool
        c = [max(8, int(64 * width * m)) for m in (1, 2, 4, 8)]
        layers, cin = [nn.Conv2d(3, c[0], 3, 1, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU()], c[0]
        for i, cout in enumerate(c):
            layers += [Block(cin, cout, 1 if i == 0 else 2), Block(cout, cout, 1)]
            cin = cout
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), cin

    def mlp(din, hidden, dout, layers=2, last_bn=False):
        mods, d = [], din
        for _ in range(layers - 1):
            mods += [nn.Linear(d, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU()]
            d = hidden
        mods.append(nn.Linear(d, dout))
        if last_bn:
            mods.append(nn.BatchNorm1d(dout, affine=False))
        return nn.Sequential(*mods)

    encoder, feat = resnet18(args.width)
    views = [torch.rand(n, 3, s, s).contiguous(memory_format=torch.channels_last) for n, s, _ in
             [(v[0], v[1], v[3]) for v in spec["views"]]]
    b = spec["batch"]
    h = spec["heads"]
    # what: step | step_compile (the method's step) or floor | floor_compile (the backbone alone).
    method = "floor" if args.what.startswith(("floor", "forward")) else args.method
    probe = nn.Linear(feat, 10)
    labels = torch.randint(0, 10, (b,))

    def ema(target, online, m):
        with torch.no_grad():
            for t, o in zip(target.parameters(), online.parameters()):
                t.mul_(m).add_(o.detach(), alpha=1 - m)

    def split_pair(x):
        return x[:b], x[b:2 * b]

    if method == "floor":
        params = list(encoder.parameters())

        def loss_fn():
            return sum(encoder(x).mean() for x in views)
    elif method == "simclr":
        proj = mlp(feat, h["proj_hidden"] or feat, h["proj_dim"], h["proj_layers"])
        params = list(encoder.parameters()) + list(proj.parameters())

        def loss_fn():
            f = encoder(views[0])
            z = F.normalize(proj(f), dim=1)
            sim = z @ z.t() / h["temperature"]
            sim = sim - torch.eye(2 * b) * 1e9
            target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)])
            return F.cross_entropy(sim, target) + F.cross_entropy(probe(f[:b].detach()), labels)
    elif method == "moco":
        proj = mlp(feat, feat, h["proj_dim"], 2)
        key_enc, key_proj = copy.deepcopy(encoder), copy.deepcopy(proj)
        queue = F.normalize(torch.randn(h["queue_size"], h["proj_dim"]), dim=1)
        params = list(encoder.parameters()) + list(proj.parameters())

        def loss_fn():
            nonlocal queue
            x1, x2 = split_pair(views[0])
            f = encoder(x1)
            q = F.normalize(proj(f), dim=1)
            with torch.no_grad():
                ema(key_enc, encoder, 0.999)
                ema(key_proj, proj, 0.999)
                k = F.normalize(key_proj(key_enc(x2)), dim=1)
            logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], 1) / h["temperature"]
            queue = torch.cat([k, queue[:-b]])
            return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long)) + F.cross_entropy(probe(f.detach()), labels)
    elif method == "byol":
        proj = mlp(feat, h["proj_hidden"], h["proj_dim"], 2)
        pred = mlp(h["proj_dim"], h["pred_hidden"], h["proj_dim"], 2)
        t_enc, t_proj = copy.deepcopy(encoder), copy.deepcopy(proj)
        params = list(encoder.parameters()) + list(proj.parameters()) + list(pred.parameters())

        def loss_fn():
            f = encoder(views[0])
            p = F.normalize(pred(proj(f)), dim=1)
            with torch.no_grad():
                ema(t_enc, encoder, 0.996)
                ema(t_proj, proj, 0.996)
                t = F.normalize(t_proj(t_enc(views[0])), dim=1)
            p1, p2 = split_pair(p)
            t1, t2 = split_pair(t)
            return (4 - 2 * (p1 * t2).sum(1) - 2 * (p2 * t1).sum(1)).mean() + F.cross_entropy(probe(f[:b].detach()),
                                                                                             labels)
    elif method == "dino":
        head = nn.Sequential(mlp(feat, 2048, 256, 3), nn.Identity())
        last = nn.utils.parametrizations.weight_norm(nn.Linear(256, h["dino_out_dim"], bias=False))
        t_enc, t_head, t_last = copy.deepcopy(encoder), copy.deepcopy(head), copy.deepcopy(last)
        center = torch.zeros(1, h["dino_out_dim"])
        params = list(encoder.parameters()) + list(head.parameters()) + list(last.parameters())

        def loss_fn():
            nonlocal center
            feats = [encoder(x) for x in views]
            s_out = [last(F.normalize(head(f), dim=1)) / 0.1 for f in feats]
            s_chunks = sum((list(o.chunk(o.shape[0] // b)) for o in s_out), [])
            with torch.no_grad():
                ema(t_enc, encoder, 0.996)
                ema(t_head, head, 0.996)
                ema(t_last, last, 0.996)
                t_out = t_last(F.normalize(t_head(t_enc(views[0])), dim=1))
                t_chunks = F.softmax((t_out - center) / 0.04, dim=1).chunk(2)
                center = center * 0.9 + t_out.mean(0, keepdim=True) * 0.1
            loss, n = 0.0, 0
            for i, t in enumerate(t_chunks):
                for j, s in enumerate(s_chunks):
                    if i != j:
                        loss = loss + (-t * F.log_softmax(s, dim=1)).sum(1).mean()
                        n += 1
            return loss / n + F.cross_entropy(probe(feats[0][:b].detach()), labels)
    else:
        raise SystemExit(f"no PyTorch reference for {method}")
    for module in (encoder,):
        module.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(params + list(probe.parameters()), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.torch_bf16):   # lever, both sides
            loss = loss_fn()
        loss.backward()
        opt.step()
        return loss

    def forward():   # the backbone's training-mode forward alone, no gradient
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.torch_bf16):
            return loss_fn()
    if args.what.startswith("forward"):
        step = forward

    if args.what.endswith("_compile"):
        step = torch.compile(step)
        # the first call compiles, the second recompiles (the optimizer's momentum buffers now
        # exist): both are warm-up whatever --warmup says
        args.warmup = max(args.warmup, 2)
    return timed(lambda _: float(step()), None, args)


# ----------------------------------------------------------------------------- driver

TARGET_METHODS = ("moco", "byol", "dino", "moco_v3", "distill")   # methods with a target/teacher backbone


def run_worker(framework, what, method, args, spec=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", framework, "--what", what, "--method", method,
           "--width", str(args.width), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--jit", args.jit, "--overrides", args.overrides,
           "--threads", args.threads] + (["--torch_bf16"] if args.torch_bf16 else []) + (
               ["--no_recompute"] if args.no_recompute else [])
    if spec is not None:
        cmd += ["--spec", json.dumps(spec)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def heads_of(method, args) -> dict:
    sys.path.insert(0, ROOT)
    from ssl_tf import config as config_lib
    c = config_lib.resolve(config_lib.Config(method=method, dataset="npz:x", batch_size=args.batch,
                                             width=args.width, **json.loads(args.overrides)), 32)
    return {k: getattr(c.params, k) for k in ("proj_hidden", "proj_dim", "proj_layers", "pred_hidden", "temperature",
                                              "queue_size", "dino_out_dim") if hasattr(c.params, k)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="simclr,moco,byol,dino")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="alternations of the two frameworks per method")
    p.add_argument("--jit", default="auto", choices=("auto", "true", "false"))
    p.add_argument("--overrides", default="{}", help='JSON of Config fields, e.g. {"num_local_crops": 2}')
    p.add_argument("--threads", default="", help="TF intra,inter op threads, e.g. 2,1 (default: TF's)")
    p.add_argument("--no_recompute", action="store_true",
                   help="keep the BN-ReLU activations a convolution reads instead of recomputing them in the "
                        "backward pass (ssl_tf's default): the memory lever's A/B")
    p.add_argument("--tf_only", default="", help="comma list of TF measurements to run (floor,floor_target,step,augment); "
                   "default both plus torch")
    p.add_argument("--torch_bf16", action="store_true",
                   help="PyTorch side under torch.autocast(bfloat16): the counterpart of --precision=mixed_bfloat16")
    p.add_argument("--no_torch", action="store_true")
    p.add_argument("--no_compile", action="store_true", help="skip torch.compile (minutes of compilation)")
    p.add_argument("--torch_floor", action="store_true",
                   help="also time PyTorch's compiled floor (its backbone alone on the same views)")
    p.add_argument("--forward", action="store_true",
                   help="also time the backbone's training-mode forward alone (no gradient) on the method's views, "
                        "ssl_tf and PyTorch compiled: the work of a key / target encoder")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    # worker mode
    p.add_argument("--worker", choices=("tf", "torch"))
    p.add_argument("--what", default="step")
    p.add_argument("--method", default="simclr")
    p.add_argument("--spec", default="{}")
    args = p.parse_args()
    if args.worker:
        result = tf_worker(args) if args.worker == "tf" else torch_worker(args)
        print(json.dumps(result))
        return

    try:
        import torch  # noqa: F401
        have_torch = not args.no_torch
    except ImportError:
        have_torch = False
    rows = []
    for method in args.methods.split(","):
        samples = {}
        spec = None
        for _ in range(args.rounds):
            for name, fw, what in [("floor", "tf", "floor"), ("floor+target", "tf", "floor_target"),
                                   ("tf step", "tf", "step"),
                                   ("torch eager", "torch", "step"), ("torch compile", "torch", "step_compile"),
                                   ("torch floor compile", "torch", "floor_compile"),
                                   ("tf forward", "tf", "forward"), ("torch forward compile", "torch", "forward_compile")]:
                if what.startswith("forward"):
                    if not args.forward:   # --forward switches both sides on, whatever --tf_only says
                        continue
                elif fw == "tf" and args.tf_only and what not in args.tf_only.split(","):
                    continue
                if what == "floor_target" and method not in TARGET_METHODS:
                    continue
                if fw == "torch" and (not have_torch or spec is None or (what.endswith("_compile") and args.no_compile)
                                      or (what.startswith("floor") and not args.torch_floor)):
                    continue
                r = run_worker(fw, what, method, args, spec)
                if "views" in r and spec is None:
                    spec = {"batch": args.batch, "views": r["views"], "heads": heads_of(method, args)}
                samples.setdefault(name, []).append(r)
        if not args.tf_only or "augment" in args.tf_only.split(","):
            samples["augment"] = [run_worker("tf", "augment", method, args)]
        row = {"method": method, "backbone": f"resnet18×{args.width}", "batch": args.batch,
               "machine": next((r["machine"] for rs in samples.values() for r in rs if "machine" in r), None)}
        for name, rs in samples.items():
            errors = [r["error"] for r in rs if "error" in r]
            secs = [s for r in rs for s in r.get("seconds", [])]
            if errors and not secs:
                row[name] = {"error": errors[0]}
                continue
            med = statistics.median(secs)
            row[name] = {"s_per_step": round(med, 4), "images_per_sec": round(args.batch / med, 1),
                         "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs if "peak_rss_mb" in r), 1),
                         "step_mb": round(max(r.get("step_mb", 0.0) for r in rs), 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(table(rows))
    for machine in sorted({r["machine"] for r in rows if r.get("machine")}):
        print(f"ssl_tf's machine: {machine}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


def best(ips) -> str:
    """ssl_tf's step against the faster of PyTorch's two modes."""
    torch_best = max((ips[c] for c in ("torch eager", "torch compile") if ips.get(c)), default=None)
    return f"{ips['tf step'] / torch_best:.2f}" if torch_best and ips.get("tf step") else "–"


def table(rows) -> str:
    cols = ["floor", "floor+target", "tf step", "augment", "torch eager", "torch compile", "torch floor compile"]
    cols += [c for c in ("tf forward", "torch forward compile") if any(c in r for r in rows)]
    lines = ["| method | backbone | batch | " + " | ".join(f"{c} img/s" for c in cols) +
             " | step / floor | step / (floor+target) | vs torch.compile | vs torch eager | vs best torch "
             "| step MB tf / torch (peak RSS) |",
             "|" + "---|" * (len(cols) + 9)]
    for r in rows:
        ips = {c: r.get(c, {}).get("images_per_sec") for c in cols}
        ratio = lambda a, b: f"{ips[a] / ips[b]:.2f}" if ips.get(a) and ips.get(b) else "–"   # noqa: E731
        cost = lambda base: f"{ips[base] / ips['tf step']:.2f}×" if ips[base] and ips["tf step"] else "–"   # noqa: E731
        tfm, thm = r.get("tf step", {}), r.get("torch compile", r.get("torch eager", {}))
        mem = (f"{tfm.get('step_mb', '–')} / {thm.get('step_mb', '–')} "
               f"({tfm.get('peak_rss_mb', '–')} / {thm.get('peak_rss_mb', '–')})")
        lines.append(f"| {r['method']} | {r['backbone']} | {r['batch']} | " +
                     " | ".join(str(ips[c] or r.get(c, {}).get("error", "–")) for c in cols) +
                     f" | {cost('floor')} | {cost('floor+target')} | {ratio('tf step', 'torch compile')} "
                     f"| {ratio('tf step', 'torch eager')} | {best(ips)} | {mem} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
