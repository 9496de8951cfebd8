"""Fixtures for Harness-based unit tests: a CA whose method runs a test-supplied script."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bridge import CA, AppError, method
from bridge.testing import Harness

SCRIPTS: dict[str, Callable[[CA], Any]] = {}


class Scripted(CA):
    """``run(name)`` executes SCRIPTS[name](self) inside a real call."""

    @method
    async def run(self, name):
        return SCRIPTS[name](self)

    @method
    async def run_then_fail(self, name):
        SCRIPTS[name](self)
        raise AppError("fail on purpose")


@pytest.fixture(params=["memory", "sqlite"])
async def harness(request, tmp_path):
    db = None if request.param == "memory" else tmp_path / "h.db"
    async with Harness(Scripted, db=db) as h:
        yield h
    SCRIPTS.clear()


@pytest.fixture
def script():
    """Register scripts: ``script("name", fn)``; ``await h.call(ca, sid, "run", "name")`` runs it."""

    def register(name: str, fn: Callable[[CA], Any]) -> str:
        SCRIPTS[name] = fn
        return name

    return register
