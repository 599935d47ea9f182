"""``ssl-tf report RUN_DIR...``: one Markdown table comparing runs, built from their results.json."""
from __future__ import annotations

import json
import os

from ssl_tf import backend
from ssl_tf.errors import SSLTFError

COLUMNS = ("run", "method", "backbone", "epochs", "batch", "linear", "MLP", "kNN", "1% ft", "10% ft", "images/s")
OPTIONAL = ("100% ft", "semi-sup. (EMA)", "distilled")
TRAILING = ("machine",)   # where the images/s were measured; runs from before the fingerprint have none
ACCURACY = ("linear", "MLP", "kNN", "1% ft", "10% ft") + OPTIONAL


def find_runs(paths) -> list[str]:
    """Run directories: each path holding results.json, else its subdirectories that do (sorted)."""
    runs = []
    for path in paths:
        if os.path.isfile(os.path.join(path, "results.json")):
            runs.append(path)
            continue
        if not os.path.isdir(path):
            raise SSLTFError(f"report: {path}: no such directory (pass run directories holding results.json)")
        found = sorted(os.path.join(path, d) for d in os.listdir(path)
                       if os.path.isfile(os.path.join(path, d, "results.json")))
        if not found:
            raise SSLTFError(f"report: {path}: holds no results.json, nor do its subdirectories")
        runs += found
    return runs


def _top1(results, *keys):
    node = results
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def run_row(name: str, results: dict) -> dict:
    cfg = results.get("config", {})
    pre = results.get("pretrain", {})
    ft = results.get("finetune", {})
    return {
        "run": name, "method": cfg.get("method"), "backbone": f"{cfg.get('backbone')}×{cfg.get('width')}",
        "epochs": pre.get("epochs", cfg.get("epochs")), "batch": cfg.get("batch_size"),
        "linear": _top1(results, "linear_eval", "top1"), "MLP": _top1(results, "mlp_eval", "top1"),
        "kNN": _top1(results, "knn", "top1"),
        "1% ft": _top1(ft, "1%", "top1"), "10% ft": _top1(ft, "10%", "top1"), "100% ft": _top1(ft, "100%", "top1"),
        "images/s": pre.get("train_images_per_sec"),
        "semi-sup. (EMA)": pre.get("ema_top1"), "distilled": _top1(results, "distill", "top1"),
        "machine": pre.get("machine") or _machine(results.get("machine")),
    }


def _machine(fingerprint) -> str | None:
    return backend.describe(fingerprint) if isinstance(fingerprint, dict) else None


def load_rows(paths) -> list[dict]:
    rows = []
    for run in find_runs(paths):
        try:
            with open(os.path.join(run, "results.json")) as f:
                results = json.load(f)
        except (OSError, ValueError) as e:
            raise SSLTFError(f"report: {run}/results.json: unreadable ({e})") from None
        rows.append(run_row(os.path.basename(os.path.normpath(run)), results))
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Top-1 columns in %, '–' where a run did not measure it; optional columns only when used."""
    def used(names):
        return [c for c in names if any(r.get(c) is not None for r in rows)]
    columns = list(COLUMNS[:-1]) + used(OPTIONAL) + [COLUMNS[-1]] + used(TRAILING)

    def cell(value, column):
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.2f}" if column in ACCURACY else f"{value:g}"
        return str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c), c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def report(paths) -> str:
    return markdown_table(load_rows(paths))
