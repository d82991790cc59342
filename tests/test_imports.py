"""The package's shape: no import cycle, core modules never import a recipe, recipes never import each other."""

from __future__ import annotations

import ast
import os

import seqtune

PACKAGE_DIR = os.path.dirname(os.path.abspath(seqtune.__file__))
ENTRY_POINTS = {"seqtune.cli", "seqtune.demo"}  # they start recipes; nothing imports them


def module_name(path: str) -> str:
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")].replace(os.sep, ".")
    return relative.removesuffix(".__init__")


def package_modules() -> dict[str, str]:
    found = {}
    for root, _, names in os.walk(PACKAGE_DIR):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found[module_name(path)] = path
    return found


def imported_modules(name: str, path: str, known: set[str]) -> set[str]:
    """seqtune modules that `name` imports anywhere in its file (inside functions too: a lazy import
    still makes a cycle, it only hides it until the function runs)."""
    is_package = path.endswith("__init__.py")
    package = name if is_package else name.rpartition(".")[0]
    imported = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from . import checkpoints` imports a module; `from .x import y` imports module x.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        imported.update(target for target in targets if target in known and target != name)
    return imported - {"seqtune"}


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imported_modules(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    visiting, done = [], set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node) :] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for node in sorted(graph):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_the_graph_sees_relative_and_lazy_imports():
    graph = import_graph()
    assert "seqtune.checkpoints" in graph["seqtune.recipes.accelerate_loop"]  # `from .. import checkpoints`
    assert "seqtune.recipes.common" in graph["seqtune.recipes.trainer"]  # `from .common import ...`
    assert "seqtune.xla" in graph["seqtune.runtime"]  # imported inside a function
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle():
    assert find_cycle(import_graph()) is None


def test_core_modules_never_import_a_recipe_and_recipes_never_import_each_other():
    graph = import_graph()
    shared = {"seqtune.recipes", "seqtune.recipes.common"}
    for name, targets in graph.items():
        recipes = {target for target in targets if target.startswith("seqtune.recipes.") and target not in shared}
        if name.startswith("seqtune.recipes.") or name in ENTRY_POINTS:
            assert name in ENTRY_POINTS or not recipes, f"{name} imports another recipe: {recipes}"
        else:
            assert not recipes and "seqtune.recipes.common" not in targets, f"core module {name} imports {targets}"
