"""Shared fixtures: free ports, real mosquitto and bridge processes, and a paho device for integration tests."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import skips
from tests.skips import missing

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def pytest_configure(config: pytest.Config) -> None:
    skips.IN_PYTEST = True  # a missing dependency skips (or fails under CI) instead of exiting


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Always say how many tests were skipped (pytest's own line omits 0; -ra lists the reasons after it), and write
    the count to $CA_BRIDGE_SKIPPED_FILE when set (.ci/run checks it is 0)."""
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped: {skipped}" + (" (why: the SKIPPED lines below)" if skipped else ""))
    out = os.environ.get("CA_BRIDGE_SKIPPED_FILE")
    if out:
        Path(out).write_text(f"{skipped}\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` until it is true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(0.02)


def committed_state(db: Path, ca: str) -> dict[str, Any]:
    """A CA's state as committed in a bridge's SQLite file, read beside the bridge ({} before its first commit)."""
    from bridge import codec

    if not db.exists():
        return {}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT state FROM ca WHERE name = ?", (ca,)).fetchone()
    finally:
        conn.close()
    return codec.loads(row[0]) if row and row[0] else {}


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Mosquitto:
    """A real mosquitto on a free loopback port, restartable on the same port.

    ``persistence``: sessions, subscriptions and queued messages survive a restart (saved on SIGTERM in workdir)."""

    def __init__(self, workdir: Path, *, persistence: bool = False) -> None:
        binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if binary is None:
            missing("mosquitto is not installed", "apt-get install mosquitto")
        self.binary = binary
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        # as root, mosquitto drops to the user "mosquitto" unless told otherwise, and could not write workdir
        keep = f"persistence true\npersistence_location {workdir}/\nuser {getpass.getuser()}\n" if persistence \
            else "persistence false\n"
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{keep}set_tcp_nodelay true\n"
            "max_queued_messages 10000\n"
        )
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)
            self.proc = None


@pytest.fixture
def mosquitto(tmp_path):
    m = Mosquitto(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()


class BridgeProcess:
    """`python -m bridge run APP` as a child process (embedded amqtt, or an external broker)."""

    def __init__(self, app: str, db: Path, *, broker_port: int | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, store: str | None = None,
                 options: list[str] | None = None) -> None:
        self.app = app
        self.db = db
        self.store = store or str(db)  # a postgresql:// URL instead of the SQLite file, for clusters
        self.options = options or []  # global options, before `run` (e.g. --log-format json)
        self.external = broker_port is not None
        self.port = broker_port or free_port()
        self.extra = extra or []
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.log = db.with_suffix(".log")

    def start(self, timeout: float = 20.0) -> None:
        cmd = [PYTHON, "-m", "bridge", "--log-level", "INFO", *self.options, "run", self.app, "--db", self.store]
        where = f"127.0.0.1:{self.port}"
        cmd += ["--broker", f"mqtt://{where}"] if self.external else ["--listen", where]
        cmd += self.extra
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        logf = open(self.log, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=logf, env=env)
        logf.close()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)
        seen = b""
        while time.monotonic() < deadline:
            chunk = self.proc.stdout.read() or b""
            seen += chunk
            if b"listening" in seen:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"bridge did not start: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM)
            self.proc = None

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


@pytest.fixture
def bridge_factory(tmp_path):
    made: list[BridgeProcess] = []

    def make(app: str, **kwargs) -> BridgeProcess:
        b = BridgeProcess(app, tmp_path / f"bridge{len(made)}.db", **kwargs)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            b.kill()



class Live:
    def __init__(self, bridge, broker: Mosquitto | None) -> None:
        self.bridge = bridge
        self.broker = broker

    @property
    def port(self) -> int:
        return self.broker.port if self.broker else self.bridge.port


@pytest.fixture(params=["amqtt", "mosquitto"])
def live_factory(request, bridge_factory, tmp_path):
    brokers: list[Mosquitto] = []

    def make(app: str = "tests/apps.py:Counter", extra: list[str] | None = None) -> Live:
        if request.param == "mosquitto":
            broker = Mosquitto(tmp_path)
            broker.start()
            brokers.append(broker)
            bridge = bridge_factory(app, broker_port=broker.port, extra=extra)
        else:
            broker = None
            bridge = bridge_factory(app, extra=extra)
        bridge.start()
        return Live(bridge, broker)

    make.kind = request.param
    try:
        yield make
    finally:
        for b in brokers:
            b.stop()


@pytest.fixture
def live(live_factory):
    return live_factory()
