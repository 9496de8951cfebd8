"""Fixtures of the device end-to-end tests: a real mosquitto, the real bridge running tests/devices/lab.py:Lab, a
control client on session "ctl" (the firmware client, in this process), and device programs under CPython or the
real MicroPython (tests/devices/scenarios)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_until
from tests.procs import ROOT, BridgeProcess, Mosquitto, spawn, stop
from tests.skips import missing

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
VENV_BIN = Path(sys.executable).parent
APP = "tests/devices/lab.py:Lab"
CA_NAME = "lab1"


def interpreter(name: str) -> list[str]:
    if name == "cpython":
        return [sys.executable]
    binary = shutil.which("micropython", path=str(VENV_BIN)) or shutil.which("micropython")
    if binary is None:
        missing("micropython is not installed", "scripts/bootstrap --tests installs it")
    return [binary]


@pytest.fixture(params=["cpython", "micropython"])
def interp(request) -> list[str]:
    return interpreter(request.param)


class DeviceProc:
    """A device program running in its own process; stdout and stderr go to files."""

    def __init__(self, cmd: list[str], env: dict[str, str], workdir: Path, n: int, cwd: Path = ROOT) -> None:
        self.outfile = workdir / f"device{n}.out"
        with open(self.outfile, "wb") as out:
            self.proc = spawn(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd)

    def text(self) -> str:
        return self.outfile.read_text(errors="replace") if self.outfile.exists() else ""

    def results(self) -> dict[str, Any]:
        """The "R [key, value]" lines the program printed."""
        res = {}
        for line in self.text().splitlines():
            if line.startswith("R "):
                k, v = json.loads(line[2:])
                res[k] = v
        return res

    def wait_exit(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the device did not exit within {timeout:.0f}s: {self.text()[-2000:]}") from None

    def kill(self) -> None:
        stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        stop(self.proc, signal.SIGTERM, timeout=5)


class Lab:
    """mosquitto + the bridge (Lab app) + the control client; devices started with ``device()``."""

    def __init__(self, tmp_path: Path, extra: list[str] | None = None) -> None:
        from firmware_client import Client

        self.tmp = tmp_path
        self.broker = Mosquitto(tmp_path).start()
        self.bridge = BridgeProcess(APP, tmp_path / "lab.db", broker_port=self.broker.port, extra=extra).start()
        self.ctl = Client(CA_NAME, "ctl", port=self.broker.port, timeout=30, resend=2.0)
        self.ctl.connect()
        self.devices: list[DeviceProc] = []
        self.runs_file = tmp_path / "runs.txt"

    @property
    def port(self) -> int:
        return self.broker.port

    def call(self, method: str, *args: Any) -> Any:
        return self.ctl.call(method, *args)

    def info(self) -> dict[str, Any]:
        return dict(self.call("info"))

    def now(self) -> int:
        return int(self.call("now"))

    def wait(self, pred: Any, what: str, timeout: float = 30.0) -> dict[str, Any]:
        """Poll the CA's info() until ``pred(info)`` holds; returns that info."""
        seen: list[dict[str, Any]] = []

        def check() -> bool:
            seen[:] = [self.info()]
            return bool(pred(seen[0]))

        try:
            wait_until(check, what, timeout)
        except TimeoutError as e:
            logs = "\n".join(d.text()[-1500:] for d in self.devices)
            raise AssertionError(f"{e}; last info {seen[0] if seen else None}\ndevices:\n{logs}\nbridge:\n"
                                 f"{self.bridge.logs()[-2000:]}") from None
        return seen[0]

    def result(self, index: int, timeout: float = 30.0) -> bool:
        """The bundle's result once the device reported it."""
        info = self.wait(lambda i: index in i["results"], f"bundle {index} has a result", timeout)
        return bool(info["results"][index])

    def device(self, interp: list[str], script: str | None = "lab_device.py", cwd: Path = ROOT,
               **env: Any) -> DeviceProc:
        """A device program; ``env`` adds to its environment (MICROPYPATH=...: where MicroPython finds its modules;
        without it, the script finds this checkout's firmware_client by itself)."""
        full = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MICROPYPATH", "PYTHONSTARTUP")}
        full.update({"CA_PORT": str(self.port), "CA_NAME": CA_NAME, "RUNS": str(self.runs_file),
                     "PYTHONUNBUFFERED": "1", "INSTANCE": str(len(self.devices))})
        full.update({k: str(v) for k, v in env.items()})
        cmd = [*interp, *([str(SCENARIOS / script)] if script else [])]  # None: interp names what to run
        d = DeviceProc(cmd, full, self.tmp, len(self.devices), cwd)
        self.devices.append(d)
        return d

    def runs(self) -> list[tuple[str, int, int]]:
        """(tag, real epoch ms, instance: which device process) of every command the devices ran, in order."""
        if not self.runs_file.exists():
            return []
        out = []
        for line in self.runs_file.read_text().splitlines():
            tag, ms, pid = line.split()
            out.append((tag, int(ms), int(pid)))
        return out

    def wait_run(self, tag: str, timeout: float = 30.0) -> tuple[str, int, int]:
        found: list[tuple[str, int, int]] = []

        def ran() -> bool:
            found[:] = [r for r in self.runs() if r[0] == tag]
            return bool(found)

        try:
            wait_until(ran, f"the device ran mark({tag!r})", timeout)
        except TimeoutError as e:
            logs = "\n".join(d.text()[-1500:] for d in self.devices)
            raise AssertionError(f"{e}; runs {self.runs()}\ndevices:\n{logs}") from None
        return found[0]

    def close(self) -> None:
        for d in self.devices:
            d.stop()
        with contextlib.suppress(OSError):
            self.ctl.close()
        self.bridge.kill()
        self.broker.stop()


