"""The firmware client (CPython and MicroPython) against the real bridge.

Skipped when the ``bridge`` package cannot be imported. Every process started here is stopped by
the ``procs`` fixture.
"""

import json
import re
import sys
import time

import pytest

from conftest import HERE, ROOT, device_env, free_port, run_device, start_mosquitto
from tests.skips import missing
import itertools

SCRIPT = HERE / "scenarios" / "bridge_device.py"
HELLOWORLD = "examples/helloworld/ca.py:HelloWorld"
HELLOPERSISTENT = "examples/hellopersistent/ca.py:HelloPersistent"


@pytest.fixture(autouse=True)
def _need_bridge():
    try:
        import bridge  # noqa: F401
    except ImportError:
        missing("the bridge package is not importable", "pip install -e .")


def start_bridge(procs, tmp_path, app, port=None, broker_port=None, pulse=0.2):
    cmd = [sys.executable, "-m", "bridge", "run", app, "--db", str(tmp_path / "bridge.db"), "--pulse", str(pulse)]
    if broker_port:
        cmd += ["--broker", f"mqtt://127.0.0.1:{broker_port}"]
        port = broker_port
    else:
        port = port or free_port()
        cmd += ["--listen", f"127.0.0.1:{port}"]
    p = procs(cmd, env=device_env(), cwd=str(ROOT))
    assert p.wait_output("listening", 20), p.output()
    return port, p


def test_bridge_calls_and_app_errors(procs, tmp_path, interp):
    """Results, AppError (kind app with data) and unknown methods (bad_request) via the bridge."""
    port, _ = start_bridge(procs, tmp_path, HELLOPERSISTENT)
    rc, res, out, err = run_device(interp, SCRIPT, [port, "calls"])
    assert rc == 0, out + err
    assert set(res["begin"]) == {"nonce", "memento"}
    assert res["buy"] == {"apple": 1}
    assert res["bad_nonce"][:3] == ["caerror", "app", "AppError"]
    assert res["bad_nonce"][4].get("item") == "pear"
    assert res["unknown"][:2] == ["caerror", "bad_request"]
    assert res["end"] is True


def test_bridge_helloworld_client1_example(procs, tmp_path, interp):
    """examples/helloworld/client1.py: session_info, notify_all, then pulse notifications in order."""
    port, _ = start_bridge(procs, tmp_path, HELLOWORLD)
    p = __import__("subprocess").run(
        [*interp, str(ROOT / "examples/helloworld/client1.py")],
        env=device_env({"CA_PORT": port, "NOTES": 6, "CA_NAME": "hw1"}),
        capture_output=True,
        timeout=60,
    )
    out = p.stdout.decode()
    assert p.returncode == 0, out + p.stderr.decode()
    assert "'current': 'client1'" in out
    notes = re.findall(r"notification: \[(.*)\]", out)
    # notify_all's message arrives as a notification, once; pulses queued before it may arrive first, so every
    # other notification is an even pulse counter, in order
    assert notes.count("'hello from client1'") == 1, out
    others = [x for x in notes if x != "'hello from client1'"]
    assert all(x.isdigit() for x in others), notes
    counters = [int(x) for x in others]
    assert counters and all(c % 2 == 0 for c in counters)
    assert counters == sorted(set(counters))


def test_bridge_notifications_survive_broker_restart_and_reconnect(procs, tmp_path, interp):
    """Pulse notifications to client1 arrive once each and in order across a mosquitto restart
    and a device-initiated reconnect: consecutive counters differ by exactly 2."""
    mport, mosq = start_mosquitto(procs, tmp_path)
    start_bridge(procs, tmp_path, HELLOWORLD, broker_port=mport)
    dev = procs([*interp, str(SCRIPT), str(mport), "listen", "hw2", "8"], env=device_env())
    assert dev.wait_output("READY", 20), dev.output()
    time.sleep(1.5)
    mosq.stop()
    time.sleep(0.7)
    start_mosquitto(procs, tmp_path, port=mport)
    dev.p.wait(60)
    out, err = dev.output()
    assert dev.p.returncode == 0, out + err
    res = {json.loads(x[2:])[0]: json.loads(x[2:])[1] for x in out.splitlines() if x.startswith("R ")}
    counters = [n[0] for n in res["notes"]]
    assert len(counters) >= 20
    assert all(b - a == 2 for a, b in itertools.pairwise(counters)), counters
    assert res["connects"] >= 3  # initial, after the broker restart, after the device's own reconnect
    assert res["lost"] == 0


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_bridge_persistent_session_exactly_once_with_crashes(procs, tmp_path, interp, broker):
    """hellopersistent: >= 50 random crashes (before and during buys); every item bought exactly once."""
    if broker == "mosquitto":
        mport, _ = start_mosquitto(procs, tmp_path)
        port, _ = start_bridge(procs, tmp_path, HELLOPERSISTENT, broker_port=mport)
    else:
        port, _ = start_bridge(procs, tmp_path, HELLOPERSISTENT)
    items = 250
    env = device_env({"CA_PORT": port, "ITEMS": items, "CRASH": 47, "CRASH_MID": 30, "SEED": 11, "CA_NAME": "shop"})
    p = __import__("subprocess").run(
        [sys.executable, str(ROOT / "examples/hellopersistent/forever.py"), interp[0]],
        env=env,
        capture_output=True,
        timeout=120,
    )
    out = p.stdout.decode()
    assert p.returncode == 0, out[-2000:] + p.stderr.decode()[-2000:]
    m = re.search(r"forever: (\d+) runs, (\d+) crashes", out)
    assert m and int(m.group(2)) >= 50, out[-500:]
    assert "Crash detected" in out
    rc, res, o2, e2 = run_device([sys.executable], SCRIPT, [port, "counters", "shop"])
    assert rc == 0, o2 + e2
    assert res["counters"] == {f"item{i:03d}": 1 for i in range(items)}


def test_hellopersistent_rerun_after_its_end_committed_buys_nothing_twice(procs, tmp_path, interp):
    """The example's end keeps the memento: a device run again after its end committed (as a device that never
    heard end's reply is, by forever.py) sees every item bought and buys none of them again."""
    port, _ = start_bridge(procs, tmp_path, HELLOPERSISTENT)
    env = device_env({"CA_PORT": port, "ITEMS": 4, "CRASH": 0, "CA_NAME": "once"})
    outs = []
    for _ in range(2):
        p = __import__("subprocess").run([*interp, str(ROOT / "examples/hellopersistent/device.py")], env=env,
                                         capture_output=True, timeout=60)
        outs.append(p.stdout.decode())
        assert p.returncode == 0, outs[-1] + p.stderr.decode()
    assert "Every item is bought already" not in outs[0] and "Every item is bought already" in outs[1]
    assert "done, end -> True" in outs[1]
    rc, res, o2, e2 = run_device([sys.executable], SCRIPT, [port, "counters", "once"])
    assert rc == 0, o2 + e2
    assert res["counters"] == {f"item{i:03d}": 1 for i in range(4)}


@pytest.mark.parametrize("codec", ["cbor", "json"])
def test_bridge_integers_beyond_64_bits_reach_the_device(procs, tmp_path, interp, codec):
    """Issue 14 item 12: a CA result beyond 64 bits travels as a CBOR bignum (tags 2, 3) that the device decodes;
    bignums the device sends are accepted, and come back in replies and notifications; beyond 1024 bits the bridge
    answers a clear internal error instead of an undecodable reply."""
    port, _ = start_bridge(procs, tmp_path, "tests/firmware/bignum_app.py:Numbers")
    rc, res, out, err = run_device(interp, SCRIPT, [port, "bignums", codec])
    assert rc == 0, out + err
    assert res["power"] == 2**70
    assert res["negative"] == (-3) ** 101
    assert res["echo"] is True and res["note"] is True
    assert res["too_big"][:3] == ["caerror", "internal", "NotSerializable"]
    assert "1024 bits" in res["too_big"][3]
    assert res["undecodable"] == 0
