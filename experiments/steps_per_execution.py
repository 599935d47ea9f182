"""A performance lever: does running several train steps per call (Keras's ``steps_per_execution``)
speed up ssl_tf's loop on a CPU?

    python experiments/steps_per_execution.py                       # SimCLR, ResNet-18 x0.25, batch 256
    python experiments/steps_per_execution.py --width 0.125 --batch 64 --k 10 --rounds 3

Both variants read the real input pipeline (augmentation running alongside, as in training)
and run the method's own ``train_step`` under the runner's strategy:

  per step   the runner's loop: one call per step, its logs read back to Python each step
             (what the loop does for NaN checks, logging, checkpoints and the progress bar)
  k per call one ``tf.function`` running ``--k`` steps in a ``tf.range`` loop, logs read once

It prints the seconds per step of each, alternated over ``--rounds``, and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from throughput import _tf_setup  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="simclr")
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--k", type=int, default=10, help="steps per call of the fused variant")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--overrides", default="{}",
                   help="JSON of Config fields, e.g. '{\"precision\": \"mixed_bfloat16\"}'")
    p.add_argument("--threads", default="")
    args = p.parse_args()
    args.jit = "auto"
    tf, runner, data, METHODS = _tf_setup(args)
    from ssl_tf import backend
    print(f"machine: {backend.describe(runner.machine)}", flush=True)
    from ssl_tf import optim
    cfg, augment, strategy = runner.model_cfg, runner.augment_config(), runner.strategy
    with strategy.scope():
        model = METHODS[cfg.method].from_config(cfg, runner.build_encoder(), 10, num_examples=len(data))
        model.set_schedule(100, 1000)
        sample = next(iter(model.input_stream(data, augment, global_batch=args.batch, seed=0)))
        model.build_with(sample, optim.build_optimizer(cfg.optimizer, 0.1, cfg.weight_decay, cfg.momentum),
                         fixed_optimizer=optim.build_optimizer(cfg.optimizer, 0.1, cfg.weight_decay, cfg.momentum))
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: model.input_stream(data, augment, global_batch=args.batch, seed=0, input_context=ctx))
    iterator = iter(dataset)
    replica_step = tf.function(model.train_step)

    @tf.function
    def one_step(batch):
        logs = strategy.run(replica_step, args=(batch,))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    @tf.function
    def k_steps(it):
        logs = one_step(next(it))
        for _ in tf.range(args.k - 1):
            logs = one_step(next(it))
        return logs

    def per_step():
        t0 = time.perf_counter()
        for _ in range(args.k):
            {k: float(v) for k, v in one_step(next(iterator)).items()}
        return (time.perf_counter() - t0) / args.k

    def fused():
        t0 = time.perf_counter()
        {k: float(v) for k, v in k_steps(iterator).items()}
        return (time.perf_counter() - t0) / args.k

    per_step(), fused()   # trace both, warm the pipeline
    rows = {"per step": [], f"{args.k} per call": []}
    for _ in range(args.rounds):
        rows["per step"].append(per_step())
        rows[f"{args.k} per call"].append(fused())
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(json.dumps({"method": cfg.method, "width": args.width, "batch": args.batch, "k": args.k,
                      "seconds_per_step": rows}))
    print(f"| variant | s/step (median of {args.rounds} x {args.k} steps) | images/s |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.4f} | {args.batch / v:.1f} |")
    print(f"fused / per step time: {med[f'{args.k} per call'] / med['per step']:.3f}")


if __name__ == "__main__":
    main()
