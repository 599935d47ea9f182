"""The runner of ``ssl-tf``: ``Runner`` (core), the training loop (loop), one module per mode
(pretrain, evaluate, finetune, distill, export, report) and the run's record (results)."""
from ssl_tf.runner.core import Runner, written_by  # noqa: F401
from ssl_tf.runner.loop import COLLAPSE_STD, collapse_warning, view_images, weights_fingerprint  # noqa: F401
from ssl_tf.runner.results import peak_rss_mb, results_table, versions  # noqa: F401
