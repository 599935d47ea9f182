"""Every method on the CIFAR-10 training file under one time budget: linear probe, kNN, the random-init
backbone, epochs, images/s, peak memory, the collapse monitor at the end and the machine.

    python experiments/cifar10_methods.py                                   # every method, 20 minutes each
    python experiments/cifar10_methods.py --methods simclr,byol,dino@vit_tiny
    python experiments/cifar10_methods.py --minutes 40 --methods byol        # where 20 minutes are not enough

Each method trains with its budget recipe, flags/<method>/cifar10_20min.flags (the reasons for each
departure from the paper are its comments), for --minutes of the training loop: ``--train_minutes``
sizes the cosine schedule to the steps that fit, measured while training. ``METHOD@BACKBONE`` trains
the same recipe on another backbone, or the method's recipe for it where one exists:
flags/<method>/cifar10_20min_<backbone>.flags (DINO on vit_tiny, at DeiT-tiny's width: 192, 12 blocks).
Evaluation: a stratified, seeded 10% of the training file (5,000 images; 45,000 train) or --eval_npz.
A method already in <out>/cifar10_methods.json with the same budget is skipped, so a killed or partial table
resumes where it stopped (a method killed mid-run resumes from its checkpoint). Writes
<out>/cifar10_methods.json, <out>/cifar10_methods.md and <out>/cifar10_methods.png (linear and kNN per method
against the random-init backbone).
Peak RSS is the process's peak at the end of the method's training loop (ru_maxrss): a method that
runs after another in the same process reports the larger of its own and that one's evaluation.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssl_tf import backend  # noqa: E402  (first: oneDNN is chosen before TensorFlow loads)

backend.import_tensorflow()
from absl import flags  # noqa: E402

from ssl_tf import cli  # noqa: E402
from ssl_tf.runner import Runner  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_METHODS = ("simclr,moco,moco_v3,byol,simsiam,dino,dino@vit_tiny,npid,barlow_twins,vicreg,rotation,"
                   "relative_patch_location,jigsaw,exemplar,colorization,cpc_v2,deep_infomax,amdim,cmc,pirl,bownet,"
                   "obow,bigbigan")


def budget_flagfile(method: str, backbone: str = "") -> str:
    own = os.path.join(ROOT, "flags", method, f"cifar10_20min_{backbone}.flags")
    return own if backbone and os.path.exists(own) else os.path.join(ROOT, "flags", method, "cifar10_20min.flags")


def config_for(spec: str, args, model_dir: str, *extra: str):
    """The Config of ``METHOD[@BACKBONE]`` from its budget flagfile (``cifar10_20min_BACKBONE.flags`` where
    the method has one for that backbone) and this benchmark's data."""
    method, _, backbone = spec.partition("@")
    argv = ["ssl-tf", f"--flagfile={budget_flagfile(method, backbone)}",
            f"--dataset=npz:{args.npz}", f"--train_minutes={args.minutes}", f"--model_dir={model_dir}",
            f"--seed={args.seed}", "--progress=false", "--plots=false"]
    argv += [f"--eval_dataset=npz:{args.eval_npz}"] if args.eval_npz else []
    if backbone and budget_flagfile(method) == budget_flagfile(method, backbone):   # the ResNet recipe, moved
        argv += [f"--backbone={backbone}"] + (["--width=1.0"] if backbone.startswith("vit") else [])  # ×0.25: ResNet
    argv += list(extra)
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(argv)
    return cli.config_from_flags(fv)


def layerwise_of(res: dict) -> dict:
    """The best layer of the layer-wise probe and the random-init backbone's same layer (pretext tasks)."""
    best = res.get("layerwise_eval", {}).get("best")
    return {} if not best else {"layer_best": best["layer"], "layer_top1": best["top1"],
                                "layer_random_init": best.get("random_init_top1")}


def row_of(res: dict, minutes: float, recipe: str) -> dict:
    pre = res["pretrain"]
    final = pre.get("final", {})
    return {**layerwise_of(res), "budget_minutes": minutes, "linear_top1": res["linear_eval"]["top1"],
            "knn_top1": res["knn"]["top1"],
            "linear_random_init": res["linear_eval"].get("random_init_top1"),
            "knn_random_init": res["knn"].get("random_init_top1"),
            "epochs": pre["epochs"], "steps": pre["steps"], "batch": pre["global_batch"],
            "train_images_per_sec": pre["train_images_per_sec"], "loop_minutes": round(pre["loop_seconds"] / 60, 2),
            "peak_rss_mb": pre["peak_rss_mb"], "embedding_std": final.get("embedding_std"),
            "effective_rank": final.get("effective_rank"), "collapse_warnings": len(pre.get("collapse_warnings", [])),
            "machine": pre.get("machine"), "recipe": recipe}


