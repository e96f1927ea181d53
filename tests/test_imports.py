"""The package's import graph: no module imports itself through others, and the data layer's arrows point down."""

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rankrm"
# the data layer, lowest first: a module may import only those before it
DATA_LAYERS = ["errors", "containers", "groups", "splits", "pairwise", "scored", "oasst", "readers", "describe", "convert"]


def imports_of(path: Path, package: Path) -> set[str]:
    """The package's modules that a module imports (as file stems, "__init__" for the package), in functions too."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module
            elif node.level == 0 and node.module and node.module.split(".")[0] == package.name:
                base = node.module.partition(".")[2] or None
            else:
                continue
            if base:
                out.add(base.split(".")[0])
            else:  # from . import x: a module, or a name of the package's __init__
                out |= {a.name if (package / f"{a.name}.py").is_file() else "__init__" for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == package.name:
                    out.add(parts[1] if len(parts) > 1 else "__init__")
    return out


def import_graph(package: Path) -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every module of a flat package."""
    return {p.stem: imports_of(p, package) for p in sorted(package.glob("*.py"))}


def test_no_module_imports_in_a_circle():
    graph = import_graph(PACKAGE)
    missing = {(m, x) for m, xs in graph.items() for x in xs if x not in graph}
    assert not missing, f"imports of modules that do not exist: {sorted(missing)}"
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import circle: {' -> '.join(e.args[1])}")


def test_the_data_layer_imports_only_modules_below_it():
    graph = import_graph(PACKAGE)
    assert set(DATA_LAYERS) <= set(graph)
    for i, m in enumerate(DATA_LAYERS):
        up = (graph[m] & set(DATA_LAYERS)) - set(DATA_LAYERS[:i])
        assert not up, f"{m} imports {sorted(up)}, which sit above it"
    assert graph["containers"] == {"errors", "files"}  # containers know nothing of groups or formats


def test_a_circle_through_an_import_inside_a_function_is_found(tmp_path):
    """The check itself can fail: a imports b at the top, b imports a inside a function (and c from the package)."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("import pkg.c\n\n\ndef f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from pkg import __version__\n")
    graph = import_graph(pkg)
    assert graph == {"__init__": set(), "a": {"b"}, "b": {"a", "c"}, "c": {"__init__"}}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()
