"""The package's shape: floors that import only downwards, no import cycles, light metric and index
modules, short functions."""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "gdf_pyg"

# Functions allowed past MAX_LINES, with the reason.
LONG_FUNCTIONS = {
    "gdf_pyg/cli.py:build_parser": "one declaration per command and option; splitting it scatters the CLI's help",
}
MAX_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """Every gdf_pyg module that ``name`` imports, at module level or inside functions."""
    is_package = path.name == "__init__.py"
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in modules and t != name)
    return out


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle of ``graph``, or [] when there is none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


# The floors, lowest first: a module imports modules of its own package or of a floor beneath.
FLOORS = ["utils", "presets", "data", "nn", "models", "engine", "retrieval", "training", "top"]


def _floor(module: str) -> int:
    """The floor of a module of gdf_pyg: its package's place in FLOORS; the top-level modules
    (the package itself, the command line, the demo, the moved-module aliases) sit on top."""
    parts = module.split(".")
    return FLOORS.index(parts[1]) if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else len(FLOORS) - 1


def _upward(graph: Dict[str, Set[str]]) -> List[str]:
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _floor(b) > _floor(a))


def test_imports_only_point_down_the_floors():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert {_floor(m) for m in modules} == set(range(len(FLOORS)))  # every floor has modules
    assert _upward(graph) == []
    assert not any(t.startswith("gdf_pyg.training") for m in modules if m.startswith("gdf_pyg.retrieval")
                   for t in graph[m])


def test_floor_check_finds_an_upward_import():
    graph = {"gdf_pyg.retrieval.search": {"gdf_pyg.training.run", "gdf_pyg.engine.inference"},
             "gdf_pyg.engine.encoding": {"gdf_pyg.data.loading"}, "gdf_pyg.cli": {"gdf_pyg.training.run"}}
    assert _upward(graph) == ["gdf_pyg.retrieval.search -> gdf_pyg.training.run"]


def test_no_import_cycles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["gdf_pyg.models.gdfnet"] >= {"gdf_pyg.nn.graph", "gdf_pyg.nn.aggregation"}  # the parser sees imports
    assert _cycle(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_checks_module_is_a_leaf():
    modules = _modules()
    assert _imports("gdf_pyg.utils.checks", modules["gdf_pyg.utils.checks"], modules) == set()


@pytest.mark.parametrize("module", ["gdf_pyg.retrieval.metrics", "gdf_pyg.retrieval.index"])
def test_metrics_and_index_load_no_model_libraries(module):
    code = (f"import sys, {module}; "
            "print([m for m in ('timm', 'torchvision', 'torch_geometric') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("old", ["gdf_pyg.graph", "gdf_pyg.metrics", "gdf_pyg.training.encoding"])
def test_moved_module_names_are_gone_as_announced(old):
    # 0.1's flat names and 0.7's training modules warned until 0.9 that they would stop working
    with pytest.raises(ModuleNotFoundError, match=old.replace(".", "\\.")):
        importlib.import_module(old)


def test_packages_export_their_names_on_first_use():
    import gdf_pyg
    import gdf_pyg.nn
    import gdf_pyg.retrieval
    from gdf_pyg import GDFNet, GDFNetConfig
    from gdf_pyg.nn import GDFLoss

    assert GDFNet.__module__ == GDFNetConfig.__module__ == "gdf_pyg.models.gdfnet"
    assert GDFLoss.__module__ == "gdf_pyg.nn.losses"
    assert "knn_graph" in gdf_pyg.nn.__all__ and "knn_graph" in dir(gdf_pyg.nn)
    assert gdf_pyg.retrieval.mean_average_precision.__module__ == "gdf_pyg.retrieval.metrics"
    with pytest.raises(AttributeError, match="module 'gdf_pyg.nn' has no attribute 'knn'"):
        gdf_pyg.nn.knn


def test_functions_are_short():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                key = f"{path.relative_to(ROOT)}:{node.name}"
                if lines > MAX_LINES and key not in LONG_FUNCTIONS:
                    long.append(f"{key} ({lines} lines)")
    assert long == []
