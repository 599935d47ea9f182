"""SimCLR on the CIFAR-10 training file for a time or epoch budget; linear probe + kNN; throughput.

    python experiments/simclr_cifar10_budget.py --minutes 30            # --train_minutes: cosine over the budget
    python experiments/simclr_cifar10_budget.py --epochs 1 --width 0.25
    python experiments/simclr_cifar10_budget.py --eval_npz test.npz     # evaluate on another file
    python experiments/simclr_cifar10_budget.py --minutes 30 --precision mixed_bfloat16

Evaluation set: a stratified, seeded 10% of the training file unless --eval_npz is given.
Reports train-step images/s, augmentation-pipeline images/s alone, peak RSS, linear and kNN top-1
(trained and random-init backbone) and writes everything to <model_dir>/results.json.
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
from ssl_tf.runner import Runner, results_table  # noqa: E402


def augmentation_images_per_sec(runner: Runner, batches: int = 30) -> float:
    from ssl_tf.data import pipeline, views
    fn = views.views_for("two_views", runner.augment_config())
    it = iter(pipeline.train_stream(runner.data.train, fn, global_batch=runner.cfg.batch_size, seed=0))
    next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * runner.cfg.batch_size / (time.perf_counter() - start)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--npz", default=os.path.join(here, "..", "..", "shared", "data", "cifar10", "train.npz"))
    p.add_argument("--eval_npz", default=None)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--minutes", type=float)
    budget.add_argument("--epochs", type=int)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--learning_rate", type=float, default=1.0)
    # 0.2, not the CIFAR reference's 0.5: for short training a lower temperature learns faster
    # (SimCLR Table 5: T 0.1 > 0.5 > 1.0 at 100 epochs); solo-learn's CIFAR SimCLR uses 0.2.
    # Measured: 57.34 % linear in a 30-minute budget (benchmarks/simclr_cifar10_budget.md).
    p.add_argument("--temperature", type=float, default=0.2)
    p.add_argument("--precision", default="float32", help="float32 or mixed_bfloat16 (backbone compute type)")
    p.add_argument("--model_dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    base = dict(dataset=f"npz:{args.npz}", eval_dataset=f"npz:{args.eval_npz}" if args.eval_npz else None,
                width=args.width, batch_size=args.batch_size, learning_rate=args.learning_rate,
                temperature=args.temperature, weight_decay=1e-4, proj_layers=3, seed=args.seed, progress=False,
                precision=args.precision)
    # A time budget: --train_minutes sizes the cosine schedule to the steps that fit, measured while
    # training (5 epochs is only its first guess); the warm-up is half an epoch.
    epochs = args.epochs or 5
    warmup = min(10, epochs / 10) if args.epochs else 0.5
    runner = Runner(Config(mode="pretrain,linear_eval,knn", epochs=epochs, warmup_epochs=warmup,
                           train_minutes=args.minutes, model_dir=args.model_dir, **base))
    aug = augmentation_images_per_sec(runner)
    start = time.perf_counter()
    results = runner.run()
    results["benchmark"] = {"augmentation_images_per_sec": round(aug, 1),
                            "wall_minutes": round((time.perf_counter() - start) / 60, 2),
                            "epochs": results["pretrain"]["epochs"],
                            "machine": backend.describe(runner.machine)}
    with open(runner.results_path, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print(results_table(results))
    print(json.dumps(results["benchmark"]), f"peak_rss_mb={results['pretrain']['peak_rss_mb']}")


if __name__ == "__main__":
    main()
