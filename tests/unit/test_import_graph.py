"""The import graph of ``recrepro``: no cycles, and every import points down the layers.

Layers, lowest first (README "Layout"): base (config, io, metrics, paper) -> data (the benchmark,
the classic models behind the SASRec tool, tables and reports over saved rows) -> tools -> agent ->
rl and trained baselines -> stages (the notebooks' entry points and the CLIs). Function-local imports
count like top-level ones; ``if TYPE_CHECKING:`` imports do not (they never run). A function-local
import of a recrepro module is allowed only where it keeps a heavy dependency out of a light module
(:data:`LAZY_ALLOWED`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recrepro.imports import all_modules, import_graph, imports_in

LAYERS = {  # module (or package prefix) -> layer; the longest matching prefix wins
    "recrepro": 0, "recrepro.config": 0, "recrepro.config_sections": 0, "recrepro.io": 0, "recrepro.stamps": 0, "recrepro.metrics": 0, "recrepro.paper": 0,
    "recrepro.paths": 0, "recrepro.progress": 0, "recrepro.quiet": 0,
    "recrepro.data": 1, "recrepro.models": 1, "recrepro.tables": 1, "recrepro.evaluation": 1,
    "recrepro.positions": 1, "recrepro.significance": 1, "recrepro.jobs": 1, "recrepro.baselines": 1,
    "recrepro.baselines.recbole_compat": 1, "recrepro.baselines.sequential": 1,
    "recrepro.baselines.sequential_scorer": 1, "recrepro.baselines.simple": 1,
    "recrepro.tools": 2,
    "recrepro.agent": 3,
    "recrepro.rl": 4, "recrepro.baselines.sft": 4, "recrepro.baselines.sdpo": 4, "recrepro.baselines.rere": 4,
    "recrepro.baselines.constrained": 4,
    "recrepro.baselines.llara": 4, "recrepro.baselines.llara_eval": 4,
    "recrepro.stages": 5, "recrepro.runner": 5, "recrepro.__main__": 5,
}
# (importer, imported): lazy on purpose. RecBole takes ~2 s to import; the tools load it only with a SASRec space.
LAZY_ALLOWED = {("recrepro.tools.space", "recrepro.baselines.sequential_scorer")}


def layer_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(f"{module}: no layer assigned in LAYERS")


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_on_known_graphs():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a2"}, "a2": set(), "x": {"y"}, "y": {"x"}}) == ["x", "y", "x"]


def test_imports_in_counts_function_local_imports_and_skips_type_checking():
    import ast

    modules = {"recrepro.a": Path("a.py"), "recrepro.b": Path("b.py"), "recrepro.c": Path("c.py")}
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from recrepro.c import C\n"
                     "def f():\n    from recrepro.b import g\n    return g\n")
    assert imports_in(tree, modules, "recrepro.a") == [("recrepro.b", True)]


def test_no_import_cycles():
    edges = {name: {target for target, _ in found} for name, found in import_graph().items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_point_down_the_layers():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
              for name, found in import_graph().items() for target, _ in found
              if layer_of(target) > layer_of(name)]
    assert not upward, "\n".join(upward)


def test_function_local_imports_only_for_heavy_dependencies():
    local = sorted({(name, target) for name, found in import_graph().items() for target, is_local in found
                    if is_local and (name, target) not in LAZY_ALLOWED})
    assert not local, "\n".join(f"{name}: function-local import of {target}" for name, target in local)


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_every_module_has_a_layer(name):
    assert layer_of(name) in range(6)


def test_run_folders_are_built_only_by_the_paths_module():
    """``runs/<profile>/<folder>`` is spelled in recrepro/paths.py alone (issue 13: one paths module), except
    the run's two output folders, which ``Profile.results_dir`` / ``figures_dir`` name beside ``Profile.run_dir``."""
    allowed = {('recrepro.config_sections', 'return self.run_dir(root) / "results"'),
               ('recrepro.config_sections', 'return self.run_dir(root) / "figures"')}
    spelled = [f"{name}: {line.strip()}" for name, path in all_modules().items() if name != "recrepro.paths"
               for line in path.read_text().splitlines()
               if ("run_dir(root) /" in line or "run_dir(Path(root)) /" in line) and (name, line.strip()) not in allowed]
    assert not spelled, "\n".join(spelled)


MAX_MODULE_LINES = 450  # issue 13: past this a module holds more than one job; split it


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_no_library_module_is_over_the_size_limit(name):
    lines = len(all_modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name}: {lines} lines (> {MAX_MODULE_LINES}); split it by job"
