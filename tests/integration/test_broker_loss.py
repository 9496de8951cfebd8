"""Broker loss: the bridge reconnects by itself, re-subscribes, and publishes what it produced while the broker was
away (README, "Broker loss").

The promise is checked as stated: a call's reply and a notification are produced while mosquitto is down, and the
device, which never re-sends anything, gets both after the broker is back. mosquitto runs with persistence and the
device with a persistent session, as a production setup would, so the device's subscription survives the restart
whichever of the two clients reconnects first.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Mosquitto, committed_state, wait_until
from tests.device import Device


def test_reply_and_notification_produced_during_an_outage_arrive_after_it(tmp_path, bridge_factory):
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    bridge = bridge_factory("tests/apps.py:Gated", broker_port=broker.port, extra=["--pulse", "0"])
    bridge.start()
    gate = tmp_path / "gate"
    d = Device(broker.port, "g1", "phone", client_id="phone-g1", clean_session=False)
    try:
        assert d.call("record", "before") == "before"
        assert [n["args"] for n in d.wait_notes(1)] == [["before"]]
        rid = d.send_call("hold", str(gate), "while-away")
        wait_until(Path(f"{gate}.started").exists, "the bridge runs the held call")
        broker.stop()
        wait_until(lambda: "lost the broker connection" in bridge.logs(), "the bridge saw the broker go")
        gate.touch()  # the call finishes now: its reply and its notification are produced with no broker
        wait_until(lambda: "while-away" in committed_state(bridge.db, "g1").get("done", []),
                   "the held call is committed")
        assert rid not in d.replies and len(d.notes) == 1
        broker.start()  # same port, same persistent sessions; nobody re-sends anything
        assert d.wait_reply(rid, timeout=30) == {"t": "reply", "id": rid, "ok": "while-away"}
        notes = d.wait_notes(2, timeout=30)
        assert [(n["seq"], n["args"]) for n in notes] == [(1, ["before"]), (2, ["while-away"])]
        wait_until(lambda: bridge.logs().count("connected to broker") >= 2, "the bridge reconnected")
        # re-subscribed: a new call after the outage is served (and the held one ran exactly once)
        assert d.call("done", timeout=20) == ["before", "while-away"]
        d.close()
    finally:
        bridge.kill()
        broker.stop()
