"""--mode=report: the Markdown tables of --report_runs (default: this model_dir, or its
subdirectories) in <model_dir>/report.md, and their label-efficiency plot in
<model_dir>/label_efficiency.png when any run was evaluated below 100% of the labels."""
from __future__ import annotations

import os

from ssl_tf import eval as eval_lib


def run(runner) -> str:
    c = runner.cfg
    paths = [p for p in (c.report_runs or "").split(",") if p] or [c.model_dir]
    table = eval_lib.report(paths)
    path = os.path.join(c.model_dir, "report.md")
    with open(path, "w") as f:
        f.write(table + "\n")
    runner.log(table)
    plot = eval_lib.plot_label_efficiency(eval_lib.label_efficiency_rows(paths),
                                          os.path.join(c.model_dir, "label_efficiency.png"), log=runner.log) \
        if c.plots else None
    runner.results["report"] = {"path": path, "runs": paths, "label_efficiency_plot": plot}
    return table
