"""A bridge SIGKILLed while a device syncs loses no committed map change (issue 18): a raw MQTT publisher acts as
the device on session iot, re-sending each dsync unchanged until answered, through repeated kills."""

from __future__ import annotations

import random
import time
from typing import Any

from tests.device import Device


def request(dev: Device, msg: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
    """Publish a device request and re-send it unchanged (same id, same bytes) until answered."""
    rid = dev.new_id()
    payload = dev.encode({**msg, "id": rid, "session": "iot"})
    deadline = time.monotonic() + timeout
    while True:
        dev.publish(payload)
        try:
            return dev.wait_reply(rid, 0.5)
        except TimeoutError:
            assert time.monotonic() < deadline, f"no answer to {msg['t']}"


def test_a_bridge_killed_mid_sync_loses_no_committed_map_change(live_factory):
    live = live_factory("tests/bridge/device_apps.py:Mirror")
    rng = random.Random(18)
    dev = Device(live.port, "mirror1", "iot")
    try:
        boot = request(dev, {"t": "dstart", "cmds": {}})["ok"]["boot"]
        tv, answered = 0, 0
        kills = iter(sorted(rng.sample(range(5, 60), 4)))
        next_kill = next(kills)
        for n in range(1, 61):
            if n == next_kill:
                live.bridge.kill()  # SIGKILL, between or during syncs (the publish below may race the restart)
                live.bridge.start()
                next_kill = next(kills, -1)
            reply = request(dev, {"t": "dsync", "boot": boot, "tb": tv, "tv": tv + 1, "d": {"n": n}, "fv": 0})
            assert "ok" in reply, reply
            assert {"rx", "tx"} <= set(reply)
            tv = reply["ok"]["tv"]
            assert tv == n  # applied once: a re-sent delta that had committed is ignored, not applied twice
            assert reply["ok"]["fc"] == {"echo": n}  # the hook ran in the same transaction
            answered = n
        live.bridge.kill()
        live.bridge.start()
        again = request(dev, {"t": "dstart", "cmds": {}})["ok"]
        assert again["tc"] == {"n": answered} and again["tv"] == answered and again["fc"] == {"echo": answered}
    finally:
        dev.close()
    from bridge.store.sqlite import SQLiteStore

    assert SQLiteStore(live.bridge.db).integrity_check() == []
