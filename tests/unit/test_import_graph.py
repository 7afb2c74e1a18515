"""The project's import graph, read from the source (module-level and function-level imports
alike): no cycle between modules, and no arrow back up the layers. `converters` (the conversion
tool) knows nothing of the models or the stack; `triton_models` nothing of the stack;
`embeddings_api` (its own image) nothing of the rest."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO_ROOT

PACKAGES = ("converters", "triton_models", "scripts", "embeddings_api")
# a package may import those listed (and itself)
ALLOWED = {"converters": set(), "triton_models": {"converters"}, "scripts": {"converters", "triton_models",
                                                                           "embeddings_api"}, "embeddings_api": set()}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for package in PACKAGES for p in (REPO_ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            targets |= {m for m in imported if m in files and m != name}
        graph[name] = targets
    return graph


def test_no_module_imports_up_the_layers():
    back = [f"{a} -> {b}" for a, targets in _graph().items() for b in targets
            if b.split(".")[0] != a.split(".")[0] and b.split(".")[0] not in ALLOWED[a.split(".")[0]]]
    assert not back, back


def test_no_import_cycle():
    graph, state, cycles = _graph(), {}, []

    def visit(node, path):
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles
