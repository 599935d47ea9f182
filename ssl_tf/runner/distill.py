"""--mode=distill: SimCLRv2 distillation. The teacher (--teacher, default the fine-tuned classifier)
labels every training image; a student (--student_backbone, --student_width) learns its softened
predictions, optionally mixed with the labels (--distill_alpha)."""
from __future__ import annotations

import os

from ssl_tf.errors import SSLTFError
from ssl_tf.methods import Distiller, load_teacher
from ssl_tf.models import build_backbone
from ssl_tf.runner import loop, results


def run(runner) -> dict:
    c = runner.cfg
    path = c.teacher or os.path.join(c.model_dir, "classifier")
    if not (path.endswith(".keras") and os.path.isfile(path)) and \
            not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise SSLTFError(f"--teacher={path}: not a classifier SavedModel (no saved_model.pb) nor a .keras file; "
                         "run --mode=finetune first or pass --teacher=DIR written by it")
    train = runner.fraction_labelled_train()
    batch, make_optimizer = runner.classifier_training(len(train))

    def make_model():
        student = build_backbone(c.student_backbone, width=c.student_width, image_size=c.image_size,
                                 synchronized_bn=runner.model_cfg.global_bn, precision=c.precision)
        return Distiller(student, runner.data.num_classes, load_teacher(path), temperature=c.distill_temperature,
                         alpha=c.distill_alpha)

    model, summary = loop.train(runner, make_model, train, epochs=c.distill_epochs, global_batch=batch,
                                make_optimizer=make_optimizer, tag="distill", run_info=runner.run_info(phase="distill"))
    summary.update(top1=runner.classifier_top1(model), teacher_top1=runner.classifier_top1(model.teacher_logits),
                   teacher=path, student=f"{c.student_backbone}×{c.student_width}",
                   temperature=c.distill_temperature, alpha=c.distill_alpha, label_fraction=c.label_fraction)
    runner.results["distill"] = summary
    results.save(runner)
    return summary
