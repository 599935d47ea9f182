"""--mode=linear_eval, knn, layerwise_eval: the frozen encoder (and a random-init one for contrast)
on the labelled train subset, scored on the evaluation set."""
from __future__ import annotations

import os

from ssl_tf import eval as eval_lib
from ssl_tf.errors import SSLTFError
from ssl_tf.models import representation_layers
from ssl_tf.runner import results


def linear_eval(runner) -> dict:
    """The offline probe (--eval_head linear|mlp); results under linear_eval / mlp_eval."""
    c = runner.cfg
    out = {"head": c.eval_head, "epochs": c.eval_epochs, "augment": c.probe_augment,
           "label_fraction": c.label_fraction}
    for key, make in runner.encoders_to_evaluate():
        if c.probe_augment:
            train, test = runner.eval_sets("linear_eval")
            res = eval_lib.augmented_probe(make(), train, test, runner.data.num_classes, image_size=c.image_size,
                                           head=c.eval_head, epochs=c.eval_epochs, batch_size=c.eval_batch_size,
                                           learning_rate=c.probe_lr, seed=c.seed, crop_scale=(c.crop_min_scale, 1.0))
            sizes = dict(num_train=len(train), num_eval=len(test))
        else:
            (trx, try_), (tex, tey) = runner.features(key, make, "linear_eval")
            res = eval_lib.probe(trx, try_, tex, tey, runner.data.num_classes, head=c.eval_head,
                                 epochs=c.eval_epochs, batch_size=c.eval_batch_size, learning_rate=c.probe_lr,
                                 seed=c.seed)
            sizes = dict(num_train=len(trx), num_eval=len(tex))
        out[key] = round(res["top1"], 2)
        if key == "top1":
            out["train_top1"] = round(res["train_top1"], 2)
            out.update(sizes)
    # every label fraction this run was probed at, for the label-efficiency table and plot
    earlier = runner.results.get(f"{c.eval_head}_eval", {}).get("by_fraction", {})
    out["by_fraction"] = {**earlier, f"{100 * c.label_fraction:g}%": out["top1"]}
    runner.results[f"{c.eval_head}_eval"] = out
    results.save(runner)
    return out


def knn(runner) -> dict:
    c = runner.cfg
    out = {"k": c.knn_k, "temperature": c.knn_temperature}
    for key, make in runner.encoders_to_evaluate():
        (trx, try_), (tex, tey) = runner.features(key, make, "knn")
        out[key] = round(eval_lib.knn_top1(trx, try_, tex, tey, runner.data.num_classes, c.knn_k,
                                           c.knn_temperature), 2)
    runner.results["knn"] = out
    results.save(runner)
    return out


def layerwise_eval(runner) -> dict:
    """A probe on every representation layer of the frozen backbone (revisiting paper, Fig. 4), and
    with --random_baseline the same layers of a random-init backbone: a pretext task has learned
    something where its best layer beats the random backbone's same layer."""
    c = runner.cfg
    train, test = runner.eval_sets("layerwise_eval")
    if not representation_layers(runner.encoder()):
        raise SSLTFError(f"--mode=layerwise_eval: the --method={c.method} encoder ({runner.encoder().name}) has no "
                         "named representation layers to probe; use linear_eval or knn")
    runs = {key: eval_lib.layerwise(make(), train, test, runner.data.num_classes, image_size=c.image_size,
                                    max_features=c.layerwise_features, head=c.eval_head, epochs=c.eval_epochs,
                                    batch_size=c.eval_batch_size, seed=c.seed, log=runner.log)
            for key, make in runner.encoders_to_evaluate()}
    rows, random_rows = runs["top1"], runs.get("random_init_top1")
    for row, base in zip(rows, random_rows or ()):
        row["random_init_top1"] = base["top1"]
    best = max(rows, key=lambda row: row["top1"])
    plot = eval_lib.plot_layerwise(rows, os.path.join(c.model_dir, "layerwise.png"),
                                   title=f"{c.method} · {c.backbone}×{c.width} · {c.eval_head} probe",
                                   baseline=random_rows, log=runner.log)
    out = {"head": c.eval_head, "epochs": c.eval_epochs, "max_features": c.layerwise_features,
           "layers": rows, "best": {k: best[k] for k in ("layer", "top1", "random_init_top1") if k in best},
           "plot": plot}
    runner.log(eval_lib.layerwise_table(rows))
    runner.results["layerwise_eval"] = out
    results.save(runner)
    return out
