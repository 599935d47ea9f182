"""What a method owns: its typed parameters, their paper defaults and sources, and its registration.

A method file declares, next to its model::

    @register("simclr")
    class SimCLR(SSLMethod):
        recipe = dict(optimizer="lars", ...)          # the shared settings its paper changes

        @dataclasses.dataclass
        class Params(MethodParams):
            temperature: Optional[float] = param(None, "NT-Xent temperature.", source="SimCLR §B.9: 0.1")
            ...

        @classmethod
        def from_params(cls, p, shared, encoder, num_classes, num_examples=1): ...

``ssl-tf`` turns every parameter of every registered method into a flag of the same name, so
``--temperature`` reaches whichever method declares it. ``Config`` keeps only the shared settings
(data, backbone, optimiser, schedule, evaluation, running) and, once resolved, the chosen method's
``Params`` instance.
"""
from __future__ import annotations

import dataclasses
import typing

from ssl_tf.errors import SSLTFError, check  # noqa: F401 — check: re-exported for the method files

REGISTRY: dict[str, type] = {}
FAMILIES = ("joint", "pretext", "infomax", "semi")

# The pretext tasks' recipe in google/revisiting-self-supervised (config/<task>/imagenet.sh, trainer.py):
# SGD with momentum 0.9, lr 0.1 × batch/256, weight decay 1e-4, 5 warm-up epochs of 35 (their step
# decay at epochs 15 and 25 is replaced by our cosine).
REVISITING_RECIPE = dict(optimizer="sgd", learning_rate=0.1, lr_scaling="linear", weight_decay=1e-4,
                         warmup_epochs=5.0, epochs=35)


def param(default, help: str, *, source: str = "", choices: tuple | None = None):
    """A method parameter: its default, a one-line help and where the default comes from."""
    return dataclasses.field(default=default, metadata={"help": help, "source": source, "choices": choices})


@dataclasses.dataclass
class MethodParams:
    """Base of every method's ``Params``. Fields left ``None`` are filled by ``resolve`` from the
    shared settings (image size, backbone); ``validate`` raises one-line errors naming the flag."""

    def resolve(self, shared) -> None:
        """Fill defaults that depend on the shared settings (``shared``: the Config being resolved);
        may also set shared fields still ``None`` (MoCo v1 turns blur off)."""

    def validate(self, shared) -> None:
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise SSLTFError(f"--{f.name}={getattr(self, f.name)}: unknown; accepted: {', '.join(choices)}")

    def augment(self) -> dict:
        """``views.AugmentConfig`` fields this method sets (patch size, local crops, copies …)."""
        return {}


def register(name: str, *, family: str):
    """Class decorator: put a method in the ``--method`` registry under ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"register({name!r}): family must be one of {FAMILIES}")

    def decorate(cls):
        if name in REGISTRY:
            raise ValueError(f"register: --method={name} is registered twice")
        if "Params" not in cls.__dict__ and not any("Params" in vars(b) for b in cls.__mro__[1:]):
            raise ValueError(f"register({name!r}): {cls.__name__} declares no Params")
        cls.name, cls.family = name, family
        REGISTRY[name] = cls
        return cls
    return decorate


def names(family: str | None = None) -> tuple[str, ...]:
    return tuple(n for n, cls in REGISTRY.items() if family is None or cls.family == family)


def param_fields() -> dict[str, list[tuple[str, dataclasses.Field, type]]]:
    """{parameter name: [(method, field, type), …]} over every registered method."""
    out: dict[str, list] = {}
    for method, cls in REGISTRY.items():
        hints = typing.get_type_hints(cls.Params)
        for f in dataclasses.fields(cls.Params):
            out.setdefault(f.name, []).append((method, f, _base_type(hints[f.name])))
    return out


def _base_type(tp):
    if typing.get_origin(tp) is typing.Union:
        return next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def make_params(cls, values: dict):
    """``cls.Params`` from ``values`` (names it does not declare are left out: another method's)."""
    own = {f.name for f in dataclasses.fields(cls.Params)}
    return cls.Params(**{k: v for k, v in values.items() if k in own})


@dataclasses.dataclass
class ProjectorParams(MethodParams):
    """A projection MLP (and, for BYOL, SimSiam and MoCo v3, a predictor): widths each method sets."""
    proj_hidden: int = param(4096, "Projection hidden width.")
    proj_dim: int = param(256, "Projection output dimension.")

    def validate(self, shared):
        super().validate(shared)
        for flag in ("proj_hidden", "proj_dim", "pred_hidden"):
            value = getattr(self, flag, 1)
            check(value >= 1, flag, value, "must be >= 1")


@dataclasses.dataclass
class MomentumParams(MethodParams):
    """A momentum / EMA target network θ_t ← m·θ_t + (1 − m)·θ_o."""
    target_momentum: float = param(0.996, "Momentum m of the target network's EMA.")
    ema_bn_stats: bool = param(False, "Also move the target's BN moving statistics by EMA (default: the target "
                                      "keeps its own, as MoCo's and BYOL's code).", source="MoCo, BYOL code")

    def validate(self, shared):
        super().validate(shared)
        check(0 <= self.target_momentum <= 1, "target_momentum", self.target_momentum, "must be in [0, 1]")
