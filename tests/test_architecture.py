"""The package's shape: stages import one way, and no module imports another in a loop.

Every import counts, the ones inside functions and under TYPE_CHECKING included: a
function-level import that dodges a cycle hides it from Python, not from this test.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "platform" / "shiftlab"
# docs/interfaces.md: each stage may import the stages before it, never one after it.
STAGES = (
    "utils",
    "config",
    "data",
    "tracking",
    "generate",
    "models",
    "methods",
    "evaluate",
    "train",
    "sweep",
    "cli",
)


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str], root: Path = PACKAGE) -> Iterator[str]:
    """The package modules ``path`` imports, wherever in the file the import stands."""
    this = module_name(path, root)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != this:
                yield name


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    return {name: set(imports_of(path, set(files), root)) for name, path in files.items()}


def stage_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in STAGES:
        return None  # the package root (its public face) and __main__ stand above every stage
    return STAGES.index(parts[1])


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                item = stack.pop()
                group.append(item)
                if item == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def backward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(graph.items()):
        here = stage_of(module)
        for target in sorted(targets):
            there = stage_of(target)
            if target == "shiftlab" and here is not None:
                bad.append(f"{module} imports the package root (import the module you need)")
            elif here is not None and there is not None and there > here:
                bad.append(
                    f"{module} ({STAGES[here]}) imports {target} ({STAGES[there]}), a later stage"
                )
    return bad


def test_no_module_imports_in_a_cycle() -> None:
    assert cycles(import_graph()) == []


def test_stages_import_only_earlier_stages() -> None:
    assert backward_imports(import_graph()) == []


def test_every_module_belongs_to_a_stage() -> None:
    loose = [
        m
        for m in import_graph()
        if stage_of(m) is None and m not in ("shiftlab", "shiftlab.__main__")
    ]
    assert loose == []


@pytest.mark.parametrize("plant", ["cycle", "backward"])
def test_the_checks_catch_a_planted_fault(tmp_path: Path, plant: str) -> None:
    pkg = tmp_path / "shiftlab"
    for stage in ("utils", "config"):
        (pkg / stage).mkdir(parents=True)
        (pkg / stage / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    if plant == "cycle":
        (pkg / "config" / "a.py").write_text("def f():\n    from shiftlab.config import b\n")
        (pkg / "config" / "b.py").write_text("from shiftlab.config.a import f\n")
        assert cycles(import_graph(pkg)) == [["shiftlab.config.a", "shiftlab.config.b"]]
    else:
        (pkg / "config" / "a.py").write_text("x = 1\n")
        (pkg / "utils" / "u.py").write_text("def g():\n    from shiftlab.config.a import x\n")
        assert backward_imports(import_graph(pkg)) == [
            "shiftlab.utils.u (utils) imports shiftlab.config.a (config), a later stage"
        ]


def test_only_the_store_asks_whether_a_location_is_a_uri() -> None:
    """Locations are parsed once (`open_store`); stages call the store, never branch on kinds."""
    store = PACKAGE / "utils" / "store.py"
    asking = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p != store and "is_uri(" in p.read_text()
    ]
    assert asking == []


def test_no_function_is_longer_than_sixty_lines() -> None:
    """Functions short enough to read at once (as `ruff format` writes them)."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > 60:
                    long.append(
                        f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)"
                    )
    assert long == []
