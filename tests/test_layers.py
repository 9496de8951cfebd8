"""The import rules of bridge/: every module sits in a declared layer and imports only its own layer or lower ones,
with no import circle anywhere (imports under TYPE_CHECKING and inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[1] / "bridge"

# lowest first; a module may import modules of its own layer or of the layers before it, never a later one
LAYERS: list[set[str]] = [
    {"errors", "faults", "logs"},
    {"codec"},
    {"protocol"},
    {"session", "app", "device"},
    {"store"},
    {"metrics"},
    {"cluster"},
    {"committer", "workers"},
    {"actor"},
    {"admission", "router"},
    {"runtime"},
    {"ingress"},
    {"mqtt", "broker", "amqtt_plugins", "auth", "http", "inspect", "dashboard"},
    {"service"},
    {"cli", "migrate", "testing", "__main__", "__init__"},
]


def rank_of(layers: list[set[str]]) -> dict[str, int]:
    return {name: i for i, layer in enumerate(layers) for name in layer}


def module_name(path: Path, root: Path) -> str:
    """The layer name of a file: its top-level module under bridge/ (a package's files count as the package)."""
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imports(path: Path, root: Path) -> set[str]:
    """The bridge modules a file imports, anywhere in it."""
    found: set[str] = set()
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "bridge":  # from bridge import codec: a module, or a name of bridge/__init__.py
                for alias in node.names:
                    sub = root / alias.name
                    names.append(f"bridge.{alias.name}" if sub.is_dir() or sub.with_suffix(".py").exists()
                                 else "bridge.__init__")
            else:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "bridge":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def graph(root: Path) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        mod = module_name(path, root)
        edges.setdefault(mod, set()).update(imports(path, root) - {mod})
    return edges


def violations(edges: dict[str, set[str]], layers: list[set[str]]) -> list[str]:
    rank = rank_of(layers)
    found = [f"{mod} is in no layer of tests/test_layers.py" for mod in sorted(edges) if mod not in rank]
    for mod, deps in sorted(edges.items()):
        for dep in sorted(deps):
            if mod in rank and dep in rank and rank[dep] > rank[mod]:
                found.append(f"{mod} imports {dep}, a higher layer")
    found.extend(f"import circle: {' -> '.join(cycle)}" for cycle in cycles(edges))
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle through each module that is on one (depth-first search)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        path.append(mod)
        for dep in sorted(edges.get(mod, ())):
            if state.get(dep) == 1:
                found.append([*path[path.index(dep):], dep])
            elif dep not in state:
                visit(dep)
        path.pop()
        state[mod] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod)
    return found


def test_bridge_imports_follow_the_layers():
    assert violations(graph(BRIDGE), LAYERS) == []


def test_the_lower_layers_never_import_the_runtime_the_service_or_the_cli():
    edges = graph(BRIDGE)
    for low in ("errors", "codec", "protocol", "session", "store", "committer", "actor"):
        assert not edges.get(low, set()) & {"runtime", "service", "cli", "ingress", "testing"}, low


def test_the_rules_catch_an_upward_import_and_a_circle(tmp_path):
    root = tmp_path / "bridge"
    (root / "store").mkdir(parents=True)
    (root / "codec.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bridge.runtime import X\n")
    (root / "runtime.py").write_text("from bridge import codec\n")
    (root / "store" / "__init__.py").write_text("def f():\n    from bridge.store.sqlite import S\n")
    (root / "store" / "sqlite.py").write_text("import bridge.store\n")
    (root / "actor.py").write_text("from bridge.committer import Pending\n")
    (root / "committer.py").write_text("from bridge.actor import Actor\n")
    (root / "rogue.py").write_text("")
    found = violations(graph(root), LAYERS)
    assert "codec imports runtime, a higher layer" in found
    assert "committer imports actor, a higher layer" in found
    assert "rogue is in no layer of tests/test_layers.py" in found
    assert any(f.startswith("import circle:") and "codec" in f and "runtime" in f for f in found)
    assert any(f.startswith("import circle:") and "actor" in f and "committer" in f for f in found)
    assert not any("store" in f for f in found)  # a package's own files import each other freely
