"""The import graph of the project's own modules (read with ``ast``, nothing imported): dependencies point down.

The framework (``dwakd/``) never imports a plug-in (``baselines/``), and no two modules import each other, directly
or through others (docs/DESIGN.md "Lessons from our own code")."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dwakd", "baselines")


def _modules() -> dict[str, Path]:
    """Module name → file of every module of ``PACKAGES`` (a package under its own name)."""
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imported(name: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The project modules an import statement of module ``name`` reads (the nearest enclosing module of each
    imported name; ``from pkg import mod`` is the module ``pkg.mod``)."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if MODULES[name].name == "__init__.py" else name.split(".")[:-1]
            package = package[:len(package) - node.level + 1]
            base = ".".join(package + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    found = []
    for t in targets:
        while t and t not in MODULES:
            t = t.rpartition(".")[0]
        if t and t != name:
            found.append(t)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (anywhere in the file: top level or inside a function)."""
    graph = {}
    for name, path in MODULES.items():
        nodes = ast.walk(ast.parse(path.read_text(), str(path)))
        graph[name] = {m for n in nodes if isinstance(n, (ast.Import, ast.ImportFrom)) for m in _imported(name, n)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan): each holds an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_the_framework_never_imports_a_baseline():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() if a.split(".")[0] == "dwakd"
                    for b in targets if b.split(".")[0] == "baselines")
    assert not upward, f"dwakd/ imports baselines/: {upward}"


def test_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(g) for g in found)


def test_the_graph_sees_every_kind_of_import():
    """The parser finds top-level, function-level, relative and ``from pkg import module`` imports."""
    graph = import_graph()
    assert "dwakd.registry" in graph["dwakd.methods.sft"]  # from dwakd.registry import register
    assert "dwakd.align.tokens" in graph["dwakd.align"]  # from dwakd.align.tokens import (...)
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
