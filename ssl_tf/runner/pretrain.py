"""--mode=pretrain: the method on the training images (labelled within --label_fraction for the
methods that use labels), then, for the semi-supervised ones, its classifier's top-1."""
from __future__ import annotations

from ssl_tf import optim
from ssl_tf.errors import SSLTFError
from ssl_tf.export import export_generator
from ssl_tf.methods import SemiSupervised
from ssl_tf.runner import loop, results


def run(runner) -> dict:
    cfg, method = runner.cfg, runner.method
    if method.needs_labels and not len(runner.labelled_idx):
        raise SSLTFError(f"--method={cfg.method} needs labelled training data; {runner.data.train.name} has no "
                         "labels (use a labelled source, e.g. npz:PATH with labels)")
    for changes in method.prior_runs(cfg):   # e.g. BoWNet's teacher: trained first, resumed if cut short
        prior = runner.derived(**changes)
        if "pretrain" in prior.results:
            runner.log(f"[pretrain] {prior.cfg.method} run in {prior.cfg.model_dir}: already trained")
        else:
            runner.log(f"[pretrain] first a {prior.cfg.method} run in {prior.cfg.model_dir}")
            prior.pretrain()
    train = runner.fraction_labelled_train()

    def make_optimizer(total, per_epoch, constant=False):
        lr = optim.scale_learning_rate(cfg.learning_rate, cfg.batch_size, cfg.lr_scaling)
        constant = constant or cfg.lr_schedule == "constant"
        schedule = lr if constant else optim.WarmupCosine(lr, round(cfg.warmup_epochs * per_epoch), total)
        return optim.build_optimizer(cfg.optimizer, schedule, cfg.weight_decay, cfg.momentum)

    def make_model():
        encoder = runner.build_encoder()
        if cfg.init_from:
            runner.load_encoder(encoder, cfg.init_from, "--init_from")
        model = method.from_config(runner.model_cfg, encoder, runner.data.num_classes, num_examples=len(train))
        model.prepare(train, runner.log)
        return model

    model, summary = loop.train(runner, make_model, train, epochs=cfg.epochs, global_batch=cfg.batch_size,
                                make_optimizer=make_optimizer, tag="pretrain", max_steps=cfg.max_steps,
                                run_info=runner.run_info(), minutes=cfg.train_minutes)
    runner.set_encoder(getattr(model, method.eval_encoder_attr))
    for name, network in model.exports().items():   # e.g. BigBiGAN's generator
        summary.setdefault("exports", {})[name] = runner.write_export(export_generator, network, name)
    if isinstance(model, SemiSupervised) and runner.data.eval is not None:
        summary["top1"] = runner.classifier_top1(model)
        summary["ema_top1"] = runner.classifier_top1(model.ema_logits)
    runner.results["pretrain"] = summary
    results.save(runner)
    return summary
