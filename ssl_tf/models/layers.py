"""Layers shared by backbones and heads."""
from __future__ import annotations

import keras

from ssl_tf import distribute


@keras.saving.register_keras_serializable("ssl_tf")
class BatchNorm(keras.layers.BatchNormalization):
    """Batch normalisation; with ``sync=True`` its training statistics span every replica's batch
    (SimCLR's global BN) through ``distribute.moments``. Keras's ``synchronized=True`` failed the
    2-replica weight-equality test (tests/test_distribute.py); this passes it."""

    def __init__(self, sync: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.sync = sync

    def _moments(self, inputs, mask):
        if not self.sync or mask is not None:
            return super()._moments(inputs, mask)
        return distribute.moments(inputs, self._reduction_axes)

    def get_config(self):
        return {**super().get_config(), "sync": self.sync}
