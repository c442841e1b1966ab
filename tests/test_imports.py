"""No import cycles between fedquad's modules, function-level (lazy) imports included.

Every ``import fedquad.x`` and ``from fedquad.x import y`` anywhere in a module (top level, inside
functions, ``try`` blocks) is an edge to ``fedquad.x``, and to ``fedquad.x.y`` when that is a
module; importing a package imports its ``__init__``, so its re-exports count. Imports under
``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fedquad

SRC = Path(fedquad.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _resolve(node: ast.ImportFrom, importer: str) -> str:
    if not node.level:
        return node.module or ""
    package = importer if MODULES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def edges(importer: str) -> set[str]:
    """The fedquad modules that running ``importer`` imports, directly or lazily."""
    named: set[str] = set()
    for node in _imports(ast.parse(MODULES[importer].read_text())):
        if isinstance(node, ast.Import):
            named |= {alias.name for alias in node.names}
        else:
            base = _resolve(node, importer)
            named |= {base, *(f"{base}.{alias.name}" for alias in node.names)}
    named = {n for n in named if n in MODULES}
    # importing ``a.b.c`` runs ``a`` and ``a.b`` first; the importer's own packages are already
    # running by then, so only other packages are edges
    parents = {".".join(n.split(".")[:i]) for n in named for i in range(1, n.count(".") + 1)}
    parents = {p for p in parents if not importer.startswith(p + ".")}
    return (named | (parents & MODULES.keys())) - {importer}


def import_graph() -> dict[str, set[str]]:
    return {m: edges(m) for m in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walk_sees_lazy_and_package_imports():
    graph = import_graph()
    assert len(MODULES) > 40
    # a function-level import is an edge: execute() loads the Flower engines when asked
    assert "fedquad.engines.flower_sim" in graph["fedquad.engines"]
    # a TYPE_CHECKING-only import is none
    assert "fedquad.workbench" not in graph["fedquad.engines"]
    # a package import reaches its __init__, which imports what it re-exports
    assert "fedquad.planners" in graph["fedquad.server.configure"]
    assert "fedquad.planners.methods" in graph["fedquad.planners"]


def test_find_cycle_names_the_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
