"""Losses: pure functions of tensors, each with its formula and paper in the docstring."""
from ssl_tf.losses.adversarial import (  # noqa: F401
    bigbigan_discriminator_loss,
    bigbigan_encoder_generator_loss,
    discriminator_accuracy,
)
from ssl_tf.losses.bow import (  # noqa: F401
    bow_prediction_loss,
    hard_bow,
    kmeans,
    kmeans_assign,
    kmeans_update,
    local_average_pick,
    soft_bow,
    word_distances,
)
from ssl_tf.losses.classification import cross_entropy, rebalanced_cross_entropy, rebalancing_weights  # noqa: F401
from ssl_tf.losses.contrastive import (  # noqa: F401
    ContrastiveOutput,
    batch_contrastive,
    batch_info_nce,
    info_nce,
    memory_bank_logits,
    memory_bank_nce,
    multiview_pairs,
    nce_normaliser,
    nt_xent,
    queue_cross_entropy,
)
from ssl_tf.losses.dino import dino_loss, linear_soft_cross_entropy, teacher_entropy, updated_center  # noqa: F401
from ssl_tf.losses.infomax import (  # noqa: F401
    MI_ESTIMATORS,
    amdim_nce,
    cpc_info_nce,
    discriminator_loss,
    generator_loss,
    mi_lower_bound,
    pair_scores,
)
from ssl_tf.losses.redundancy import barlow_lambda, barlow_twins_loss, vicreg_loss, vicreg_terms  # noqa: F401
from ssl_tf.losses.semi import (  # noqa: F401
    distillation_loss,
    fixmatch_unlabelled_loss,
    mixmatch_losses,
    mixup,
    mixup_lambda,
    sharpen,
)
from ssl_tf.losses.similarity import byol_loss, negative_cosine, normalized_mse, simsiam_loss  # noqa: F401
from ssl_tf.losses.triplet import pairwise_distances, triplet_semihard_loss  # noqa: F401
