"""ssl_tf: self-supervised visual representation learning with Keras 3 and TensorFlow.

Public API::

    from ssl_tf import Config, Runner, build_method, load_dataset, evaluate, export
"""
__version__ = "0.1.0"

from ssl_tf import backend as _backend

# oneDNN on for the TensorFlow about to be imported, unless the user chose (ssl_tf/backend.py);
# if TensorFlow came first with it off, one line says so.
if _backend.prefer_onednn() == "late":
    _backend.notify_if_late()

from ssl_tf.config import Config  # noqa: E402,F401
from ssl_tf.data import load_dataset  # noqa: E402,F401
from ssl_tf.errors import SSLTFError  # noqa: E402,F401


def build_method(name: str, encoder, num_classes: int = 0, *, num_examples: int = 1, **settings):
    """A method by registry name with its paper defaults, ``settings`` under their flag names:
    ``build_method("byol", encoder, 10, proj_dim=128, target_momentum=0.99)``. Shared settings the
    method's checks read (``batch_size`` for MoCo's queue, ``global_bn``) may be passed too; the image
    size is the encoder's. ``num_examples``: the training set's size (NPID's memory bank)."""
    from ssl_tf import config
    side = getattr(encoder, "input_shape", (None, None))[1] or 224
    settings.setdefault("image_size", int(side))
    settings.setdefault("global_bn", False)
    cfg = config.resolve(Config(method=name, dataset="npz:-", model_dir="-", **settings), int(side))
    return config.method_class(name).from_config(cfg, encoder, num_classes, num_examples)


def __getattr__(name):  # lazy: importing ssl_tf does not import TensorFlow-heavy modules
    if name in ("Runner", "export", "evaluate"):
        _backend.import_tensorflow()   # quietly, before any module of ours imports it
    if name == "Runner":
        from ssl_tf.runner import Runner
        return Runner
    if name == "export":
        from ssl_tf.export import export_encoder
        return export_encoder
    if name == "evaluate":
        from ssl_tf import eval as eval_lib
        return eval_lib
    raise AttributeError(name)
