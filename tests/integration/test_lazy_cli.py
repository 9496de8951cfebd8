"""Lazy loading through `ca-bridge run`: CAs load when asked for, idle ones beyond --max-resident are evicted and
reloaded without losing their state or queued notifications, the counters show it, and a bad bound is one line."""

from __future__ import annotations

import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import PYTHON, ROOT, free_port
from tests.device import Device


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_evicted_cas_reload_with_their_state_and_queue(bridge_factory):
    mport = free_port()
    bridge = bridge_factory("tests/apps.py:Counter", extra=["--max-resident", "2", "--metrics", f"127.0.0.1:{mport}"])
    bridge.start()
    devices = [Device(bridge.port, f"c{i}") for i in range(5)]
    watcher = None
    try:
        assert devices[0].call("notify_to", "w", "kept") == 1  # queued for a session that is not connected
        for dev in devices:
            assert dev.call("incr") == 1
        samples = scrape(mport)
        assert samples["ca_bridge_cas_evicted_total"] >= 3
        assert samples["ca_bridge_cas_loaded"] <= 2
        assert devices[0].call("incr") == 2  # c0 was evicted: reloaded with its count
        watcher = Device(bridge.port, "c0", "w")
        watcher.sync(0)
        answer = watcher.wait_sync()
        assert (answer["first"], answer["next"]) == (1, 2)
        assert [n["args"] for n in watcher.wait_notes(1)] == [["kept"]]
        assert scrape(mport)["ca_bridge_cas_loads_total"] >= 1
    finally:
        for dev in devices:
            dev.close()
        if watcher is not None:
            watcher.close()


def test_restart_answers_at_once_and_keeps_the_cas(bridge_factory):
    bridge = bridge_factory("tests/apps.py:Counter", extra=["--max-resident", "3"])
    bridge.start()
    try:
        for i in range(6):
            dev = Device(bridge.port, f"r{i}")
            assert dev.call("incr") == 1
            dev.close()
        bridge.stop()
        bridge.start()
        for i in range(6):
            dev = Device(bridge.port, f"r{i}")
            state = dev.call("get")
            dev.close()
            assert state["n"] == 1 and state["resumes"] == 1  # loaded lazily: on_resume ran once, at this load
    finally:
        bridge.stop()


def test_a_bad_bound_is_one_line(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "bridge", "run", "tests/apps.py:Counter", "--db", str(tmp_path / "x.db"),
                           "--max-resident", "-5"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "--max-resident" in proc.stderr and "Traceback" not in proc.stderr
