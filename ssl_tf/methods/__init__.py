"""``--method`` registry: name -> SSLMethod subclass."""
from ssl_tf.methods.base import Objective, SSLMethod  # noqa: F401
from ssl_tf.methods.simclr import SimCLR
from ssl_tf.methods.supervised import Classifier  # noqa: F401

METHODS = {"simclr": SimCLR}
