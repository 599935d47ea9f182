"""--mode=report: a Markdown table of --report_runs (default: this model_dir, or its subdirectories)."""
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
    runner.results["report"] = {"path": path, "runs": paths}
    return table
