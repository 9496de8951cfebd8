"""One focused test per dangerous point: the bridge SIGKILLs itself there (CA_BRIDGE_FAULTS), restarts, and the
devices see every call applied exactly once and every notification exactly once, in order."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import Mosquitto
from tests.device import Device

TOKENS = 12


def collect_distinct(notes: list[dict]) -> dict[int, list]:
    by_seq: dict[int, list] = {}
    for note in notes:
        assert by_seq.setdefault(note["seq"], note["args"]) == note["args"], "one seq carried two payloads"
    return by_seq


@pytest.mark.parametrize("point,count", [("in_commit", 4), ("after_commit", 4), ("after_publish", 4)])
def test_kill_at_point(point, count, tmp_path, bridge_factory):
    broker = Mosquitto(tmp_path)  # survives the bridge, so the devices stay connected
    broker.start()
    try:
        bridge = bridge_factory("tests/apps.py:Counter", broker_port=broker.port,
                                env={"CA_BRIDGE_FAULTS": f"{point}={count}"})
        bridge.start()
        dev = Device(broker.port, "f1", "default")
        watch = Device(broker.port, "f1", "watch")
        errors: list[BaseException] = []

        def calls() -> None:
            try:
                for i in range(TOKENS):
                    assert dev.call("record_notify", f"t{i}", retry=0.5, timeout=40) == 1
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)

        worker = threading.Thread(target=calls)
        worker.start()
        bridge.proc.wait(30)
        assert bridge.proc.returncode == -9, "the fault point was never reached"
        assert f"killing the bridge at {point}" in bridge.logs()
        bridge.proc = None
        bridge.env = {}
        bridge.start()
        worker.join(60)
        assert not errors, errors
        state = dev.call("get", retry=0.5)
        assert state["seen"] == {f"t{i}": 1 for i in range(TOKENS)}
        watch.sync(0)
        watch.wait_sync()
        deadline = time.monotonic() + 10
        while len(collect_distinct(watch.notes)) < TOKENS and time.monotonic() < deadline:
            time.sleep(0.05)
        by_seq = collect_distinct(watch.notes)
        assert sorted(by_seq) == list(range(1, TOKENS + 1))
        assert [by_seq[s] for s in sorted(by_seq)] == [[f"t{i}"] for i in range(TOKENS)]
        dev.close()
        watch.close()
    finally:
        broker.stop()


def test_kill_in_ack_then_resync(tmp_path, bridge_factory):
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        bridge = bridge_factory("tests/apps.py:Counter", broker_port=broker.port, env={"CA_BRIDGE_FAULTS": "in_ack=3"})
        bridge.start()
        dev = Device(broker.port, "f2", "default")
        watch = Device(broker.port, "f2", "watch")
        for i in range(5):
            dev.call("record_notify", f"t{i}")
        notes = watch.wait_notes(5)
        for note in notes:
            watch.ack(note["seq"])
        bridge.proc.wait(30)
        assert bridge.proc.returncode == -9
        bridge.proc = None
        bridge.env = {}
        bridge.start()
        # the device knows it processed up to 5; its sync re-acks whatever the crash lost
        watch.sync(5)
        assert watch.wait_sync() == {"t": "sync", "first": 6, "next": 6}
        assert dev.call("outq_len", "watch", retry=0.5) == 0
        dev.close()
        watch.close()
    finally:
        broker.stop()
