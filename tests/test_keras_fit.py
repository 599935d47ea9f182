"""The Keras-native path on one device: every method trains with ``compile`` + ``fit`` on its own
``stream``, with Keras callbacks (TensorBoard, BackupAndRestore resuming mid-run)."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from ssl_tf import optim
from ssl_tf.config import Config, resolve
from ssl_tf.data import views
from ssl_tf.data.sources import Examples
from ssl_tf.errors import SSLTFError
from ssl_tf.methods import METHODS
from ssl_tf.models import backbone_builder, build_backbone

SMALL = dict(proj_hidden=16, pred_hidden=16, proj_dim=16, dino_out_dim=32, queue_size=16, nce_k=8, head_hidden=16,
             embed_dim=16, num_permutations=10, num_local_crops=2, num_exemplar_copies=2, mu=2,
             cpc_context_hidden=16, dim_mi_units=16, amdim_rkhs=16, obow_words=16, bow_words=16)
AUGMENT = views.AugmentConfig(image_size=16, num_local_crops=2, local_size=8, num_copies=2, patch_size=8,
                              cpc_patch_size=4, cpc_patch_stride=2)


def _data(n=64):
    rng = np.random.default_rng(0)
    return Examples("random", rng.integers(0, 4, n), 4, images=rng.integers(0, 256, (n, 16, 16, 3), np.uint8))


def _method(name, data, run_eagerly=False):
    keras.utils.set_random_seed(0)
    c = resolve(Config(method=name, dataset="npz:x", image_size=16, width=0.0625, batch_size=8, **SMALL), 16)
    cls = METHODS[name]
    encoder = cls.make_encoder(backbone_builder("resnet10", width=0.0625, input_mode=cls.encoder_input), c)
    method = METHODS[name].from_config(c, encoder, data.num_classes, num_examples=len(data))
    method.prepare(data, log=lambda *a: None)         # BoWNet's k-means (a random-init teacher here)
    if getattr(method, "fix_pred_lr", False):   # SimSiam's predictor at a constant rate
        method.fixed_optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    method.compile(optimizer=optim.build_optimizer("sgd", 0.05, 1e-4, 0.9), run_eagerly=run_eagerly)
    return method


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_with_keras_fit(name, tmp_path):
    # Eagerly: the same train_step through fit without tracing it (the suite's largest cost); each method's
    # step also runs traced, through the runner, in tests/test_flagfiles.py and the tests below.
    data = _data()
    method = _method(name, data, run_eagerly=True)
    history = method.fit(method.stream(data, 8, AUGMENT), epochs=2, steps_per_epoch=2, verbose=0)
    assert int(method.optimizer.iterations) == 4
    assert (method.steps_per_epoch, method.total_steps) == (2, 4)      # the method's schedules follow fit's length
    assert len(history.history["loss"]) == 2 and np.all(np.isfinite(history.history["loss"]))
    start = _method(name, data).encoder.get_weights()                  # same seed: the weights before training
    moved = [not np.array_equal(a, b) for a, b in zip(start, method.encoder.get_weights())]
    assert len(start) == len(moved) and any(moved)
    # every variable of the method is in its checkpoint, listed ones too (queues, banks, BN statistics)
    path = tf.train.Checkpoint(model=method).write(str(tmp_path / "ckpt"))
    variables = list({id(v): v for v in method.weights}.values())
    saved = [v.numpy().copy() for v in variables]
    for v in variables:
        v.assign(tf.fill(v.shape, tf.cast(7, v.dtype)))
    tf.train.Checkpoint(model=method).read(path)
    lost = [v.path for v, a in zip(variables, saved) if not np.array_equal(v.numpy(), a)]
    assert not lost, lost


class _StopAt(keras.callbacks.Callback):
    """Fails at the start of an epoch, as a killed process would, after noting the weights."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch, self.weights = epoch, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = self.model.get_weights()
            raise RuntimeError("interrupted")


class _WeightsAtStart(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.weights = self.model.get_weights()


def test_backup_and_restore_resumes_weights_optimizer_and_epoch_and_tensorboard_logs(tmp_path):
    data = _data()
    backup, logs = str(tmp_path / "backup"), str(tmp_path / "logs")
    first = _method("byol", data)   # an EMA target and a momentum schedule: more state than weights
    stop = _StopAt(2)
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(first.stream(data, 8, AUGMENT), epochs=3, steps_per_epoch=2, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), keras.callbacks.TensorBoard(logs), stop])
    assert int(first.optimizer.iterations) == 4
    second = _method("byol", data)   # a new process would build the same method again
    seen = _WeightsAtStart()
    history = second.fit(second.stream(data, 8, AUGMENT), epochs=3, steps_per_epoch=2, verbose=0,
                         callbacks=[keras.callbacks.BackupAndRestore(backup), seen])
    assert len(history.history["loss"]) == 1                        # only the third epoch ran again
    assert int(second.optimizer.iterations) == 6                    # the optimizer's state came back too
    assert len(seen.weights) == len(stop.weights)
    assert all(np.array_equal(a, b) for a, b in zip(seen.weights, stop.weights))   # target network included
    assert any(f.startswith("events.out") for f in os.listdir(os.path.join(logs, "train")))


def test_fit_keeps_compile_settings_and_sizes_the_schedules_on_every_call():
    data = _data()
    method = _method("byol", data)   # the target momentum follows a cosine over total_steps
    method.compile(optimizer=optim.build_optimizer("sgd", 0.05, 1e-4, 0.9), steps_per_execution=2)
    method.fit(method.stream(data, 8, AUGMENT), epochs=1, steps_per_epoch=2, verbose=0)
    assert method.steps_per_execution == 2 and int(method.optimizer.iterations) == 2   # not reset by building
    first = method.train_function
    method.fit(method.stream(data, 8, AUGMENT), epochs=3, initial_epoch=1, steps_per_epoch=2, verbose=0)
    assert (method.steps_per_epoch, method.total_steps) == (2, 6) and int(method.optimizer.iterations) == 6
    assert method.train_function is not first                          # retraced: the schedule is a constant in it
    method.fit(method.stream(data, 8, AUGMENT), None, None, 4, 0, initial_epoch=3, steps_per_epoch=2)   # positional
    assert int(method.optimizer.iterations) == 8 and method.total_steps == 8
    finite = _method("byol", data)
    known = finite.stream(data, 8, AUGMENT).take(3).apply(tf.data.experimental.assert_cardinality(3))
    finite.fit(known, epochs=2, verbose=0)                               # no steps: the dataset's known length
    assert (finite.steps_per_epoch, finite.total_steps) == (3, 6) and int(finite.optimizer.iterations) == 6


def test_fit_refuses_an_endless_stream_without_steps_and_an_uncompiled_method():
    data = _data()
    method = _method("simclr", data)
    with pytest.raises(SSLTFError, match="steps_per_epoch"):
        method.fit(method.stream(data, 8, AUGMENT), epochs=1)
    bare = METHODS["simclr"](build_backbone("resnet10", width=0.0625, image_size=16), 4, proj_dim=16)
    with pytest.raises(SSLTFError, match="compile"):
        bare.fit(bare.stream(data, 8, AUGMENT), epochs=1, steps_per_epoch=1)
    with pytest.raises(SSLTFError, match="tf.data.Dataset"):
        method.fit(np.zeros([8, 16, 16, 3], np.float32), epochs=1, steps_per_epoch=1)
    with pytest.raises(SSLTFError, match="steps_per_epoch"):                 # unknown length: filter()
        method.fit(method.stream(data, 8, AUGMENT).take(3).filter(lambda b: True), epochs=1)
