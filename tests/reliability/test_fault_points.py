"""One focused test per dangerous point: the bridge SIGKILLs itself there (CA_BRIDGE_FAULTS), restarts, and the
devices see every call applied exactly once and every notification exactly once, in order."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import Mosquitto
from tests.device import Device

TOKENS = 12


def note_stream(dev: Device) -> list[dict]:
    """What the device received on its session topic, in arrival order (notifications and sync answers)."""
    with dev._cond:
        return [dev.decode(payload) for _topic, payload in dev.raw]


def check_live_notes(notes: list[dict]) -> None:
    """The notifications pushed as calls commit: never one twice, never out of order, each with its call's token
    (a crash may leave a gap: the resync below fills it)."""
    seqs = [n["seq"] for n in notes]
    assert seqs == sorted(set(seqs)), f"duplicate or out-of-order notifications: {seqs}"
    assert all(n["args"] == [f"t{n['seq'] - 1}"] for n in notes), notes


@pytest.mark.parametrize("point,count", [("in_commit", 4), ("after_commit", 4), ("after_publish", 4), ("in_apply", 1)])
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
            except BaseException as exc:
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
        assert watch.wait_sync() == {"t": "sync", "first": 1, "next": TOKENS + 1}
        # the resync replays the whole queue after its answer: every notification exactly once, in order
        deadline = time.monotonic() + 10
        while True:
            stream = note_stream(watch)
            answer = stream.index({"t": "sync", "first": 1, "next": TOKENS + 1})
            if len(stream) - answer - 1 >= TOKENS or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        check_live_notes(stream[:answer])
        assert stream[answer + 1:] == [{"t": "note", "seq": i + 1, "args": [f"t{i}"]} for i in range(TOKENS)]
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
        assert [(n["seq"], n["args"]) for n in notes] == [(i + 1, [f"t{i}"]) for i in range(5)]  # once, in order
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
