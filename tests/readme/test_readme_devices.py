"""The README's device examples (section "Devices: synced maps and timed commands"), followed as written: each
bridge command line (with only the port and the store moved to free ones) and its device, under CPython and the real
MicroPython. The greenhouse's recovery tail runs while its bridge (and the embedded broker with it) is SIGKILLed,
and its results reach the CA once the bridge is back; the sleepy device runs each scheduled blink once."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, free_port, stop, wait_until
from tests.readme.test_readme import VENV_BIN, Output, device_cli, find, program
from tests.skips import missing


def interpreter(name: str, readme_words: list[str]) -> str:
    """The README's device interpreter, or the real MicroPython in its place."""
    if name == "cpython":
        return program(readme_words[0])
    binary = shutil.which("micropython", path=str(VENV_BIN)) or shutil.which("micropython")
    if binary is None:
        missing("micropython is not installed", "scripts/bootstrap --tests installs it")
    return binary


class ReadmeBridge:
    """A README `ca-bridge run` line on a free port and a throwaway store; restartable on both."""

    def __init__(self, app: str, tmp_path) -> None:
        self.words = find(lambda w: w[0].endswith("ca-bridge") and w[1] == "run" and app in w[2])
        self.port = free_port()
        self.db = tmp_path / "example.db"
        self.out: Output | None = None

    def start(self) -> None:
        self.out = Output([program(self.words[0]), *self.words[1:], "--listen", f"127.0.0.1:{self.port}",
                           "--db", str(self.db)])
        self.out.wait_for(r"listening on")

    def kill(self) -> None:
        assert self.out is not None
        stop(self.out.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.out is not None:
            self.out.stop()


@pytest.fixture
def readme_bridge(tmp_path):
    made: list[ReadmeBridge] = []

    def make(app: str) -> ReadmeBridge:
        b = ReadmeBridge(app, tmp_path)
        made.append(b)
        b.start()
        return b

    try:
        yield make
    finally:
        for b in made:
            b.stop()


def status(words: list[str], port: int, ca: str) -> dict:
    done = device_cli(words, port, "status")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_greenhouse_from_the_readme(interp, readme_bridge):
    bridge = readme_bridge("Greenhouse")
    words = find(lambda w: any(x.endswith("examples/greenhouse/device.py") for x in w))
    cli = find(lambda w: "firmware_client" in w and "set_target" in w)
    assert cli[cli.index("--ca") + 1] == "gh1"
    device = Output([interpreter(interp, words), *words[1:]], env={"CA_PORT": str(bridge.port), "TEMP": "14"})
    try:
        device.wait_for(r"greenhouse: heater on")
        bridge.kill()  # a partition: the bridge and its embedded broker are gone
        device.wait_for(r"greenhouse: heater off")  # the recovery tail ran on the device regardless
        assert bridge.out is not None and bridge.out.proc.poll() is not None
        bridge.start()
        done = device_cli(cli, bridge.port)  # set_target 18, as the README writes it
        assert done.returncode == 0, done.stderr
        device.wait_for(r"greenhouse: target now 18")
        info = status(cli, bridge.port, "gh1")
        assert info["min"] == 18 and info["from_cloud"] == {"target": 18}
        assert isinstance(info["to_cloud"]["temp"], float)
        seen = [info]  # the device reports the first bundle's result once it reaches the bridge again
        wait_until(lambda: seen.append(status(cli, bridge.port, "gh1")) or seen[-1]["results"], "a bundle result",
                   timeout=60)
        results = seen[-1]["results"]
        assert results[min(results, key=int)] is True, (results, device.text)
        assert device.proc.poll() is None  # the device went on through the partition
    finally:
        device.stop()
    assert "Traceback" not in device.text, device.text


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_sleepy_from_the_readme(interp, readme_bridge):
    bridge = readme_bridge("Sleepy")
    words = find(lambda w: any(x.endswith("examples/sleepy/wake.py") for x in w))
    cmd = [program(words[0]), *words[1:]] + ([] if interp == "cpython" else [interpreter(interp, words)])
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CA_PORT": str(bridge.port), "WAKES": "4", "SLEEP_MS": "1000"})
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert re.findall(r"sleepy: wake (\d+)", out) == ["1", "2", "3", "4"], out
    assert re.findall(r"sleepy: blink (\d+)", out) == ["2", "3", "4"], out  # each scheduled blink once, in its wake
    assert out.splitlines()[-1] == "wake: 4 wakes"
    cli = [sys.executable, "-m", "firmware_client", "call", "--ca", "sleepy1"]
    info = status(cli, bridge.port, "sleepy1")
    assert info["starts"] == 4 and info["to_cloud"]["wakes"] == 4
    assert sorted(info["results"].values()) == [True, True, True], info
    assert info["pending"] is not None  # the blink of a fifth wake waits
