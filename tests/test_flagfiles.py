"""Every flagfile parses into a valid, resolved configuration; every method has one per dataset."""
import os

import pytest
from absl import flags

from ssl_tf import cli, config
from ssl_tf.methods import METHODS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_has_shapes_and_cifar10_flagfiles_that_resolve(method):
    for dataset in ("shapes", "cifar10"):
        path = os.path.join(ROOT, "flags", method, f"{dataset}.flags")
        assert os.path.exists(path), path
        fv = flags.FlagValues()
        cli.define_flags(fv)
        fv(["ssl-tf", f"--flagfile={path}"])
        cfg = config.resolve(cli.config_from_flags(fv), 32)
        assert cfg.method == method
        assert cfg.dataset.startswith("shapes" if dataset == "shapes" else "tfds:cifar10")


def test_backbone_choices_match_the_registry():
    from ssl_tf.models import BACKBONES
    assert set(config.BACKBONE_NAMES) == set(BACKBONES)


def test_pretext_defaults_follow_the_revisiting_recipe_and_errors_name_the_flag():
    c = config.resolve(config.Config(method="jigsaw", dataset="npz:x.npz"), 32)
    assert (c.optimizer, c.learning_rate, c.weight_decay, c.epochs, c.warmup_epochs) == ("sgd", 0.1, 1e-4, 35, 5.0)
    assert c.patch_size == 16 and c.num_permutations == 1000 and c.perm_subset_size == 8
    assert config.resolve(config.Config(method="exemplar", dataset="npz:x.npz"), 32).batch_size == 64
    assert config.resolve(config.Config(dataset="npz:x.npz"), 32).optimizer == "lars"    # simclr unchanged
    with pytest.raises(config.SSLTFError, match="--perm_subset_size=2000"):
        config.resolve(config.Config(method="jigsaw", perm_subset_size=2000), 32)
    with pytest.raises(config.SSLTFError, match="--num_exemplar_copies=1"):
        config.resolve(config.Config(method="exemplar", num_exemplar_copies=1), 32)


def test_simclr_shapes_flagfile_is_the_no_flag_demo():
    """`ssl-tf --flagfile=flags/simclr/shapes.flags` and `ssl-tf` resolve to the same run (the demo preset:
    24 px, batch 64; a flagfile drifting from the preset would describe another demo)."""
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["ssl-tf", f"--flagfile={os.path.join(ROOT, 'flags', 'simclr', 'shapes.flags')}", "--model_dir=x"])
    from_file = config.resolve(cli.config_from_flags(fv), 32)
    assert from_file == config.resolve(config.Config(model_dir="x"), 32)
    assert (from_file.image_size, from_file.batch_size, from_file.epochs) == (24, 64, 5)


BUDGET_FILES = sorted(p for p in os.listdir(os.path.join(ROOT, "flags")) if os.path.isfile(
    os.path.join(ROOT, "flags", p, "cifar10_20min.flags")))
# a method's budget recipe for another backbone: flags/<method>/cifar10_20min_<backbone>.flags
BACKBONE_BUDGET_FILES = sorted((m, f) for m in BUDGET_FILES for f in os.listdir(os.path.join(ROOT, "flags", m))
                               if f.startswith("cifar10_20min_") and f.endswith(".flags"))


# bownet's: tests/test_bownet.py trains it, with its rotation teacher and a second round
@pytest.mark.parametrize("method,name", [(m, "cifar10_20min.flags") for m in BUDGET_FILES if m != "bownet"]
                         + BACKBONE_BUDGET_FILES)
def test_each_budget_flagfile_parses_names_its_budget_and_trains_two_steps(method, name, tmp_path):
    """flags/<method>/cifar10_20min[_<backbone>].flags: a recipe of the 20-minute table, its reasons in comments."""
    path = os.path.join(ROOT, "flags", method, name)
    text = open(path, encoding="utf-8").read()
    assert text.startswith("#") and "--train_minutes=20" in text and f"--method={method}" in text
    backbone = name[len("cifar10_20min_"):-len(".flags")] if name != "cifar10_20min.flags" else "resnet18"
    assert f"--backbone={backbone}" in text      # the table's backbone; the 2 steps below run a smaller one
    fv = flags.FlagValues()
    cli.define_flags(fv)
    fv(["ssl-tf", f"--flagfile={path}", "--dataset=shapes:32,8", "--image_size=16", "--backbone=resnet10",
        "--width=0.0625", "--batch_size=8",
        *(["--obow_words=16"] if method == "obow" else []),   # a vocabulary no larger than the 32 images
        "--max_steps=2", "--mode=pretrain", "--progress=false", "--plots=false",
        f"--model_dir={tmp_path}"])
    cfg = cli.config_from_flags(fv)
    assert cfg.method == method and cfg.train_minutes == 20
    from ssl_tf.runner import Runner
    summary = Runner(cfg, log=lambda *a: None).run()["pretrain"]
    assert summary["steps"] == 2 and all(v == v for v in summary["final"].values())   # finite, not NaN


def test_the_joint_embedding_infomax_and_pretext_methods_have_budget_flagfiles():
    from ssl_tf.methods import names
    wanted = set(names("joint")) | set(names("infomax")) | set(names("pretext")) - {"s4l_rotation", "s4l_exemplar"}
    assert wanted <= set(BUDGET_FILES)


def test_the_methods_benchmark_uses_a_backbone_recipe_where_the_method_has_one(tmp_path):
    """experiments/cifar10_methods.py: `dino@vit_tiny` trains flags/dino/cifar10_20min_vit_tiny.flags (the ViT's
    AdamW), `dino` the ResNet recipe (SGD); a method without a ViT recipe runs its own on the ViT, full width."""
    import argparse
    import importlib.util
    spec = importlib.util.spec_from_file_location("cifar10_methods", os.path.join(ROOT, "experiments",
                                                                                  "cifar10_methods.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = argparse.Namespace(npz="x.npz", minutes=20.0, seed=0, eval_npz=None)
    vit, resnet, byol = (config.resolve(bench.config_for(s, args, str(tmp_path)), 32)
                         for s in ("dino@vit_tiny", "dino", "byol@vit_tiny"))
    assert (vit.backbone, vit.width, vit.optimizer) == ("vit_tiny", 1.0, "adamw")
    assert (resnet.backbone, resnet.width, resnet.optimizer) == ("resnet18", 0.25, "sgd")
    assert (byol.backbone, byol.width, byol.optimizer) == ("vit_tiny", 1.0, "lars")
    assert bench.recipe_of("dino@vit_tiny") == "dino/cifar10_20min_vit_tiny.flags"
    assert bench.recipe_of("byol@vit_tiny") == "byol/cifar10_20min.flags --backbone=vit_tiny"
    assert bench.recipe_of("dino") == "dino/cifar10_20min.flags"
