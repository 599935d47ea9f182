from ssl_tf.export.saved_model import export_classifier, export_encoder  # noqa: F401
