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
