"""The import structure: the aggregator process loads no worker or master code, importing the package
loads nothing until a name is asked for, and no module imports itself back through others (a cycle).

The graph checks read the sources (``ast``), with relative imports resolved and the imports inside
functions counted too (a cycle hidden in a function still breaks the first call made while one of its
modules is half-initialised); only ``if TYPE_CHECKING:`` blocks, which never run, are left out.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What the aggregator must never load: the worker's and the master's code, the C request path, and the
# profiling modules that sample a process (the aggregator only renders and merges what workers sent).
WORKER_SIDE = ("rockstar_mp.worker", "rockstar_mp.master", "rockstar_mp._hotpath", "rockstar_mp.gunicorn",
               "rockstar_mp.metrics", "rockstar_mp.profiling.samplers", "rockstar_mp.profiling.heap",
               "rockstar_mp.profiling.threads", "rockstar_mp.profiling.trace", "rockstar_mp.profiling.collector")

# Cycles being removed on another branch; each entry goes once its fix is merged (the test says so).
ALLOWED_CYCLES: set[frozenset[str]] = set()  # none left


def modules_loaded_by(code: str) -> set[str]:
    """Every module a fresh interpreter holds after running ``code`` (``sys.modules``: ``-X importtime``
    misses what ``importlib.import_module`` loads, as the lazy packages do)."""
    report = "import json, sys; print(json.dumps(sorted(sys.modules)), file=sys.stderr)"
    done = subprocess.run([sys.executable, "-c", f"import sys\ntry:\n    {code}\nfinally:\n    {report}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stderr.splitlines()[-1]))


def worker_side(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == w or m.startswith(w + ".") for w in WORKER_SIDE))


# -- the static import graph -------------------------------------------------------------------------------
def _module_files(package: str) -> dict[str, tuple[Path | None, bool]]:
    """``{module name: (source file or None for a C extension, is a package)}`` under ``package``."""
    found: dict[str, tuple[Path | None, bool]] = {}
    for path in (ROOT / package).rglob("*"):
        parts = list(path.relative_to(ROOT).parts)
        if path.suffix == ".py":
            parts[-1] = path.stem
            is_package = parts[-1] == "__init__"
            found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
        elif path.suffix in (".c", ".so"):
            parts[-1] = path.name.split(".")[0]
            found.setdefault(".".join(parts), (None, False))
    return found


def _run_time_nodes(tree: ast.AST):
    """Every node of ``tree`` that can run: all but the bodies of ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def _imported_names(module: str, is_package: bool, tree: ast.AST, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``tree`` imports where it can run (inside functions too)."""
    names: set[str] = set()
    for node in _run_time_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:  # "from package import submodule" imports the submodule
                submodule = f"{target}.{alias.name}"
                names.add(submodule if submodule in modules else target)
    return {name for name in names if name in modules and name != module}


def import_graph(package: str) -> dict[str, set[str]]:
    """``{module: the modules of the same package it imports}`` for every module under ``package``."""
    files = _module_files(package)
    graph: dict[str, set[str]] = {}
    for module, (path, is_package) in files.items():
        tree = ast.parse(path.read_text(), str(path)) if path is not None else ast.Module(body=[], type_ignores=[])
        graph[module] = _imported_names(module, is_package, tree, set(files))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


# -- the tests ------------------------------------------------------------------------------------------------
def test_the_aggregator_process_loads_no_worker_code():
    # what ``python -m rockstar_mp.aggregator --help`` loads: every module-level import of the process
    loaded = modules_loaded_by("sys.argv[1:] = ['--help']; import runpy; "
                               "runpy.run_module('rockstar_mp.aggregator', run_name='__main__', alter_sys=True)")
    assert "rockstar_mp.aggregator.http" in loaded and "rockstar_mp.profiling.rendering" in loaded
    assert worker_side(loaded) == []


def test_no_aggregator_module_imports_worker_code_even_inside_a_function():
    graph = import_graph("rockstar_mp")
    assert worker_side(reachable(graph, "rockstar_mp.aggregator.__main__")) == []


def test_importing_the_package_loads_no_submodule_until_a_name_is_used():
    loaded = modules_loaded_by("import rockstar_mp, rockstar_mp.profiling")
    assert sorted(m for m in loaded if m.startswith("rockstar_mp")) == [
        "rockstar_mp", "rockstar_mp._lazy", "rockstar_mp.profiling"]


@pytest.mark.parametrize("package", ["rockstar_mp", "rockstar_mp.profiling"])
def test_every_public_name_of_a_lazy_package_resolves(package):
    code = (f"import importlib; p = importlib.import_module({package!r}); "
            "missing = [n for n in p.__all__ if not hasattr(p, n)]; "
            "assert not missing, missing; assert set(p.__all__) <= set(dir(p))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("package", ["rockstar_mp", "benchmarks"])
def test_the_import_graph_has_no_cycles(package):
    found = set(cycles(import_graph(package)))
    assert [sorted(c) for c in found - ALLOWED_CYCLES] == []
    stale = {c for c in ALLOWED_CYCLES if next(iter(c)).startswith(package + ".")} - found
    assert not stale, f"these cycles are gone: remove them from ALLOWED_CYCLES: {stale}"