def recipe_of(spec: str) -> str:
    """The flagfile a row trained with (and the backbone, where the flagfile names another)."""
    method, _, backbone = spec.partition("@")
    path = budget_flagfile(method, backbone)
    own = os.path.basename(path) != "cifar10_20min.flags"
    shown = os.path.relpath(path, os.path.join(ROOT, "flags"))
    return shown + (f" --backbone={backbone}" if backbone and not own else "")


def markdown(summary: dict) -> str:
    head = ("| method | linear | kNN | random linear | random kNN | best layer (random) | epochs | images/s | loop min "
            "| peak RSS MB | embedding std / eff. rank | recipe |")
    lines = [head, "|" + "---|" * 12]
    for name, r in summary["methods"].items():
        rank = "" if r["embedding_std"] is None else f"{r['embedding_std']:.3f} / {r['effective_rank']:.1f}"
        layer = (f"{r['layer_best']} {r['layer_top1']:.2f} ({r['layer_random_init']:.2f})"
                 if r.get("layer_best") else "")
        lines.append(f"| {name} | {r['linear_top1']:.2f} | {r['knn_top1']:.2f} | {r['linear_random_init']:.2f} | "
                     f"{r['knn_random_init']:.2f} | {layer} | {r['epochs']:.2f} | {r['train_images_per_sec']} | "
                     f"{r['loop_minutes']} | {r['peak_rss_mb']:.0f} | {rank} | `{r['recipe']}` |")
    machines = sorted({r["machine"] for r in summary["methods"].values() if r.get("machine")})
    return "\n".join(lines) + "\n\nMachine: " + "; ".join(machines) + "\n"


def bar_plot(summary: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    names = list(summary["methods"])
    rows = [summary["methods"][n] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 4))
    ax.bar(x - 0.2, [r["linear_top1"] for r in rows], 0.4, label="linear")
    ax.bar(x + 0.2, [r["knn_top1"] for r in rows], 0.4, label="kNN")
    ax.scatter(x - 0.2, [r["linear_random_init"] for r in rows], marker="_", s=300, c="k", label="random init")
    ax.scatter(x + 0.2, [r["knn_random_init"] for r in rows], marker="_", s=300, c="k")
    ax.set_xticks(x, names, rotation=45, ha="right")
    ax.set_ylabel("top-1 %")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", default=os.path.join(ROOT, "..", "shared", "data", "cifar10", "train.npz"))
    p.add_argument("--eval_npz", default=None)
    p.add_argument("--minutes", type=float, default=20.0)
    p.add_argument("--methods", default=DEFAULT_METHODS)
    p.add_argument("--out", default="runs/cifar10_methods")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    summary_path = os.path.join(args.out, "cifar10_methods.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {"methods": {}}
    for spec in (m for m in args.methods.split(",") if m):
        name = spec.replace("@", "_") + ("" if args.minutes == 20 else f"_{args.minutes:g}min")
        start = time.perf_counter()
        cfg = config_for(spec, args, os.path.join(args.out, name))
        done = summary["methods"].get(name, {})
        if done.get("budget_minutes") == args.minutes:
            if "layerwise_eval" not in cfg.modes or "layer_best" in done:
                print(f"== {name}: done, skipped", flush=True)
                continue
            # a row measured before its recipe asked for the layer-wise probe: probe the trained run
            res = Runner(config_for(spec, args, os.path.join(args.out, name), "--mode=layerwise_eval"),
                         log=lambda *a: print(*a, flush=True)).run()
            summary["methods"][name] = dict(done, **layerwise_of(res))
        else:
            res = Runner(cfg, log=lambda *a: print(*a, flush=True)).run()
            summary["methods"][name] = dict(row_of(res, args.minutes, recipe_of(spec)),
                                            wall_minutes=round((time.perf_counter() - start) / 60, 2))
        with open(summary_path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(summary_path + ".tmp", summary_path)
        with open(os.path.join(args.out, "cifar10_methods.md"), "w") as f:
            f.write(markdown(summary))
        bar_plot(summary, os.path.join(args.out, "cifar10_methods.png"))
        print(f"== {name}: {json.dumps(summary['methods'][name])}", flush=True)
    print(markdown(summary))


if __name__ == "__main__":
    main()
