"""The command line, the shipped broker configs and the README's main command."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.conftest import ROOT, BridgeProcess, Mosquitto, free_port, stop
from tests.device import Device
from tests.skips import missing


def ca_bridge(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bridge", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_inspect_lists_and_shows_cas(bridge_factory):
    bridge = bridge_factory("examples/hellopersistent/ca.py:HelloPersistent")
    bridge.start()
    d = Device(bridge.port, "shop1")
    nonce = d.call("begin")["nonce"]
    d.call("buy", nonce, 0, "apple")
    d.close()
    bridge.stop()
    listing = ca_bridge("inspect", "--db", str(bridge.db))
    assert listing.returncode == 0 and re.search(r"shop1\s+1\s+0", listing.stdout)
    one = json.loads(ca_bridge("inspect", "--db", str(bridge.db), "shop1", "--json").stdout)
    assert one["state"] == {"counters": {"apple": 1}}
    assert one["sessions"]["default"]["has_nonce"] and one["sessions"]["default"]["has_memento"]
    assert one["sessions"]["default"]["dedup_records"] == 2
    text = ca_bridge("inspect", "--db", str(bridge.db), "shop1").stdout
    assert "nonce yes, memento yes" in text
    missing = ca_bridge("inspect", "--db", str(bridge.db), "nobody")
    assert missing.returncode == 1 and "nobody" in missing.stderr


@pytest.mark.parametrize("app,message", [
    ("nofile.py:X", "no such file"),
    ("examples/helloworld/ca.py:Nope", "has no 'Nope' (its CA classes: HelloWorld)"),
    ("json:dumps", "not a subclass"),
    ("no_such_module_xyz:App", "cannot import"),
    ("justaname", "APP must be"),
])
def test_run_rejects_bad_apps_clearly(app, message, tmp_path):
    out = ca_bridge("run", app, "--db", str(tmp_path / "x.db"), "--listen", f"127.0.0.1:{free_port()}")
    assert out.returncode == 2 and message in out.stderr


def test_run_reports_a_busy_port(tmp_path):
    port = free_port()
    first = BridgeProcess("tests/apps.py:Counter", tmp_path / "a.db")
    first.port = port
    first.start()
    try:
        out = ca_bridge("run", "tests/apps.py:Counter", "--db", str(tmp_path / "b.db"), "--listen", f"127.0.0.1:{port}")
        assert out.returncode == 2 and "cannot listen" in out.stderr
    finally:
        first.kill()


def test_shipped_mosquitto_conf_works_with_the_bridge(tmp_path, bridge_factory):
    conf = (ROOT / "broker_config" / "mosquitto.conf").read_text()
    port = free_port()
    conf = conf.replace("listener 1883 127.0.0.1", f"listener {port} 127.0.0.1")
    conf = conf.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {tmp_path}/")
    assert f"listener {port}" in conf and str(tmp_path) in conf
    m = Mosquitto(tmp_path)
    m.conf.write_text(conf)
    m.port = port
    m.start()
    try:
        bridge = bridge_factory("tests/apps.py:Counter", broker_port=port)
        bridge.start()
        d = Device(port, "c1")
        assert d.call("incr") == 1
        d.close()
    finally:
        m.stop()


def test_readme_main_command_runs_the_example(tmp_path):
    """`scripts/run --once`: bridge + embedded broker + the helloworld device, as the README promises."""
    if not (ROOT / "firmware_client" / "__init__.py").exists():
        missing("firmware_client/ is not in this checkout")
    port = free_port()
    env = {**os.environ, "PORT": str(port), "DB": str(tmp_path / "run.db"), "HTTP": str(free_port())}
    proc = subprocess.Popen(["bash", "scripts/run", "--once"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=90)
    finally:
        stop(proc)
    assert proc.returncode == 0, out
    assert "listening" in out and "session_info" in out
    assert out.count("notification") >= 5


def test_scripts_run_waits_for_the_bridge_itself_and_says_which_variables_move_it(tmp_path):
    """With the dashboard's port taken the bridge does not start: scripts/run must not start the device, but say
    how to move the ports. It waits for the bridge's own "listening" line (the embedded broker logs one too, and a
    bridge can still fail after its broker has started)."""
    port, http = free_port(), free_port()
    env = {**os.environ, "PORT": str(port), "DB": str(tmp_path / "run.db"), "HTTP": str(http)}
    with socket.socket() as held:
        held.bind(("127.0.0.1", http))
        held.listen()
        proc = subprocess.Popen(["bash", "scripts/run", "--once"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            out, _ = proc.communicate(timeout=90)
        finally:
            stop(proc)
    assert proc.returncode == 1, out
    ready = next(line for line in (ROOT / "scripts/run").read_text().splitlines() if line.startswith("ready()"))
    assert "^ca-bridge: " in ready and "listening on" in ready  # the bridge's line, not the broker's
    assert "starting the helloworld device" not in out
    hint = f"port busy? PORT={port + 1} HTTP={http + 1} scripts/run"
    assert out.splitlines()[-1] == f"run: the bridge did not start ({hint})"


def test_scripts_run_refuses_an_option_it_does_not_take():
    """`scripts/run --listen ...` used to run on 1883 anyway: it is configured by PORT=, HTTP=, DB= only."""
    out = subprocess.run(["bash", "scripts/run", "--listen", "127.0.0.1:1884"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    assert out.stderr.splitlines() == ["run: unknown option --listen: scripts/run takes only --once; set PORT=, HTTP=, "
                                       "DB= instead, e.g. PORT=1884 HTTP=8081 scripts/run"]


def test_no_autocreate_and_create_while_running(bridge_factory):
    bridge = bridge_factory("tests/apps.py:Counter", extra=["--no-autocreate"])
    out = ca_bridge("create", "known", "--db", str(bridge.db))
    assert out.returncode == 0 and "created known" in out.stdout
    bridge.start()
    d = Device(bridge.port, "known")
    assert d.call("incr") == 1
    stranger = Device(bridge.port, "stranger")
    with pytest.raises(Exception) as err:
        stranger.call("incr")
    assert err.value.err["kind"] == "not_found"
    made = ca_bridge("create", "latecomer", "--db", str(bridge.db))  # while the bridge runs
    assert made.returncode == 0
    late = Device(bridge.port, "latecomer")
    assert late.call("incr") == 1
    assert "exists already" in ca_bridge("create", "known", "--db", str(bridge.db)).stdout
    assert ca_bridge("create", "bad/name", "--db", str(bridge.db)).returncode == 2
    for dev in (d, stranger, late):
        dev.close()
