from ssl_tf.export.saved_model import (  # noqa: F401
    FeatureExtractor,
    export_classifier,
    export_encoder,
    export_generator,
    load_feature_extractor,
)
