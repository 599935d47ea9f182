"""A registered method is a whole method: flagfiles for both datasets, a README row, a docs entry, and every
loss it calls named in a test file that uses NumPy (docs/contributing.md). Fails, naming what is missing, when
one lacks any. The loss check is by name: it finds a loss nobody tests, not a test that checks too little."""
import ast
import glob
import inspect
import os
import re

import pytest

from ssl_tf import losses
from ssl_tf.methods import METHODS, SSLMethod, base

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def loss_functions(cls) -> set[str]:
    """The ``ssl_tf.losses`` functions a method's own class and its method-specific bases call, directly
    or through a shared component they import from ``ssl_tf.methods.base`` (NPID's and PIRL's MemoryBank)."""
    names = set()
    for klass in inspect.getmro(cls):
        if not (issubclass(klass, SSLMethod) and klass is not SSLMethod and klass.__module__.startswith("ssl_tf.")):
            continue
        for node in ast.walk(ast.parse(inspect.getsource(inspect.getmodule(klass)))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssl_tf.losses"):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "losses":
                names.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module == "ssl_tf.methods.base":
                for alias in node.names:
                    part = getattr(base, alias.name)
                    if inspect.isclass(part) and not issubclass(part, SSLMethod):
                        names |= {n.id for n in ast.walk(ast.parse(inspect.getsource(part)))
                                  if isinstance(n, ast.Name) and inspect.isfunction(getattr(losses, n.id, None))}
    return names


NUMPY_TESTS = {path: text for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
               if "import numpy" in (text := open(path, encoding="utf-8").read())}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_registered_method_is_complete(name):
    missing = [f"flags/{name}/{d}.flags" for d in ("shapes", "cifar10")
               if not os.path.isfile(os.path.join(ROOT, "flags", name, f"{d}.flags"))]
    if not re.search(rf"^\|[^|\n]*`{name}`[^|\n]*\|", _read("README.md"), re.M):   # its name in a first cell
        missing.append("a row in README.md's methods table")
    if f"`{name}`" not in _read("docs", "methods.md"):
        missing.append("an entry in docs/methods.md")
    losses = loss_functions(METHODS[name])
    if not losses:
        missing.append("a loss from ssl_tf/losses/ (pure function, formula and paper in its docstring)")
    for loss in sorted(losses):
        if not any(re.search(rf"\b{loss}\b", text) for text in NUMPY_TESTS.values()):
            missing.append(f"a test of losses.{loss} against NumPy")
    assert not missing, f"method {name} lacks: " + "; ".join(missing)


def test_the_check_finds_a_method_without_a_numpy_tested_loss():
    class Unchecked(SSLMethod):   # no ssl_tf.losses function at all
        def objective(self, batch, training):
            raise NotImplementedError
    assert loss_functions(Unchecked) == set()
    assert "nt_xent" in loss_functions(METHODS["simclr"]) and "cross_entropy" in loss_functions(METHODS["jigsaw"])
