"""Every method on the CIFAR-10 training file under one budget: linear probe, kNN, images/s, peak
memory, and the layer-wise table of the revisiting paper.

    python experiments/cifar10_methods.py --epochs 1                     # every method, 1 epoch each
    python experiments/cifar10_methods.py --epochs 1 --methods moco,byol,dino
    python experiments/cifar10_methods.py --epochs 1 --layerwise resnet18,vgg19 --methods rotation

Budget: the same number of epochs over the same 45,000 training images for every method,
each with its own views (SimCLR and the two-view methods 2, DINO 2 global + --local_crops
local, NPID 1, rotation 4, patch tasks 9 patches of 16 px, exemplar --exemplar_copies,
colorization 1), its paper's optimiser and a cosine schedule with 10% warmup; heads are
shrunk for the ×0.25 backbone as listed in CIFAR_HEADS (the papers' ImageNet sizes — 4096 to
8192 wide — would cost more than the backbone). Wall time per method is reported next to the
accuracies. Evaluation: a stratified,
seeded 10% of the training file (or --eval_npz). Layer-wise runs train rotation on each
listed backbone (resnet18 reuses the rotation run above) and probe every layer, with
--layerwise_label_fraction of the training labels
(9000-feature layers of 45k images would not fit in memory). Results: <out>/cifar10_methods.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssl_tf import backend  # noqa: E402  (first: oneDNN is chosen before TensorFlow loads)

backend.import_tensorflow()
from ssl_tf.config import Config  # noqa: E402
from ssl_tf.runner import Runner  # noqa: E402

SIMCLR = dict(optimizer="lars", learning_rate=1.0, temperature=0.5, weight_decay=1e-4, proj_layers=3)
# Heads for a ×0.25 ResNet-18 (128 features) at 32 px; queue and bank sized to CIFAR's 45k images.
CIFAR_HEADS = {
    "moco": dict(queue_size=4096),
    "moco_v3": dict(proj_hidden=1024, proj_dim=256, pred_hidden=1024),
    "byol": dict(proj_hidden=1024, proj_dim=256, pred_hidden=1024),
    "simsiam": dict(proj_hidden=512, proj_dim=512, pred_hidden=128),
    "dino": dict(dino_out_dim=4096),
    "barlow_twins": dict(proj_hidden=1024, proj_dim=1024),
    "vicreg": dict(proj_hidden=1024, proj_dim=1024),
}


def run(name, out_dir, base, extra, modes="pretrain,linear_eval,knn"):
    model_dir = os.path.join(out_dir, name)
    start = time.perf_counter()
    runner = Runner(Config(mode=modes, model_dir=model_dir, **{**base, **extra}), log=lambda *a: print(*a, flush=True))
    res = runner.run()
    res["wall_minutes"] = round((time.perf_counter() - start) / 60, 2)
    return res


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", default=os.path.join(here, "..", "..", "shared", "data", "cifar10", "train.npz"))
    p.add_argument("--eval_npz", default=None)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--methods", default="simclr,moco,moco_v3,byol,simsiam,dino,npid,barlow_twins,vicreg,rotation,"
                                        "relative_patch_location,jigsaw,colorization,exemplar")
    p.add_argument("--local_crops", type=int, default=6, help="DINO's local crops per image")
    p.add_argument("--layerwise", default="", help="backbones for the layer-wise rotation runs, e.g. resnet18,vgg19")
    p.add_argument("--layerwise_label_fraction", type=float, default=0.1)
    p.add_argument("--label_fraction", type=float, default=1.0,
                   help="labels the probes (and s4l_rotation / s4l_exemplar) may use, e.g. 0.1")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--exemplar_copies", type=int, default=4)
    p.add_argument("--out", default="runs/cifar10_methods")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    summary_path = os.path.join(args.out, "cifar10_methods.json")
    summary = json.load(open(summary_path)) if os.path.exists(summary_path) else {"methods": {}, "layerwise": {}}
    base = dict(dataset=f"npz:{args.npz}", eval_dataset=f"npz:{args.eval_npz}" if args.eval_npz else None,
                width=args.width, epochs=args.epochs, warmup_epochs=0.1 * args.epochs, seed=args.seed,
                progress=False, eval_epochs=50, label_fraction=args.label_fraction)
    for i, method in enumerate(m for m in args.methods.split(",") if m):
        extra = dict(method=method, batch_size=args.batch_size, random_baseline=(i == 0 or method == "colorization"))
        if method == "simclr":
            extra.update(SIMCLR)
        extra.update(CIFAR_HEADS.get(method, {}))
        if method == "dino":
            extra.update(num_local_crops=args.local_crops)
        if method == "exemplar":
            extra.update(num_exemplar_copies=args.exemplar_copies,
                         batch_size=args.batch_size // args.exemplar_copies * 2)
        res = run(method, args.out, base, extra)
        row = {"linear_top1": res["linear_eval"]["top1"], "knn_top1": res["knn"]["top1"],
               "train_images_per_sec": res["pretrain"]["train_images_per_sec"], "steps": res["pretrain"]["steps"],
               "batch": res["pretrain"]["global_batch"], "train_seconds": res["pretrain"]["seconds"],
               "wall_minutes": res["wall_minutes"], "peak_rss_mb": res["pretrain"]["peak_rss_mb"],
               "machine": res["pretrain"].get("machine")}
        for key in ("linear_eval", "knn"):
            if "random_init_top1" in res[key]:
                row[f"{key}_random_init"] = res[key]["random_init_top1"]
        summary["methods"][method] = row
        json.dump(summary, open(summary_path, "w"), indent=2)
        print(f"== {method}: {json.dumps(row)}", flush=True)
    for backbone in (b for b in args.layerwise.split(",") if b):
        extra = dict(method="rotation", backbone=backbone, batch_size=args.batch_size, random_baseline=False,
                     label_fraction=args.layerwise_label_fraction)
        if backbone == "resnet18" and os.path.isdir(os.path.join(args.out, "rotation", "pretrain")):
            # the rotation run above already trained this backbone: probe its layers
            res = run("rotation", args.out, base, extra, modes="layerwise_eval")
        else:
            res = run(f"layerwise_rotation_{backbone}", args.out, base, extra, modes="pretrain,layerwise_eval")
        summary["layerwise"][backbone] = {"layers": res["layerwise_eval"]["layers"],
                                          "plot": res["layerwise_eval"]["plot"],
                                          "wall_minutes": res["wall_minutes"]}
        json.dump(summary, open(summary_path, "w"), indent=2)
        print(f"== layerwise {backbone}: "
              + ", ".join(f"{r['layer']} {r['top1']}" for r in res["layerwise_eval"]["layers"]),
              flush=True)
    if len(summary["layerwise"]) > 1:
        from ssl_tf.eval import plot_layerwise
        (first, rows), *rest = summary["layerwise"].items()
        plot_layerwise(rows["layers"], os.path.join(args.out, "layerwise.png"), title=first,
                       others={b: r["layers"] for b, r in rest})
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
