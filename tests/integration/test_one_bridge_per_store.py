"""A SQLite store serves one running bridge; a busy HTTP port is one line like a busy broker port (issue 14 review).

Two bridges on one SQLite file would each keep their CAs in memory and overwrite each other's commits, so the
second one is refused at start, and a bridge killed with SIGKILL leaves no lock behind (the kernel drops it).
"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from bridge.errors import ConfigError
from bridge.store import Change
from bridge.store.sqlite import SQLiteStore
from tests.conftest import ROOT, BridgeProcess, free_port
from tests.device import Device

APP = "tests/apps.py:Counter"


def ca_bridge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_a_second_bridge_on_the_same_sqlite_file_is_refused_and_a_killed_one_leaves_no_lock(bridge_factory):
    first = bridge_factory(APP).start()
    d = Device(first.port, "c1")
    try:
        assert d.call("record", "a") == 1
        second = ca_bridge("run", APP, "--db", str(first.db), "--listen", f"127.0.0.1:{free_port()}")
        assert second.returncode == 2
        assert "Traceback" not in second.stderr
        assert second.stderr.splitlines() == [
            f"ca-bridge: {first.db} is in use by another ca-bridge (pid {first.pid}); stop it, give this bridge its "
            "own --db, or use PostgreSQL for several bridges"]
        assert d.call("record", "a") == 2  # the first one is unaffected
        # the tools still work beside it: inspect reads, create writes one transaction
        assert ca_bridge("inspect", "--db", str(first.db), "c1").returncode == 0
        assert ca_bridge("create", "c2", "--db", str(first.db)).returncode == 0
    finally:
        d.close()
    first.kill()  # SIGKILL: no close, no cleanup; the kernel drops the lock with the process
    again = BridgeProcess(APP, first.db)
    try:
        again.start()
        d = Device(again.port, "c1")
        try:
            assert d.call("record", "a") == 3  # the same store, whole
        finally:
            d.close()
    finally:
        again.kill()


async def test_the_lock_is_the_writing_stores_alone(tmp_path):
    """In one process too: a second writing store on the file is refused; a read-only one and a non-exclusive one
    (`ca-bridge create`) are not; closing the first frees the file."""
    path = tmp_path / "s.db"
    first = SQLiteStore(path)
    await first.open()
    try:
        with pytest.raises(ConfigError, match=r"s\.db is in use by another ca-bridge \(pid \d+\)"):
            await SQLiteStore(path).open()
        for other in (SQLiteStore(path, read_only=True), SQLiteStore(path, exclusive=False)):
            await other.open()
            await other.close()
        await first.commit([Change("a", b"\xa0")])
    finally:
        await first.close()
    again = SQLiteStore(path)
    await again.open()
    try:
        assert await again.names() == ["a"]
    finally:
        await again.close()


def test_the_lock_file_is_ignored_by_git():
    out = subprocess.run(["git", "check-ignore", "--no-index", "-q", "examples/shop/bridge.db.lock"], cwd=ROOT)
    assert out.returncode == 0


@pytest.mark.parametrize("option", ["--http", "--metrics"])
def test_a_busy_http_or_metrics_port_is_one_line_naming_the_option(tmp_path, option):
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        out = ca_bridge("run", APP, "--db", str(tmp_path / "x.db"), "--listen", f"127.0.0.1:{free_port()}",
                        option, f"127.0.0.1:{port}")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and "Errno" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("ca-bridge:")]
    assert errors == [f"ca-bridge: {option} cannot listen on 127.0.0.1:{port}: address already in use (by "
                      f"scripts/run or another ca-bridge?); stop it first, or pass another {option} HOST:PORT"]
    assert out.stderr.splitlines()[-1] == errors[0]
