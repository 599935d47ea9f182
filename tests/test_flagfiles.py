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
