"""The static import graph of ``vaura/`` (shared by the layer test and the DVC code-deps test).

Read with :mod:`ast`, never by importing: every ``import``/``from ... import`` anywhere in a file counts (module
level, inside functions, under ``if``), and so does ``importlib.import_module("vaura...")`` with a literal name.
``from vaura.pkg import name`` is an edge to ``vaura.pkg.name`` when that is a module, else to ``vaura.pkg``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = "vaura"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``<root>/vaura`` (packages by their ``__init__``)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _owner(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` starts with (``vaura.x.y.attr`` → ``vaura.x.y``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _imported(tree: ast.AST, module: str, is_package: bool, known: dict[str, Path]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                full = ".".join(base + ([node.module] if node.module else []))
            else:
                full = node.module or ""
            names = [f"{full}.{a.name}" if f"{full}.{a.name}" in known else full for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for name in names:
            if name.split(".")[0] == PACKAGE and (target := _owner(name, known)):
                found.add(target)
    found.discard(module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module → the vaura modules it imports (directly)."""
    known = modules(root)
    return {m: _imported(ast.parse(p.read_text(), str(p)), m, p.name == "__init__.py", known)
            for m, p in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (each is an import circle), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def closure(graph: dict[str, set[str]], start: str, skip: set[str] = frozenset()) -> set[str]:
    """Every module that running ``start`` can import: its imports, theirs, ..., plus each one's enclosing
    packages (importing ``vaura.a.b`` runs ``vaura/a/__init__.py`` first). Modules in ``skip`` are neither
    included nor followed."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node in seen or node in skip or node not in graph:  # a namespace package has no file
            continue
        seen.add(node)
        parts = node.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        todo += graph.get(node, ())
    return seen


def section(markdown: str, heading: str) -> str:
    """The text under ``heading`` (a ``#``-heading line) up to the next heading of the same or higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}\s*$", markdown, re.M)
    if match is None:
        raise AssertionError(f"heading {heading!r} not found")
    level = len(match.group(1))
    rest = markdown[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[: end.start()] if end else rest
