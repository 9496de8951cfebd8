"""No upward arrows: the stores (bridge/store/) and the cluster policy (bridge/cluster.py) import nothing from the
layers above them, not even for type checking or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UPPER = ("runtime", "actor", "service", "cli", "ingress", "committer", "testing", "dashboard", "mqtt", "broker",
         "http", "migrate", "inspect")
LOWER = sorted([*(ROOT / "bridge" / "store").glob("*.py"), ROOT / "bridge" / "cluster.py"])


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every module ``path`` (or ``source`` as if it were there) imports anywhere, TYPE_CHECKING blocks and
    function bodies included, as absolute names; ``from bridge import x`` counts as ``bridge.x`` too."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def upward(path: Path, source: str | None = None) -> list[str]:
    return sorted(m for m in imported_modules(path, source) if any(m == f"bridge.{u}" or m.startswith(f"bridge.{u}.")
                                                          for u in UPPER))


def test_the_lower_layers_are_all_checked():
    names = {p.relative_to(ROOT).as_posix() for p in LOWER}
    assert {"bridge/cluster.py", "bridge/store/__init__.py", "bridge/store/base.py", "bridge/store/sqlite.py",
            "bridge/store/postgres.py", "bridge/store/membership.py"} <= names


@pytest.mark.parametrize("path", LOWER, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_upward_imports(path):
    assert upward(path) == []


def test_the_check_sees_type_checking_blocks_lazy_and_relative_imports():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from bridge.runtime import Runtime\n"
              "def f():\n    from bridge import service\n    import bridge.cli\n    from ..actor import Actor\n"
              "from bridge.store.base import Store\nfrom bridge import errors\nfrom . import memory\n")
    found = upward(ROOT / "bridge" / "store" / "probe.py", source)
    assert found == ["bridge.actor", "bridge.actor.Actor", "bridge.cli", "bridge.runtime", "bridge.runtime.Runtime",
                     "bridge.service"]
