"""``--method`` registry: name -> SSLMethod subclass."""
from ssl_tf.methods.barlow_twins import BarlowTwins
from ssl_tf.methods.base import Objective, SSLMethod  # noqa: F401
from ssl_tf.methods.byol import BYOL
from ssl_tf.methods.colorization import Colorization
from ssl_tf.methods.dino import DINO
from ssl_tf.methods.distill import Distiller, load_teacher  # noqa: F401
from ssl_tf.methods.exemplar import Exemplar
from ssl_tf.methods.fixmatch import FixMatch
from ssl_tf.methods.jigsaw import Jigsaw
from ssl_tf.methods.mixmatch import MixMatch
from ssl_tf.methods.moco import MoCo
from ssl_tf.methods.moco_v3 import MoCoV3
from ssl_tf.methods.npid import NPID
from ssl_tf.methods.relative_patch_location import RelativePatchLocation
from ssl_tf.methods.rotation import Rotation
from ssl_tf.methods.s4l import S4LExemplar, S4LRotation
from ssl_tf.methods.simclr import SimCLR
from ssl_tf.methods.simsiam import SimSiam
from ssl_tf.methods.supervised import Classifier, SemiSupervised  # noqa: F401
from ssl_tf.methods.vicreg import VICReg

METHODS = {
    "simclr": SimCLR,
    "moco": MoCo,
    "moco_v3": MoCoV3,
    "byol": BYOL,
    "simsiam": SimSiam,
    "dino": DINO,
    "npid": NPID,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "rotation": Rotation,
    "relative_patch_location": RelativePatchLocation,
    "jigsaw": Jigsaw,
    "exemplar": Exemplar,
    "colorization": Colorization,
    "s4l_rotation": S4LRotation,
    "s4l_exemplar": S4LExemplar,
    "fixmatch": FixMatch,
    "mixmatch": MixMatch,
}
SEMI_SUPERVISED = ("s4l_rotation", "s4l_exemplar", "fixmatch", "mixmatch")   # need labelled training data
