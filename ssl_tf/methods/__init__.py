"""``--method`` registry: name -> SSLMethod subclass.

Each method file registers itself (``settings.register``); every module of this package is
imported here, so a new method file is found without editing this one.
"""
import importlib
import pkgutil

from ssl_tf.methods.barlow_twins import BarlowTwins  # noqa: F401
from ssl_tf.methods.base import Objective, SSLMethod  # noqa: F401
from ssl_tf.methods.byol import BYOL  # noqa: F401
from ssl_tf.methods.cmc import CMC  # noqa: F401
from ssl_tf.methods.colorization import Colorization  # noqa: F401
from ssl_tf.methods.dino import DINO  # noqa: F401
from ssl_tf.methods.distill import Distiller, load_teacher  # noqa: F401
from ssl_tf.methods.exemplar import Exemplar  # noqa: F401
from ssl_tf.methods.fixmatch import FixMatch  # noqa: F401
from ssl_tf.methods.jigsaw import Jigsaw  # noqa: F401
from ssl_tf.methods.mixmatch import MixMatch  # noqa: F401
from ssl_tf.methods.moco import MoCo  # noqa: F401
from ssl_tf.methods.moco_v3 import MoCoV3  # noqa: F401
from ssl_tf.methods.npid import NPID  # noqa: F401
from ssl_tf.methods.obow import OBoW  # noqa: F401
from ssl_tf.methods.pirl import PIRL  # noqa: F401
from ssl_tf.methods.relative_patch_location import RelativePatchLocation  # noqa: F401
from ssl_tf.methods.rotation import Rotation  # noqa: F401
from ssl_tf.methods.s4l import S4LExemplar, S4LRotation  # noqa: F401
from ssl_tf.methods.settings import REGISTRY, MethodParams, names, param, register  # noqa: F401
from ssl_tf.methods.simclr import SimCLR  # noqa: F401
from ssl_tf.methods.simsiam import SimSiam  # noqa: F401
from ssl_tf.methods.supervised import Classifier, SemiSupervised  # noqa: F401
from ssl_tf.methods.vicreg import VICReg  # noqa: F401

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

_ORDER = ("simclr", "moco", "moco_v3", "byol", "simsiam", "dino", "npid", "barlow_twins", "vicreg", "rotation",
          "relative_patch_location", "jigsaw", "exemplar", "colorization", "s4l_rotation", "s4l_exemplar",
          "fixmatch", "mixmatch")
# The documented order (--method's choices, the docs' tables); a method not listed comes after, by file name.
_ordered = {**{n: REGISTRY[n] for n in _ORDER if n in REGISTRY}, **REGISTRY}
REGISTRY.clear()
REGISTRY.update(_ordered)
METHODS = REGISTRY
SEMI_SUPERVISED = tuple(n for n, cls in METHODS.items() if cls.needs_labels)   # need labelled training data
