"""From a pretrained run to "how good with 1% / 10% of the labels" on CIFAR-10, end to end:
fine-tuning at each label fraction, SimCLRv2 distillation of the last fine-tuned classifier
into a student, FixMatch from scratch and from the pretrained encoder, then the report table.

    python experiments/cifar10_label_fractions.py --run RUN_DIR --out OUT [--fixmatch_epochs 1]

RUN_DIR: a pretraining run on the CIFAR-10 training file (e.g. one of experiments/cifar10_methods.py);
its results.json config (data, backbone, width, evaluation split) is reused, so every number
uses the same held-out 10% of the training file. Results: OUT/<phase>/results.json and OUT/report.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from ssl_tf import backend  # noqa: E402  (first: oneDNN is chosen before TensorFlow loads)

backend.import_tensorflow()
from ssl_tf.config import Config  # noqa: E402
from ssl_tf.eval.report import report  # noqa: E402
from ssl_tf.runner import Runner  # noqa: E402


def run(cfg: dict, **overrides) -> tuple[dict, float]:
    start = time.perf_counter()
    res = Runner(Config(**{**cfg, **overrides}), log=lambda *a: print(*a, flush=True)).run()
    return res, round((time.perf_counter() - start) / 60, 2)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--fractions", default="0.01,0.1")
    p.add_argument("--ft_epochs", type=int, default=30)
    p.add_argument("--distill_epochs", type=int, default=1)
    p.add_argument("--fixmatch_epochs", type=int, default=1)
    args = p.parse_args()
    with open(os.path.join(args.run, "results.json")) as f:
        base = json.load(f)["config"]
    base.update(progress=False, random_baseline=False, plots=True)
    os.makedirs(args.out, exist_ok=True)
    ssl_dir = os.path.join(args.out, "pretrained")
    if not os.path.exists(ssl_dir):
        shutil.copytree(args.run, ssl_dir)       # fine-tuning results are added to a copy of the run
    summary = {"machine": backend.describe(backend.fingerprint(base.get("precision")))}
    for fraction in (float(x) for x in args.fractions.split(",")):
        res, minutes = run(base, mode="finetune", model_dir=ssl_dir, label_fraction=fraction,
                           ft_epochs=args.ft_epochs)
        key = f"{100 * fraction:g}%"
        summary[f"finetune {key}"] = {"top1": res["finetune"][key]["top1"], "minutes": minutes}
    res, minutes = run(base, mode="distill", model_dir=ssl_dir, label_fraction=fraction,
                       distill_epochs=args.distill_epochs)
    summary["distill"] = {"top1": res["distill"]["top1"], "teacher_top1": res["distill"]["teacher_top1"],
                          "minutes": minutes}
    semi = {k: v for k, v in base.items() if k not in ("optimizer", "learning_rate", "lr_scaling", "weight_decay",
                                                        "warmup_epochs", "batch_size", "crop_min_scale")}
    for name, init in (("fixmatch_scratch", None), ("fixmatch_from_ssl", ssl_dir)):
        res, minutes = run(semi, method="fixmatch", mode="pretrain", model_dir=os.path.join(args.out, name),
                           label_fraction=fraction, epochs=args.fixmatch_epochs, init_from=init)
        summary[name] = {"top1": res["pretrain"]["top1"], "ema_top1": res["pretrain"]["ema_top1"],
                         "images_per_sec": res["pretrain"]["train_images_per_sec"], "minutes": minutes}
    table = report([ssl_dir, os.path.join(args.out, "fixmatch_scratch"), os.path.join(args.out, "fixmatch_from_ssl")])
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(table)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
