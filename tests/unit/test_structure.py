"""The package's shape, checked from its source (no imports run): the doors stay where they are.

- Sessions to the servers open in devenv.clients only: pgwire and resp speak the protocols,
  connect is the door (psycopg and redis-py sit behind it too).
- No module imports another module's `_private` names.
- No module is over 700 lines.
- No import circles, deferred imports inside functions included (TYPE_CHECKING ones aside).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "devenv"
MAX_LINES = 700
# Calls that open a session to a server, and the only modules allowed to make them.
SESSION_CALLS = {"psycopg.connect", "pgwire.Connection", "resp.Connection", "redis_module.Redis",
                 "socket.create_connection", "Redis.from_url"}
SESSION_MODULES = {"devenv.clients.connect", "devenv.clients.pgwire", "devenv.clients.resp"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _tree(name: str) -> ast.Module:
    return ast.parse(MODULES[name].read_text(encoding="utf-8"), filename=str(MODULES[name]))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if MODULES[module].name == "__init__.py" else 0)]
    return ".".join([*base, node.module] if node.module else base)


def test_the_package_is_found() -> None:
    assert {"devenv.clients.connect", "devenv.cli.main", "devenv.db.janitor", "devenv.runtime.base"} <= set(MODULES)


def test_sessions_open_only_through_the_door() -> None:
    found = []
    for name in MODULES:
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.Call) and _dotted(node.func) in SESSION_CALLS and name not in SESSION_MODULES:
                found.append(f"{name}:{node.lineno}: {_dotted(node.func)}(...)")
    assert not found, "open sessions through devenv.clients.connect:\n" + "\n".join(found)


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for name in MODULES:
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                source = _resolve(name, node)
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__") and source.startswith("devenv"):
                        found.append(f"{name}:{node.lineno}: from {source} import {alias.name}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_small(name: str) -> None:
    lines = MODULES[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines: split it by job (at most {MAX_LINES})"


def _imports(name: str) -> set[str]:
    """devenv modules `name` imports, at module level or inside functions (not under TYPE_CHECKING)."""
    tree = _tree(name)
    typing_only = {id(inner) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and _dotted(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for inner in ast.walk(node)}
    targets: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
            source = _resolve(name, node)
            targets.add(source)
            targets.update(f"{source}.{alias.name}" for alias in node.names)
    # A package's __init__ is loaded before its modules: importing it from one of them is no circle.
    return {target for target in targets if target in MODULES and target != name
            and not (MODULES[target].name == "__init__.py" and name.startswith(target + "."))}


def test_no_import_circles() -> None:
    """Imports deferred into functions count too: a circle there still ties two rooms together."""
    graph = {name: _imports(name) for name in MODULES}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        order[node] = low[node] = len(order)
        stack.append(node)
        for target in graph[node]:
            if target not in order:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], order[target])
        if low[node] == order[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(graph):
        if name not in order:
            connect(name)
    assert not circles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in circles)