@pytest.fixture
def lab(tmp_path):
    try:
        import bridge  # noqa: F401
    except ImportError:
        missing("the bridge package is not importable", "pip install -e .")
    made = Lab(tmp_path)
    try:
        yield made
    finally:
        made.close()


def stopped_device(lab: Lab, d: DeviceProc) -> dict[str, Any]:
    """Ask the device to stop (from_cloud["stop"]), wait for its exit; its R lines."""
    lab.call("set_fc", "stop", True)
    code = d.wait_exit()
    assert code == 0, d.text()[-3000:]
    return d.results()


__all__ = ["ROOT", "Lab", "stopped_device", "time"]


class Blackhole:
    """A TCP proxy to ``port`` that can cut the network the way a dead router does: after ``cut()`` every byte is
    dropped both ways and new connections are accepted but never forwarded (no reset, no answer: the device only
    learns of it from its own timers); ``heal()`` closes what the cut left behind and forwards again."""

    def __init__(self, port: int) -> None:
        import selectors
        import socket
        import threading

        self.target = port
        self.sel = selectors.DefaultSelector()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.peers: dict[Any, Any] = {}  # socket -> its other end (None: held by a cut)
        self.lock = threading.Lock()
        self.is_cut = False
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _close(self, sock: Any) -> None:
        other = self.peers.pop(sock, None)
        with contextlib.suppress(Exception):
            self.sel.unregister(sock)
        sock.close()
        if other is not None and other in self.peers:
            self._close(other)

    def _run(self) -> None:
        import selectors
        import socket

        while self.running:
            for key, _ in self.sel.select(0.05):
                with self.lock:
                    sock = key.fileobj
                    if sock is self.listener:
                        client, _ = self.listener.accept()
                        upstream = None
                        if not self.is_cut:
                            upstream = socket.create_connection(("127.0.0.1", self.target))
                            self.peers[upstream] = client
                            self.sel.register(upstream, selectors.EVENT_READ, None)
                        self.peers[client] = upstream
                        self.sel.register(client, selectors.EVENT_READ, None)
                        continue
                    try:
                        data = sock.recv(65536)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    if not data:
                        self._close(sock)
                        continue
                    other = self.peers.get(sock)
                    if other is not None and not self.is_cut:
                        with contextlib.suppress(OSError):
                            other.sendall(data)

    def cut(self) -> None:
        with self.lock:
            self.is_cut = True

    def heal(self) -> None:
        with self.lock:
            self.is_cut = False
            for sock in list(self.peers):
                self._close(sock)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        for sock in list(self.peers):
            self._close(sock)
        self.listener.close()
