from ssl_tf.losses.contrastive import ContrastiveOutput, nt_xent  # noqa: F401
