from ssl_tf.data.sources import DatasetSplits, Examples, load_dataset, load_source  # noqa: F401
