from ssl_tf.eval import plots  # noqa: F401
from ssl_tf.eval.features import extract  # noqa: F401
from ssl_tf.eval.knn import knn_predict, knn_top1  # noqa: F401
from ssl_tf.eval.layerwise import layerwise, layerwise_table, plot_layerwise  # noqa: F401
from ssl_tf.eval.linear import augmented_probe, probe  # noqa: F401
from ssl_tf.eval.report import label_efficiency_rows, plot_label_efficiency, report  # noqa: F401
