"""SQLite commits with synchronous=FULL unless told otherwise: in the store, in the settings, and from the CLI.

PRAGMA synchronous belongs to a connection, so each check reads it on the connection the store itself opened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from bridge.service import Bridge, Settings
from bridge.store.sqlite import SQLiteStore
from tests.apps import Counter
from tests.conftest import PYTHON, ROOT, free_port, stop

LEVELS = {1: "NORMAL", 2: "FULL", 3: "EXTRA"}  # what PRAGMA synchronous reads back


async def effective(store: SQLiteStore) -> str:
    """The synchronous level of the store's own connection (asked on its writer thread)."""
    level = await store._run(lambda: store._conn().execute("PRAGMA synchronous").fetchone()[0])
    return LEVELS.get(level, f"OFF or unknown ({level})")


async def test_the_store_opens_with_full_by_default(tmp_path):
    s = SQLiteStore(tmp_path / "default.db")
    await s.open()
    try:
        assert s.synchronous == "FULL"
        assert await effective(s) == "FULL"
    finally:
        await s.close()
    s = SQLiteStore(tmp_path / "normal.db", synchronous="NORMAL")  # the override reaches the connection too
    await s.open()
    try:
        assert await effective(s) == "NORMAL"
    finally:
        await s.close()


async def test_the_settings_default_to_full(tmp_path):
    assert Settings().synchronous == "FULL"
    b = Bridge(Counter, Settings(db=tmp_path / "b.db"))
    assert isinstance(b.store, SQLiteStore) and b.store.synchronous == "FULL"
    await b.store.open()
    try:
        assert await effective(b.store) == "FULL"
    finally:
        await b.store.close()


# `python -m bridge run ...` with the store's open wrapped to print the level of the connection it opened
SPY = """
import sys
from bridge import cli
from bridge.store.sqlite import SQLiteStore

opened = SQLiteStore._open

def spy(self):
    opened(self)
    print("SYNCHRONOUS", self._conn().execute("PRAGMA synchronous").fetchone()[0], flush=True)

SQLiteStore._open = spy
sys.exit(cli.main(sys.argv[1:]))
"""


def cli_level(tmp_path, *options: str) -> str:
    port = free_port()
    cmd = [PYTHON, "-c", SPY, "run", "tests/apps.py:Counter", "--db", str(tmp_path / f"cli{port}.db"),
           "--listen", f"127.0.0.1:{port}", "--pulse", "0", *options]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        for line in proc.stdout:  # the spy prints before the bridge says it is listening
            if line.startswith("SYNCHRONOUS "):
                return LEVELS.get(int(line.split()[1]), line.strip())
            if time.monotonic() > deadline:
                break
        pytest.fail(f"the bridge never opened its store (exit {proc.poll()})")
    finally:
        stop(proc, signal.SIGTERM)
        if proc.stdout is not None:
            proc.stdout.close()


def test_the_cli_runs_full_by_default(tmp_path):
    assert cli_level(tmp_path) == "FULL"
    assert cli_level(tmp_path, "--synchronous", "NORMAL") == "NORMAL"

