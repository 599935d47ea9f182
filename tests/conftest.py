import os
import sys
import subprocess

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from ssl_tf.distribute import split_cpu  # noqa: E402

# Two logical CPU devices for the MirroredStrategy tests; must happen before TF initialises.
split_cpu(2)
tf.get_logger().setLevel("ERROR")


def run_cli(*args, cwd=None, timeout=600):
    """Run ``ssl-tf`` in a fresh process; return the CompletedProcess."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "ssl_tf.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli
