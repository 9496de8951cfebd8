"""A store belongs to one app: another app started on it is refused at start with one clear line (issue 14,
item 3: `ca-bridge run` of hellopersistent on the store helloworld had made loaded helloworld's CAs and failed every
call). The record names the app by file and class, so a moved checkout keeps its store."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.conftest import ROOT, BridgeProcess, free_port
from tests.device import Device

HELLOWORLD = "examples/helloworld/ca.py:HelloWorld"
HELLOPERSISTENT = "examples/hellopersistent/ca.py:HelloPersistent"


def run_briefly(app: str, db) -> subprocess.CompletedProcess[str]:
    """`ca-bridge run APP --db DB`, expected to refuse to start (a bridge that starts is stopped by the timeout)."""
    return subprocess.run([sys.executable, "-m", "bridge", "run", app, "--db", str(db), "--listen",
                           f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_another_app_on_a_store_is_refused_with_one_line(tmp_path):
    db = tmp_path / "bridge.db"
    hello = BridgeProcess(HELLOWORLD, db)
    hello.start()
    try:
        d = Device(hello.port, "foo-ca1")
        assert d.call("get_counter") >= 0
        d.close()
    finally:
        hello.stop()
    out = run_briefly(HELLOPERSISTENT, db)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "ca:HelloWorld" in lines[0] and "ca:HelloPersistent" in lines[0] and "--db" in lines[0]
    assert str(db) in lines[0]
    assert "listening" not in out.stdout

    # the owner starts again; so does the same app from a moved checkout (another directory, same file name)
    moved = tmp_path / "elsewhere" / "helloworld"
    shutil.copytree(ROOT / "examples" / "helloworld", moved)
    for app in (HELLOWORLD, f"{moved}/ca.py:HelloWorld"):
        again = BridgeProcess(app, db)
        again.start()
        try:
            d = Device(again.port, "foo-ca1")
            assert d.call("get_counter") >= 0  # its CA, loaded and working
            d.close()
        finally:
            again.stop()


def test_a_store_from_before_the_record_is_adopted_by_the_first_app(tmp_path):
    """Stores made before the app was recorded (schema 2) carry no record: the first app to run takes them."""
    import sqlite3

    db = tmp_path / "old.db"
    first = BridgeProcess("tests/apps.py:Counter", db)
    first.start()
    try:
        d = Device(first.port, "c1")
        assert d.call("record", "x") == 1
        d.close()
    finally:
        first.stop()
    conn = sqlite3.connect(db)
    conn.executescript("DROP TABLE meta; PRAGMA user_version = 2;")  # as a bridge before the record left it
    conn.close()
    adopter = BridgeProcess(HELLOPERSISTENT, db)
    adopter.start()
    adopter.stop()
    out = run_briefly("tests/apps.py:Counter", db)
    assert out.returncode == 2 and "ca:HelloPersistent" in out.stderr and "apps:Counter" in out.stderr
