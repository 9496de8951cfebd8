"""Presence end to end: a firmware client process (CPython and MicroPython) announces its session online, and the
MQTT will (or its clean close) announces it offline; the CA's on_presence hook sees each transition.

The bridge runs tests/apps.py:Presence on the embedded amqtt broker and on mosquitto (the ``live_factory``
fixture of tests/conftest.py); a paho device (tests/device.py) in its own session reads the CA. What the client
puts on the wire (will, online, offline) is checked against the fake broker in test_client_fake.py.
"""

import signal
import sys
import time

import pytest

from conftest import HERE, device_env
from tests.conftest import BridgeProcess, Mosquitto
from tests.skips import missing

try:
    from tests.device import Device
except ImportError:
    missing("paho-mqtt is not installed", "pip install -e '.[test]'")

SCRIPT = HERE / "scenarios" / "bridge_device.py"
APP = "tests/apps.py:Presence"


@pytest.fixture(autouse=True)
def _need_bridge():
    try:
        import bridge  # noqa: F401
    except ImportError:
        missing("the bridge package is not importable", "pip install -e .")


@pytest.fixture
def observer():
    made = []

    def make(port, ca):
        d = Device(port, ca, "observer")
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def start_device(procs, interp, port, ca, session, stopfile, codec="cbor"):
    p = procs([*interp, str(SCRIPT), str(port), "presence", ca, session, str(stopfile), codec],
              env=device_env({"PYTHONUNBUFFERED": 1}))
    assert p.wait_output("READY", 20), p.output()
    return p


def wait_transitions(obs, expected, timeout=15.0):
    """Poll the CA until it has recorded ``expected`` (and nothing more); return what it recorded."""
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = obs.call("transitions")
        if len(got) >= len(expected):
            break
        time.sleep(0.05)
    time.sleep(0.3)  # a late duplicate transition would show up now
    got = obs.call("transitions")
    assert got == expected, got
    return got


def test_presence_online_then_offline_on_kill(procs, live_factory, observer, interp, tmp_path):
    """connect -> online (hook ran, is_online true); SIGKILL -> the broker's will -> offline; a new run -> online."""
    live = live_factory(APP)
    obs = observer(live.port, "pres1")
    assert obs.call("transitions") == []  # creates the CA: a presence for a CA that does not exist is dropped
    dev = start_device(procs, interp, live.port, "pres1", "dev1", tmp_path / "stop")
    wait_transitions(obs, [["dev1", True]])
    assert obs.call("online", "dev1") is True
    dev.p.send_signal(signal.SIGKILL)
    dev.p.wait(10)
    wait_transitions(obs, [["dev1", True], ["dev1", False]])
    assert obs.call("online", "dev1") is False
    start_device(procs, interp, live.port, "pres1", "dev1", tmp_path / "stop")
    wait_transitions(obs, [["dev1", True], ["dev1", False], ["dev1", True]])
    assert obs.call("online", "dev1") is True
    assert live.bridge.proc.poll() is None


@pytest.mark.parametrize("codec", ["cbor", "json"])
def test_presence_offline_on_clean_close(procs, live_factory, observer, interp, tmp_path, codec):
    """close() announces offline itself (a clean DISCONNECT cancels the will): one offline, no duplicate."""
    live = live_factory(APP)
    obs = observer(live.port, "pres2")
    obs.call("transitions")
    stop = tmp_path / "stop"
    dev = start_device(procs, interp, live.port, "pres2", "dev2", stop, codec)
    wait_transitions(obs, [["dev2", True]])
    stop.write_text("")
    dev.p.wait(15)
    out, err = dev.output()
    assert dev.p.returncode == 0 and "DONE" in out, out + err
    wait_transitions(obs, [["dev2", True], ["dev2", False]])
    assert obs.call("online", "dev2") is False


def test_presence_will_reaches_a_restarted_bridge(procs, tmp_path, observer):
    """The device dies while the bridge is down: mosquitto keeps the will queued in the bridge's persistent
    session, and the restarted bridge still sees the session go offline."""
    broker = Mosquitto(tmp_path)
    broker.start()
    bridge = BridgeProcess(APP, tmp_path / "bridge.db", broker_port=broker.port)
    try:
        bridge.start()
        obs = observer(broker.port, "pres3")
        obs.call("transitions")
        dev = start_device(procs, [sys.executable], broker.port, "pres3", "dev3", tmp_path / "stop")
        wait_transitions(obs, [["dev3", True]])
        bridge.kill()
        dev.p.send_signal(signal.SIGKILL)
        dev.p.wait(10)
        time.sleep(0.5)  # the will is published (and queued for the bridge) while no bridge runs
        bridge.start()
        wait_transitions(obs, [["dev3", True], ["dev3", False]], timeout=20)
        assert obs.call("online", "dev3") is False
    finally:
        bridge.kill()
        broker.stop()

