"""The package's import graph: no circle, and the layers' arrows point one way.

errors, files, loss, progress, _version  <  data  <  modeling  <  evaluation, serving  <  training  <  cli (and the package's
__init__, the public API). A module imports modules of its own subpackage or of lower layers only, imports inside
functions included; evaluation and serving know nothing of each other."""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rankrm"
LAYER = {
    "errors": -1,  # below every layer, files included: every layer raises them
    "files": 0,
    "loss": 0,
    "regression": 0,
    "progress": 0,
    "_version": 0,
    "data": 1,
    "modeling": 2,
    "evaluation": 3,
    "serving": 3,
    "training": 4,
    "cli": 5,
    "__init__": 5,
    "__main__": 6,
}


def module_name(path: Path, package: Path) -> str:
    """A file's module as a dotted name inside the package: 'data.groups', 'cli', '__init__', 'data.__init__'."""
    return ".".join(path.relative_to(package).with_suffix("").parts)


def imports_of(path: Path, package: Path, modules: set[str]) -> set[str]:
    """The package's modules that a module imports (dotted names inside the package), in functions too."""
    me = module_name(path, package).split(".")
    here = me[:-1]  # the module's own subpackage
    out = set()

    def module(dotted: str) -> str:
        """A dotted name as a module: a package is its __init__."""
        return f"{dotted}.__init__" if f"{dotted}.__init__" in modules else dotted or "__init__"

    def add(dotted: str, names=()):
        subs = [n for n in names if f"{dotted}.{n}".strip(".") in modules]  # from x import y: y a submodule
        out.update(f"{dotted}.{n}".strip(".") for n in subs)
        if len(subs) < len(names) or not names:
            out.add(module(dotted))

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1] + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == package.name:
                base = node.module.split(".")[1:]
            else:
                continue
            add(".".join(base), [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == package.name:
                    add(".".join(parts[1:]))
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every module of the package and its subpackages."""
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in paths}
    return {module_name(p, package): imports_of(p, package, modules) for p in paths}


def layer_of(module: str) -> int:
    return LAYER[module.split(".")[0]]


def test_no_module_imports_in_a_circle():
    graph = import_graph(PACKAGE)
    missing = {(m, x) for m, xs in graph.items() for x in xs if x not in graph}
    assert not missing, f"imports of modules that do not exist: {sorted(missing)}"
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")


def test_every_module_sits_in_a_layer_and_imports_only_its_own_package_or_lower_layers():
    graph = import_graph(PACKAGE)
    up = []
    for m, xs in graph.items():
        for x in xs:
            same = m.split(".")[0] == x.split(".")[0]
            if not same and layer_of(x) >= layer_of(m):
                up.append(f"{m} imports {x}")
    assert not up, "imports that point up or sideways: " + "; ".join(sorted(up))
    assert graph["data.containers"] == {"errors", "files"}  # containers know nothing of groups or formats


def test_the_checks_can_fail(tmp_path):
    """A imports b at the top, b imports a inside a function (and c from the package); data imports training."""
    pkg = tmp_path / "pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "training").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "data" / "a.py").write_text("from .b import f\n")
    (pkg / "data" / "b.py").write_text("import pkg.training.c\n\n\ndef f():\n    from . import a\n    return a\n")
    (pkg / "training" / "c.py").write_text("from pkg import __version__\nfrom ..data.a import f\n")
    graph = import_graph(pkg)
    assert graph == {
        "__init__": set(),
        "data.__init__": set(),
        "training.__init__": set(),
        "data.a": {"data.b"},
        "data.b": {"data.a", "training.c"},
        "training.c": {"__init__", "data.a"},
    }
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
    assert layer_of("data.b") < layer_of("training.c")  # data.b -> training.c points up: the layer check flags it
