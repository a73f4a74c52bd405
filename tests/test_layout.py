"""The package's layout is its design: stages import each other one way only, and no module
imports itself back through a circle.

Every ``import`` / ``from ... import`` of the package is read with :mod:`ast` (including imports
inside functions: a deferred import is still a dependency), resolved to a module of ``bench`` and
checked against :data:`ALLOWED` — the rules the README's "Layout" section states.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bench"

#: what each part of the package may import (besides itself); a part is a stage sub-package
#: (``bench.data``) or a top-level module (``bench.registry``). "*" = anything.
ALLOWED: dict[str, set[str]] = {
    "bench.registry": set(),
    "bench.data": {"bench.registry"},
    "bench.models": {"bench.data", "bench.registry"},
    "bench.records": set(),
    "bench.run": {"bench.data", "bench.models", "bench.records", "bench.registry"},
    "bench.report": {"bench.records"},
    "bench.api": {"bench.data", "bench.models", "bench.registry"},
    "bench.cli": {"*"},
    "bench.perf": {"*"},
    "bench.__main__": {"bench.cli"},
    "bench": set(),
}
#: the plugin folders: a method may use the models and data layers, a scenario the data layer
PLUGIN_ALLOWED: dict[str, set[str]] = {
    "methods": {"bench.api", "bench.models", "bench.data", "bench.registry"},
    "datasets": {"bench.api", "bench.data", "bench.registry"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The ``bench`` modules ``path`` (module ``name``) imports, resolved to known modules."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from bench.data import digits`` imports the module bench.data.digits
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        for target in targets:
            if target == "bench" or target.startswith("bench."):
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in known and target != name:
                    found.add(target)
    return found


def part_of(module: str) -> str:
    """The part of the package a module belongs to (its stage, or the top-level module)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def graph() -> dict[str, set[str]]:
    modules = package_modules()
    known = set(modules)
    return {name: imports_of(path, name, known) for name, path in modules.items()}


def test_every_part_has_a_rule() -> None:
    assert {part_of(m) for m in package_modules()} <= set(ALLOWED)


def wrong_directions(edges: dict[str, set[str]]) -> list[str]:
    wrong = []
    for module, targets in edges.items():
        part = part_of(module)
        allowed = ALLOWED[part]
        for target in sorted(targets):
            other = part_of(target)
            if other != part and "*" not in allowed and other not in allowed:
                wrong.append(f"{module} imports {target} ({part} may import "
                             f"{sorted(allowed) or 'nothing of bench'})")
    return wrong


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    return cycles


def test_stages_import_one_way_only() -> None:
    wrong = wrong_directions(graph())
    assert not wrong, "\n".join(wrong)


def test_no_import_circles() -> None:
    cycles = find_cycles(graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("folder", sorted(PLUGIN_ALLOWED))
def test_plugins_use_only_their_layers(folder: str) -> None:
    known = set(package_modules())
    wrong = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for target in imports_of(path, f"plugin.{path.stem}", known):
            if part_of(target) not in PLUGIN_ALLOWED[folder]:
                wrong.append(f"{folder}/{path.name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_a_forbidden_import_and_a_circle(tmp_path: Path) -> None:
    """The checks above can fail: a deferred import against the direction, and a circle."""
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from bench.run import engine\n")
    known = set(package_modules())
    edges = {"bench.report.x": imports_of(bad, "bench.report.x", known)}
    assert edges == {"bench.report.x": {"bench.run.engine"}}
    assert wrong_directions(edges) == [
        "bench.report.x imports bench.run.engine (bench.report may import ['bench.records'])"]
    ring = {"bench.run.a": {"bench.run.b"}, "bench.run.b": {"bench.run.c"},
            "bench.run.c": {"bench.run.a"}}
    assert find_cycles(ring) == [["bench.run.a", "bench.run.b", "bench.run.c", "bench.run.a"]]


#: the third-party packages a part may import (besides the standard library): records are
#: read anywhere, and the report rebuilds a leaderboard without torch
THIRD_PARTY_ALLOWED: dict[str, set[str]] = {
    "bench.records": {"pydantic"},  # the record schema
    "bench.report": {"scipy", "matplotlib"},
}


def third_party_imports(path: Path) -> set[str]:
    """The top-level names of the non-``bench``, non-standard-library modules ``path``
    imports (deferred imports included)."""
    import sys

    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module] if isinstance(node, ast.ImportFrom) and not node.level
                 else [])
        for name in names:
            top = (name or "").split(".")[0]
            if top and top != "bench" and top not in sys.stdlib_module_names:
                found.add(top)
    return found


@pytest.mark.parametrize("part", sorted(THIRD_PARTY_ALLOWED))
def test_records_and_report_need_no_training_stack(part: str) -> None:
    wrong = [f"{name} imports {sorted(extra)}" for name, path in package_modules().items()
             if part_of(name) == part
             and (extra := third_party_imports(path) - THIRD_PARTY_ALLOWED[part])]
    assert not wrong, "\n".join(wrong)
