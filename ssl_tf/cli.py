"""``ssl-tf``: the absl command line. The only module that reads FLAGS.

Every flag is generated: from a shared ``Config`` field, or from a parameter a method declares in
its ``Params`` (same name, type, help and choices; one flag for a name several methods declare,
such as ``--temperature``, whose default is then each method's own). The flags, the typed settings
and docs/flags.md cannot drift apart. Flags become a ``Config`` at once; mistakes end as one line
``ssl-tf: error: …`` and exit status 2.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import typing

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # keep TensorFlow's C++ start-up chatter off the console

from absl import app, flags  # noqa: E402

from ssl_tf.config import Config  # noqa: E402
from ssl_tf.errors import SSLTFError  # noqa: E402

FLAGS = flags.FLAGS


def _base_type(tp):
    if typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _define(name, tp, default, help_, choices, flag_values):
    if choices:
        flags.DEFINE_enum(name, default, list(choices), help_, flag_values=flag_values)
    elif tp is bool:
        flags.DEFINE_boolean(name, default, help_, flag_values=flag_values)
    elif tp is int:
        flags.DEFINE_integer(name, default, help_, flag_values=flag_values)
    elif tp is float:
        flags.DEFINE_float(name, default, help_, flag_values=flag_values)
    else:
        flags.DEFINE_string(name, default, help_, flag_values=flag_values)


def method_flag_specs() -> dict:
    """{flag: (type, help, choices)} of every registered method's parameters. A name several methods
    declare is one flag (default: each method's own), which must have one type everywhere."""
    from ssl_tf.methods import settings  # importing the package fills the registry
    specs = {}
    for name, declared in settings.param_fields().items():
        types = {tp for _, _, tp in declared}
        if len(types) > 1:
            raise TypeError(f"--{name}: declared with different types by {[m for m, _, _ in declared]}")
        helps = list(dict.fromkeys(f.metadata["help"] for _, f, _ in declared))
        defaults = ", ".join(f"{m} {'auto' if f.default is None else f.default}" for m, f, _ in declared)
        choices = next((f.metadata.get("choices") for _, f, _ in declared if f.metadata.get("choices")), None)
        help_ = f"{helps[0] if len(helps) == 1 else ' | '.join(helps)} [{defaults}]"
        specs[name] = (types.pop(), help_, choices)
    return specs


def define_flags(flag_values=FLAGS):
    hints = typing.get_type_hints(Config)
    from ssl_tf.methods import METHODS
    for f in dataclasses.fields(Config):
        if not f.metadata.get("flag", True):
            continue
        choices = tuple(METHODS) if f.name == "method" else f.metadata.get("choices")
        _define(f.name, _base_type(hints[f.name]), f.default, f.metadata["help"], choices, flag_values)
    for name, (tp, help_, choices) in method_flag_specs().items():
        _define(name, tp, None, help_, choices, flag_values)   # None: the chosen method's default


def config_from_flags(flag_values=FLAGS) -> Config:
    shared = {f.name: flag_values[f.name].value for f in dataclasses.fields(Config) if f.metadata.get("flag", True)}
    method_args = {name: flag_values[name].value for name in method_flag_specs()
                   if flag_values[name].value is not None}
    return Config(**shared, method_args=method_args)


def main(argv, flag_values=FLAGS):
    from ssl_tf import backend
    tf = backend.import_tensorflow()   # oneDNN chosen, CPU-only start-up notices filtered
    if len(argv) > 1 and argv[1] == "report":
        from ssl_tf.eval.report import report
        if len(argv) < 3:
            raise SSLTFError("report: pass one or more run directories: ssl-tf report RUN_DIR [RUN_DIR ...]")
        print(report(argv[2:]))
        return
    if len(argv) > 1:
        raise SSLTFError(f"unexpected arguments {argv[1:]}; every option is a --flag (see ssl-tf --help)")
    cfg = config_from_flags(flag_values)
    if cfg.mode.strip() == "report":
        from ssl_tf.eval.report import label_efficiency_rows, plot_label_efficiency, report
        runs = [p for p in (cfg.report_runs or "").split(",") if p] or [cfg.model_dir or "runs"]
        print(report(runs))
        if cfg.report_runs and cfg.model_dir and cfg.plots:   # the curve goes next to the runs asked for
            os.makedirs(cfg.model_dir, exist_ok=True)
            plot = plot_label_efficiency(label_efficiency_rows(runs), os.path.join(cfg.model_dir,
                                                                                   "label_efficiency.png"))
            if plot:
                print(f"label-efficiency plot: {plot}")
        return
    from absl import logging
    logging.set_verbosity(logging.WARNING)
    tf.get_logger().setLevel("ERROR")
    from ssl_tf.runner import Runner, results_table  # imports TensorFlow
    runner = Runner(cfg)
    print(f"ssl-tf: {runner.cfg.method} on {runner.data.train.name} ({len(runner.data.train)} train, "
          f"{len(runner.data.eval) if runner.data.eval is not None else 0} eval), "
          f"{runner.cfg.backbone}×{runner.cfg.width}, {runner.replicas} replica(s); steps: "
          f"{','.join(runner.cfg.modes)}; model_dir: {runner.cfg.model_dir}\n"
          f"machine: {backend.describe(runner.machine)}", flush=True)
    results = runner.run()
    where = runner.results_path if runner.is_chief else f"{runner.results_path}, written by the chief"
    print(f"\nResults (also in {where}):\n" + results_table(results), flush=True)


def _main_with_errors(argv, flag_values=FLAGS):
    try:
        main(argv, flag_values)
    except SSLTFError as e:
        print(f"ssl-tf: error: {e}", file=sys.stderr)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001 — TensorFlow runtime failures the user can act on
        kind, text = type(e).__name__, str(e)
        if "No space left on device" in text or getattr(e, "errno", None) == 28:
            from ssl_tf.checkpoints import describe_write_error
            print(f"ssl-tf: error: {describe_write_error(e)}", file=sys.stderr)
            sys.exit(2)
        if kind == "ResourceExhaustedError":
            print(f"ssl-tf: error: out of memory ({text.splitlines()[0][:300]}); lower --batch_size, "
                  "--width or --image_size", file=sys.stderr)
            sys.exit(2)
        raise   # a bug of ours: the traceback is what a report needs


def parse_or_exit(argv: list[str], flag_values=FLAGS) -> list[str]:
    """Parse ``argv`` into ``flag_values``; a mistake (unknown flag or --method, a value that does not
    parse) ends as one line ``ssl-tf: error: …`` with absl's "did you mean" hint, and exit status 2."""
    try:
        return flag_values(argv)
    except flags.Error as e:
        print("ssl-tf: error: " + " ".join(str(e).split()), file=sys.stderr)
        sys.exit(2)


def run():
    """Console-script entry point."""
    from ssl_tf import backend
    backend.import_tensorflow()   # before the methods' modules (their flags) load it unfiltered
    define_flags()
    app.define_help_flags()       # --help, --helpfull: absl's, printed while parsing
    parse_or_exit(sys.argv)       # absl would print a multi-line FATAL block and exit 1
    app.run(_main_with_errors)


if __name__ == "__main__":
    run()
