import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ssl_tf  # noqa: E402,F401  (before TensorFlow: the suite runs on the backend users get, oneDNN on)

# isort: split
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from ssl_tf.distribute import split_cpu  # noqa: E402

# Two logical CPU devices for the MirroredStrategy tests; must happen before TF initialises.
split_cpu(2)
tf.get_logger().setLevel("ERROR")


def run_cli(*args, cwd=None, timeout=600):
    """Run ``ssl-tf`` in a fresh process; return the CompletedProcess."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "ssl_tf.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def cli_in_process(capsys):
    """``ssl-tf`` as ``cli.run`` runs it (flags defined, parsed, the run with its one-line errors), in this
    process on fresh flags: (exit status, stdout, stderr). For what fails before training starts, where
    a fresh process would only add TensorFlow's start-up."""
    from absl import flags

    from ssl_tf import cli

    def run(*args):
        fv = flags.FlagValues()
        cli.define_flags(fv)
        code = 0
        try:
            rest = cli.parse_or_exit(["ssl-tf", *args], fv)
            cli._main_with_errors(rest, fv)
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests first: with two processes (pytest.ini), a long test started last leaves the
    other process idle at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
