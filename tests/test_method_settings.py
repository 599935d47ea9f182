"""Methods own their settings: typed Params with sourced defaults, flags generated under the same names,
Config routing method parameters, and checkpoints that know the method that wrote them."""
import dataclasses
import json
import os

import pytest
from absl import flags

from ssl_tf import cli, config
from ssl_tf.errors import SSLTFError
from ssl_tf.methods import METHODS, SSLMethod, names, settings


@pytest.mark.parametrize("name", list(METHODS))
def test_every_parameter_has_a_type_help_and_source_and_resolves(name):
    cls = METHODS[name]
    assert cls.name == name and cls.family in settings.FAMILIES
    for f in dataclasses.fields(cls.Params):
        assert f.metadata.get("help"), f"{name}: --{f.name} has no help"
        assert f.metadata.get("source"), f"{name}: --{f.name} has no source for its default"
    shared = {f.name for f in dataclasses.fields(config.Config)}
    own = {f.name for f in dataclasses.fields(cls.Params)}
    for recipe in (cls.recipe, cls.shapes_recipe):
        assert set(recipe) <= shared | own, f"{name}: recipe sets unknown settings {set(recipe) - shared - own}"
    c = config.resolve(config.Config(method=name, dataset="npz:x.npz"), 32)
    assert isinstance(c.params, cls.Params)
    for field in own:                                   # cfg.<param> reads through to the method's params
        assert getattr(c, field) == getattr(c.params, field)
    for f in dataclasses.fields(c.params):              # None: "auto", left to the model, which the help explains
        help_text = f.metadata["help"]
        assert getattr(c.params, f.name) is not None or "default" in help_text or "scaled" in help_text, \
            f"{name}: --{f.name} resolves to None and its help does not say what None means"


def test_families_split_the_registry_and_labels_are_declared():
    assert set(names("joint")) | set(names("pretext")) | set(names("infomax")) | set(names("semi")) == set(METHODS)
    assert {n for n, cls in METHODS.items() if cls.needs_labels} == {"s4l_rotation", "s4l_exemplar", "fixmatch",
                                                                      "mixmatch"}


def test_one_flag_per_parameter_name_with_each_methods_default_in_its_help():
    fv = flags.FlagValues()
    cli.define_flags(fv)
    declared = settings.param_fields()
    for name, decl in declared.items():
        assert fv[name].default is None, name                 # the chosen method's default applies
        for method, f, _ in decl:
            assert f"{method} " in fv[name].help, (name, method)
    assert "simclr auto" in fv["temperature"].help and "npid 0.07" in fv["temperature"].help
    assert set(fv["method"].parser.enum_values) == set(METHODS)
    fv(["ssl-tf", "--method=npid", "--temperature=0.3", "--nce_k=64", "--queue_size=128"])
    c = config.resolve(cli.config_from_flags(fv), 32)
    assert (c.params.temperature, c.params.nce_k, c.learning_rate) == (0.3, 64, 0.03)
    assert not hasattr(c.params, "queue_size")                # another method's parameter is ignored
    with pytest.raises(AttributeError, match="queue_size"):
        c.queue_size


def test_a_name_declared_twice_must_keep_one_type():
    @dataclasses.dataclass
    class Bad(settings.MethodParams):
        temperature: str = settings.param("x", "A temperature that is a string.", source="none")

    class Dummy(SSLMethod):
        Params = Bad
    settings.REGISTRY["_dummy"] = Dummy
    try:
        with pytest.raises(TypeError, match="--temperature: declared with different types"):
            cli.method_flag_specs()
    finally:
        del settings.REGISTRY["_dummy"]


def test_register_refuses_a_second_name_and_a_class_without_params():
    with pytest.raises(ValueError, match="registered twice"):
        settings.register("simclr", family="joint")(type("Again", (SSLMethod,), {}))
    with pytest.raises(ValueError, match="family"):
        settings.register("x", family="other")


def test_config_routes_method_parameters_and_rejects_unknown_names():
    c = config.Config(method="moco", queue_size=512, batch_size=64)
    assert c.method_args == {"queue_size": 512} and c.batch_size == 64 and c.queue_size == 512
    assert dataclasses.replace(c, seed=3).method_args == {"queue_size": 512}
    with pytest.raises(TypeError, match="no_such_setting"):
        config.Config(no_such_setting=1)
    r = config.resolve(c, 32)
    assert (r.params.queue_size, r.params.temperature, r.optimizer, r.learning_rate) == (512, 0.2, "sgd", 0.03)
    flat = config.to_dict(r)
    assert flat["queue_size"] == 512 and flat["method"] == "moco" and "params" not in flat
    json.dumps(flat)                                              # results.json and checkpoint metadata
    with pytest.raises(SSLTFError, match="^--method=nope: unknown; accepted: simclr, moco"):
        config.resolve(config.Config(method="nope"), 32)
    with pytest.raises(SSLTFError, match="^--moco_version=3: accepted: 1, 2"):
        config.resolve(config.Config(method="moco", moco_version=3), 32)


def test_context_defaults_follow_the_image_size_and_backbone():
    r = lambda **kw: config.resolve(config.Config(dataset="npz:x.npz", **kw), 32)  # noqa: E731
    assert r(method="simclr").temperature == 0.5 and r(method="simclr", image_size=64).temperature == 0.1
    assert r(method="moco_v3").temperature == 1.0 and r(method="moco_v3", backbone="vit_tiny").temperature == 0.2
    v1 = r(method="moco", moco_version=1)
    assert (v1.temperature, v1.blur) == (0.07, False)
    assert r(method="moco", moco_version=1, image_size=64).blur is False       # v1: no blur at any size
    assert r(method="moco", image_size=64).blur is True
    assert r(method="dino", image_size=224).local_crop_size == 96 and r(method="jigsaw").patch_size == 16


def test_a_checkpoint_knows_its_method(tmp_path):
    from ssl_tf import checkpoints
    from ssl_tf.runner import Runner, written_by
    base = dict(mode="pretrain", dataset="shapes:32,8", image_size=16, width=0.0625, batch_size=8, max_steps=1,
                epochs=1, progress=False, plots=False, model_dir=str(tmp_path / "run"))
    Runner(config.Config(method="simclr", **base), log=lambda *a: None).run()
    latest = checkpoints.latest(str(tmp_path / "run" / "pretrain"))
    meta = checkpoints.metadata(latest)
    assert meta["method"] == "simclr" and meta["config"]["temperature"] == 0.2 and meta["phase"] == "pretrain"
    os.remove(tmp_path / "run" / "results.json")             # the checkpoint alone says who wrote it
    assert written_by(latest) == "simclr"
    with pytest.raises(SSLTFError, match=r"written by --method=simclr, not --method=byol; pass --method=simclr"):
        Runner(config.Config(method="byol", proj_hidden=16, pred_hidden=16, proj_dim=16, **base),
               log=lambda *a: None).run()


def test_a_flat_config_record_of_every_method_builds_a_config_again():
    """results.json["config"] (and the records of runs written when Config held every method's fields
    flat) feed Config(**record) again, as experiments/cifar10_label_fractions.py does."""
    merged = {}
    for name in METHODS:
        merged.update(config.to_dict(config.resolve(config.Config(method=name, dataset="npz:x.npz"), 32)))
    merged["method"] = "dino"
    c = config.resolve(config.Config(**merged), 32)
    assert isinstance(c.params, METHODS["dino"].Params) and c.dino_out_dim == merged["dino_out_dim"]
