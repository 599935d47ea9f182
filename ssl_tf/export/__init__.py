from ssl_tf.export.saved_model import (FeatureExtractor, export_classifier, export_encoder,  # noqa: F401
                                     load_feature_extractor)
