"""tests/procs.py, the process starter the tests, the chaos and load runners and the benchmarks share: a bridge is
ready at its "listening" line, not at "waiting for broker"; a spawned process dies with the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from tests.procs import ROOT, is_ready, spawn, stop, wait_output


def _printer(*lines: str) -> subprocess.Popen[bytes]:
    """A child that prints ``lines`` and then waits for its stdin to close."""
    code = "import sys\n" + "".join(f"print({line!r}, flush=True)\n" for line in lines) + "sys.stdin.read()\n"
    return spawn([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)


def test_the_ready_line_is_listening_not_waiting_for_the_broker():
    assert is_ready("ca-bridge: Counter listening on ca/+/in via broker 127.0.0.1:1883, store x.db")
    assert not is_ready("ca-bridge: Counter waiting for broker 127.0.0.1:1883 (not reachable yet; retrying)")
    proc = _printer("ca-bridge: Counter waiting for broker 127.0.0.1:1 (not reachable yet; retrying)",
                    "ca-bridge: Counter listening on ca/+/in via broker 127.0.0.1:1, store x.db")
    try:
        assert "listening on" in wait_output(proc, timeout=30)
    finally:
        stop(proc)


def test_a_process_that_only_waits_for_its_broker_and_exits_is_not_ready():
    proc = spawn([sys.executable, "-c", "print('ca-bridge: X waiting for broker 127.0.0.1:1', flush=True)"],
                 stdout=subprocess.PIPE)
    with pytest.raises(RuntimeError, match="exited with 0"):
        wait_output(proc, timeout=30)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def test_a_spawned_process_dies_with_the_process_that_spawned_it():
    middle = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom tests.procs import spawn\n"
         "p = spawn([sys.executable, '-c', 'import signal; signal.pause()'])\n"
         "print(p.pid, flush=True)\nsys.stdin.read()\n"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert middle.stdout is not None
    child = int(middle.stdout.readline())
    assert _alive(child)
    middle.send_signal(signal.SIGKILL)  # no cleanup of its own: only the parent-death signal can stop the child
    middle.wait()
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    gone = not _alive(child)
    if not gone:
        os.kill(child, signal.SIGKILL)
    assert gone
