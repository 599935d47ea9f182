"""A run's record: results.json (written atomically by the chief), the closing table, the plots."""
from __future__ import annotations

import json
import os
import platform
import resource

import numpy as np

from ssl_tf import config as config_lib
from ssl_tf.errors import SSLTFError


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def versions() -> dict:
    import keras
    import tensorflow as tf

    import ssl_tf
    return {"ssl_tf": ssl_tf.__version__, "tensorflow": tf.__version__, "keras": keras.__version__,
            "python": platform.python_version(), "numpy": np.__version__}


def load(path: str) -> dict:
    """A run's results.json ({} when there is none yet)."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise SSLTFError(f"{path}: not readable as JSON ({type(e).__name__}: {str(e)[:120]}); it is only the run's "
                         "record (the checkpoints hold the model): move it away and run again") from None
    if not isinstance(data, dict):
        raise SSLTFError(f"{path}: holds a {type(data).__name__}, not a run's record; move it away and run again")
    return data


def save(runner) -> None:
    """Write ``runner.results`` with the settings, versions, machine and data to results.json."""
    if not runner.is_chief:   # multi-worker: the chief writes the run's files
        return
    data = runner.data
    runner.results.update(config=config_lib.to_dict(runner.cfg), versions=versions(), machine=runner.machine,
                          data={"train": data.train.name, "num_train": len(data.train),
                                "eval": data.eval.name if data.eval is not None else None,
                                "num_eval": len(data.eval) if data.eval is not None else 0,
                                "num_classes": data.num_classes,
                                "num_labelled": int(len(runner.labelled_idx)),
                                "skipped_bad_images": data.train.skipped +
                                (data.eval.skipped if data.eval is not None else 0)})
    tmp = runner.results_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(runner.results, f, indent=2, sort_keys=True)
    os.replace(tmp, runner.results_path)


def plots(runner) -> list[str]:
    """PNGs in <model_dir>/plots: the training curves of every phase that trained, and, when this
    process extracted evaluation features, the 2-D embedding maps and a retrieval grid."""
    from ssl_tf import eval as eval_lib
    from ssl_tf.data import pipeline
    c, results = runner.cfg, runner.results
    out_dir = os.path.join(c.model_dir, "plots")
    os.makedirs(out_dir, exist_ok=True)
    written = []
    title = f"{c.method} · {c.backbone}×{c.width}"
    phases = {"pretrain": results.get("pretrain"), "distill": results.get("distill"),
              **{f"finetune_{k[:-1]}pct": v for k, v in results.get("finetune", {}).items()}}
    for tag, summary in phases.items():
        if summary and summary.get("history"):
            path = eval_lib.plots.training_curves(summary["history"], os.path.join(out_dir, f"curves_{tag}.png"),
                                                  f"{title} · {tag}", log=runner.log)
            written += [path] if path else []
    if "top1" in runner.feature_cache:
        _, (feats, labels) = runner.feature_cache["top1"]
        written += eval_lib.plots.embedding_maps(feats, labels, os.path.join(out_dir, "embedding"), title,
                                                 seed=c.seed, log=runner.log)
        n = min(len(labels), 1000)
        images = np.concatenate([x.numpy() for x, _ in pipeline.eval_batches(
            runner.data.eval.subset(np.arange(n)), c.image_size, c.eval_batch_size)])
        written.append(eval_lib.plots.retrieval_grid(images, feats[:n], labels[:n],
                                                     os.path.join(out_dir, "retrieval.png")))
    results["plots"] = written
    return written


def results_table(results: dict) -> str:
    """The short human summary printed at the end of a run."""
    rows = []
    if "pretrain" in results:
        p = results["pretrain"]
        rows.append(("pretrain steps / epochs", f"{p['steps']} / {p['epochs']}"))
        rows.append(("train images/s", f"{p['train_images_per_sec']}"))
        if "probe_acc" in p.get("final", {}):
            rows.append(("online probe top-1 (train views, last step)", f"{100 * p['final']['probe_acc']:.2f}"))
        if "ema_top1" in p:
            rows.append(("classifier top-1 / EMA classifier top-1", f"{p['top1']:.2f} / {p['ema_top1']:.2f}"))
    for key in ("linear_eval", "mlp_eval"):
        if key in results:
            r = results[key]
            rows.append((f"{r['head']} probe top-1", f"{r['top1']:.2f}"))
            if "random_init_top1" in r:
                rows.append((f"{r['head']} probe top-1, random-init backbone", f"{r['random_init_top1']:.2f}"))
    if "knn" in results:
        r = results["knn"]
        rows.append((f"kNN top-1 (k={r['k']}, T={r['temperature']})", f"{r['top1']:.2f}"))
        if "random_init_top1" in r:
            rows.append(("kNN top-1, random-init backbone", f"{r['random_init_top1']:.2f}"))
    if "layerwise_eval" in results:
        r = results["layerwise_eval"]
        best = max(r["layers"], key=lambda row: row["top1"])
        random = f", random-init {best['random_init_top1']:.2f}" if "random_init_top1" in best else ""
        rows.append((f"layer-wise {r['head']} probe: best layer", f"{best['layer']} ({best['top1']:.2f}{random})"))
    for fraction, r in results.get("finetune", {}).items():
        rows.append((f"fine-tune top-1 ({fraction} labels)", f"{r['top1']:.2f}"))
    if "distill" in results:
        r = results["distill"]
        rows.append((f"distilled student {r['student']} top-1 (teacher)", f"{r['top1']:.2f} ({r['teacher_top1']:.2f})"))
    if results.get("plots"):
        rows.append(("plots", f"{len(results['plots'])} PNG in {os.path.dirname(results['plots'][0])}"))
    if "export" in results:
        rows.append(("SavedModel", results["export"]["path"]))
    if "seconds_by_step" in results:   # where the time went
        secs = results["seconds_by_step"]
        rows.append(("seconds (" + ", ".join(k for k in secs if k != "total") + ")",
                     " + ".join(f"{v:g}" for k, v in secs.items() if k != "total") + f" = {secs['total']:g}"))
    width = max((len(a) for a, _ in rows), default=10)
    return "\n".join(f"  {a:<{width}}  {b}" for a, b in rows)
