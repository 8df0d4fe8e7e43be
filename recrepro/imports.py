"""The static import graph of ``recrepro``: which library modules a module (or a notebook) uses.

Read from the source with :mod:`ast`, never by importing: function-local imports count like
top-level ones, ``if TYPE_CHECKING:`` imports do not (they never run), and ``from pkg import sub``
counts as an import of the submodule. The runner hashes a notebook's closure to decide whether a
stage must re-run (:func:`recrepro.runner.stage_stamp`); the layering test checks the same graph.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    return {module_name(p, package_dir): p for p in sorted(package_dir.rglob("*.py")) if "__pycache__" not in p.parts}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def imports_in(tree: ast.AST, modules: dict[str, Path], this: str = "") -> list[tuple[str, bool]]:
    """(imported recrepro module, imported inside a function) for every runtime import in ``tree``."""
    skipped = _type_checking_nodes(tree)
    local = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for n in ast.walk(f)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            targets = subs if len(subs) == len(node.names) else [node.module, *subs]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "recrepro":
                continue
            resolved = _resolve(target, modules)
            if resolved and resolved != this:
                found.append((resolved, id(node) in local))
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, list[tuple[str, bool]]]:
    modules = all_modules(package_dir)
    return {name: imports_in(ast.parse(path.read_text()), modules, name) for name, path in modules.items()}


def closure(start: set[str], graph: dict[str, list[tuple[str, bool]]]) -> set[str]:
    """Every module reachable from ``start`` (included), with the packages that hold them."""
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        todo += [target for target, _ in graph[name]]
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)  # importing a submodule runs its package's __init__
    return seen


def notebook_imports(notebook: Path, modules: dict[str, Path]) -> set[str]:
    """The recrepro modules a notebook's code cells import."""
    cells = json.loads(notebook.read_text()).get("cells", [])
    source = "\n".join("".join(c.get("source", "")) for c in cells if c.get("cell_type") == "code")
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]  # IPython magics
    return {target for target, _ in imports_in(ast.parse("\n".join(lines)), modules)}
