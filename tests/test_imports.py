"""The package's structure: no import cycle, and no module reaching into the loop's privates."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "trainingloop"


def _modules() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(("trainingloop", *parts)).removesuffix(".__init__")
        names[name] = path
    return names


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of the package that ``path`` imports at run time (not under TYPE_CHECKING)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names if alias.name in modules)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module not in modules:
                return
            submodules = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found.update(submodules)
            if len(submodules) < len(node.names):
                found.add(node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return found


def test_the_import_graph_has_no_cycle() -> None:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        # A package's parent is imported first by Python anyway: not an edge of the design.
        graph[name] = {d for d in _imports(path, modules) if d != name and not name.startswith(d + ".")}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name):], name]))
        if name in done:
            return
        for dependency in sorted(graph[name]):
            visit(dependency, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert "trainingloop.loop" in done and len(done) == len(modules)


def test_nothing_outside_loop_py_touches_the_loops_private_attributes() -> None:
    hits = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
            for path in PACKAGE.rglob("*.py") if path.name != "loop.py"
            for number, line in enumerate(path.read_text().splitlines(), 1)
            if re.search(r"\bloop\._[a-z]", line)]
    assert hits == []
