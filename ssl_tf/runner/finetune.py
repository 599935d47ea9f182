"""--mode=finetune: SimCLRv2-style fine-tuning of the pretrained encoder (optionally with the first
layers of its projection head) on --label_fraction of the labels; the classifier is exported to
<model_dir>/classifier, the teacher --mode=distill reads."""
from __future__ import annotations

import os

import keras
import tensorflow as tf

from ssl_tf import checkpoints
from ssl_tf.errors import SSLTFError
from ssl_tf.export import export_classifier
from ssl_tf.methods import Classifier
from ssl_tf.models import freeze_through, head_prefix
from ssl_tf.runner import loop, results


def pretrained_projection(runner, encoder, layers: int):
    """The first ``layers`` layers of the pretraining run's projection head, restored."""
    if layers == 0:
        return None
    c = runner.model_cfg
    method = runner.method.from_config(c, encoder, runner.data.num_classes, num_examples=len(runner.data.train))
    head = getattr(method, "projector", None) or getattr(method, "head", None)
    if not isinstance(head, keras.Sequential):
        raise SSLTFError(f"--ft_proj_selector={layers}: --method={c.method} has no projection MLP to fine-tune "
                         "from; use 0")
    head(tf.zeros([1, encoder.output_shape[-1]]), training=False)
    path = checkpoints.resolve(c.checkpoint or os.path.join(c.model_dir, "pretrain"))
    if not path:
        raise SSLTFError(f"--ft_proj_selector={layers}: no pretraining checkpoint holding the projection head in "
                         f"{c.checkpoint or c.model_dir}")
    name = "projector" if getattr(method, "projector", None) is head else "head"
    tf.train.Checkpoint(model=tf.train.Checkpoint(**{name: head})).read(path).expect_partial() \
        .assert_existing_objects_matched()
    try:
        return head_prefix(head, layers)
    except ValueError as e:
        raise SSLTFError(f"--ft_proj_selector={layers}: {e}") from None


def run(runner) -> dict:
    """Results under finetune[<percent>%]."""
    c = runner.cfg
    train, _ = runner.eval_sets("finetune")
    pretrained = runner.encoder()
    batch, make_optimizer = runner.classifier_training(len(train))
    frozen = []

    def make_model():
        enc = runner.build_encoder()
        enc.set_weights(pretrained.get_weights())
        proj = pretrained_projection(runner, enc, c.ft_proj_selector)
        frozen.extend(freeze_through(enc, c.fine_tune_after_block))
        return Classifier(enc, runner.data.num_classes, zero_init_head=c.ft_zero_init, proj=proj)

    fraction = f"{100 * c.label_fraction:g}%"
    model, summary = loop.train(runner, make_model, train, epochs=c.ft_epochs, global_batch=batch,
                                make_optimizer=make_optimizer, tag=f"finetune_{fraction[:-1]}pct",
                                run_info=runner.run_info(phase="finetune"))
    summary.update(top1=runner.classifier_top1(model), label_fraction=c.label_fraction, num_labelled=len(train),
                   proj_selector=c.ft_proj_selector, fine_tune_after_block=c.fine_tune_after_block,
                   frozen_layers=len(frozen), classifier=runner.write_export(export_classifier, model, "classifier"))
    runner.results.setdefault("finetune", {})[fraction] = summary
    results.save(runner)
    return summary
