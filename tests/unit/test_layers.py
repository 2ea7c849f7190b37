"""The import contract (run by `make lint` and `make test`): layers point one way, no cycles.

`consumers -> models -> stream`, never back; the core runs without Faust or Kafka clients;
the worker never imports the tools that measure it; no module imports itself through others.
Every import counts, at module level or inside a function: a deferred import is still a
dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("stream", "models", "consumers")  # each may import only those before it
BUS_CLIENTS = ("faust", "aiokafka", "confluent_kafka", "mode")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["streamrec", *parts])


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _graph() -> dict[str, set[str]]:
    """Our modules -> the modules of ours they import."""
    paths = [p for layer in LAYERS for p in (ROOT / layer).rglob("*.py")]
    modules = {_module_name(p): p for p in paths}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


GRAPH = _graph()
EXTERNAL = {
    name: _imports(ROOT / Path(*name.split(".")[1:]).with_suffix(".py"))
    if (ROOT / Path(*name.split(".")[1:]).with_suffix(".py")).exists()
    else _imports(ROOT / Path(*name.split(".")[1:]) / "__init__.py")
    for name in GRAPH
}


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_the_layers_point_one_way() -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))
    ]
    assert not wrong, "consumers -> models -> stream, never back:\n" + "\n".join(sorted(wrong))


def test_the_core_and_the_bus_contract_run_without_faust_or_kafka_clients() -> None:
    wrong = [
        f"{module} imports {name}"
        for module, names in EXTERNAL.items()
        if _layer(module) == "models"
        for name in names
        if name.split(".")[0] in BUS_CLIENTS
    ]
    assert not wrong, "models/ is plain Python/PyTorch:\n" + "\n".join(sorted(wrong))


TOOLS_AND_CLI = ("streamrec.consumers.tools", "streamrec.consumers.cli")


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("streamrec.consumers.worker", TOOLS_AND_CLI),
        # The trainer shares only the bus plumbing with the worker (streamrec.stream.readers).
        ("streamrec.consumers.trainer", (*TOOLS_AND_CLI, "streamrec.consumers.worker")),
    ],
)
def test_the_running_processes_never_import_the_tools_or_the_cli(room: str, forbidden: tuple[str, ...]) -> None:
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.startswith(room)
        for target in targets
        if target.startswith(forbidden)
    ]
    assert not wrong, "\n".join(sorted(wrong))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    # A package's __init__ re-exporting its modules is not a cycle of meaning: leave those out.
    graph = {
        module: {t for t in targets if not (module.startswith(t + ".") or t.startswith(module + "."))}
        for module, targets in GRAPH.items()
    }
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
