"""Broker loss: the bridge reconnects by itself, re-subscribes, and what it produced meanwhile still arrives."""

from __future__ import annotations

import time

from tests.conftest import Mosquitto
from tests.device import Device


def test_mosquitto_restart_loses_nothing(tmp_path, bridge_factory):
    broker = Mosquitto(tmp_path)
    broker.start()
    bridge = bridge_factory("tests/apps.py:Counter", broker_port=broker.port)
    bridge.start()
    try:
        d = Device(broker.port, "c1", "phone")
        assert d.call("incr") == 1
        # a slow call whose reply is produced while the broker is down
        rid = d.send_call("sleep", 1.0)
        time.sleep(0.3)
        broker.stop()
        time.sleep(1.5)
        broker.start()
        # the device retries the same id; whether the queued publish or the dedup record answers, it ran once
        reply = None
        deadline = time.monotonic() + 20
        while reply is None and time.monotonic() < deadline:
            try:
                reply = d.wait_reply(rid, 1.0)
            except TimeoutError:
                d.send_call("sleep", 1.0, rid=rid)
        assert reply == {"t": "reply", "id": rid, "ok": 1.0}
        assert d.call("incr", retry=1.0, timeout=20) == 2
        # notifications queued during the outage are recovered by sync
        other = Device(broker.port, "c1", "desk")
        other.call("notify_to", "phone", "while-away")
        d.sync(0)
        d.wait_sync()
        assert any(n["args"] == ["while-away"] for n in d.wait_notes(1))
        assert "lost the broker connection" in bridge.logs()
        assert bridge.logs().count("connected to broker") >= 2
        d.close()
        other.close()
    finally:
        bridge.kill()
        broker.stop()
