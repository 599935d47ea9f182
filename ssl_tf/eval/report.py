"""``ssl-tf report RUN_DIR...``: Markdown tables comparing runs, built from their results.json: one
row per run, then top-1 against the fraction of labels (the label-efficiency curve of CPC v2's
Fig. 1 and SimCLRv2's Table 1) for every run that measured more than its full-label probe."""
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
        "linear": _full_labels(results, "linear_eval"), "MLP": _full_labels(results, "mlp_eval"),
        "kNN": _top1(results, "knn", "top1"),
        "1% ft": _top1(ft, "1%", "top1"), "10% ft": _top1(ft, "10%", "top1"), "100% ft": _top1(ft, "100%", "top1"),
        "images/s": pre.get("train_images_per_sec"),
        "semi-sup. (EMA)": pre.get("ema_top1"), "distilled": _top1(results, "distill", "top1"),
        "machine": pre.get("machine") or _machine(results.get("machine")),
    }


def _full_labels(results, key):
    """A probe's top-1 with every label: its latest run records ``top1`` at whatever ``--label_fraction``
    it had, so a run probed at 100 % and then at 1 % would show the 1 % figure as its linear top-1; the
    fractions below 100 % belong to the label-efficiency table."""
    probe = results.get(key)
    if not isinstance(probe, dict):
        return None
    if "100%" in probe.get("by_fraction", {}):
        return probe["by_fraction"]["100%"]
    return probe.get("top1") if probe.get("label_fraction", 1.0) >= 1.0 else None


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


def _percent(key: str) -> float:
    return float(key.rstrip("%"))


def label_efficiency(results: dict) -> dict[str, dict[float, float]]:
    """{series: {percent of labels: top-1}} of one run: the linear and MLP probes at every
    --label_fraction they ran with, fine-tuning, the semi-supervised classifier (its EMA) and the
    distilled student."""
    cfg, pre = results.get("config", {}), results.get("pretrain", {})
    series = {}
    for key, name in (("linear_eval", "linear"), ("mlp_eval", "MLP")):
        probe = results.get(key, {})
        by = dict(probe.get("by_fraction", {}))
        if "top1" in probe and "label_fraction" in probe:
            by.setdefault(f"{100 * probe['label_fraction']:g}%", probe["top1"])
        series[name] = {_percent(k): v for k, v in by.items()}
    series["fine-tune"] = {_percent(k): v["top1"] for k, v in results.get("finetune", {}).items()}
    if pre.get("ema_top1") is not None:
        series[f"{cfg.get('method')} (EMA)"] = {100 * cfg.get("label_fraction", 1.0): pre["ema_top1"]}
    if "distill" in results and "label_fraction" in results["distill"]:
        series["distilled"] = {100 * results["distill"]["label_fraction"]: results["distill"]["top1"]}
    return {name: points for name, points in series.items() if points}


def label_efficiency_rows(paths) -> list[dict]:
    """One row per (run, series) measured at a label fraction below 100%: {run, series, points}."""
    rows = []
    for run in find_runs(paths):
        with open(os.path.join(run, "results.json")) as f:
            results = json.load(f)
        curves = label_efficiency(results)
        if not any(p < 100 for points in curves.values() for p in points):
            continue
        name = os.path.basename(os.path.normpath(run))
        rows += [{"run": name, "series": series, "points": points} for series, points in curves.items()]
    return rows


def label_efficiency_table(rows: list[dict]) -> str:
    """Top-1 (%) per run and series (rows) at each fraction of labels (columns); '–' where not measured."""
    fractions = sorted({p for r in rows for p in r["points"]})
    lines = ["| run | evaluation | " + " | ".join(f"{p:g}% labels" for p in fractions) + " |",
             "|" + "---|" * (2 + len(fractions))]
    for r in rows:
        cells = [f"{r['points'][p]:.2f}" if p in r["points"] else "–" for p in fractions]
        lines.append(f"| {r['run']} | {r['series']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_label_efficiency(rows: list[dict], path: str, log=print) -> str | None:
    """PNG of top-1 against the fraction of labels (log scale), one line per run and series; None
    without matplotlib (the ``plots`` extra) or without rows."""
    from ssl_tf.eval.plots import pyplot, save_top1_axes
    plt = pyplot(log) if rows else None
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for r in rows:
        xs = sorted(r["points"])
        ax.plot(xs, [r["points"][x] for x in xs], marker="o", label=f"{r['run']}: {r['series']}")
    ax.set_xscale("log")
    ax.set_xticks(sorted({p for r in rows for p in r["points"]}),
                  [f"{p:g}%" for p in sorted({p for r in rows for p in r["points"]})])
    return save_top1_axes(plt, fig, ax, path, "labelled training images", legend_size=6)


def report(paths) -> str:
    """The runs' table, and their label-efficiency table when any run has one."""
    table = markdown_table(load_rows(paths))
    curves = label_efficiency_rows(paths)
    return table + ("\n\nTop-1 against the fraction of labels:\n\n" + label_efficiency_table(curves) if curves
                    else "")
