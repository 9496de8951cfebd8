"""The bridge end to end over real brokers (embedded amqtt and mosquitto), driven by paho devices."""

from __future__ import annotations

import json

import cbor2
import pytest

from tests.device import CallFailed, Device


@pytest.fixture
def device(live):
    devices = []

    def make(ca="shop1", session="default", **kw):
        d = Device(live.port, ca, session, **kw)
        devices.append(d)
        return d

    yield make
    for d in devices:
        d.close()


def test_calls_in_cbor_and_json(device):
    cb, js = device("c1", "cb"), device("c1", "js", codec="json")
    assert cb.call("incr") == 1
    assert js.call("incr") == 2
    assert cb.call("get")["n"] == 2
    assert cb.raw[-1][1][:1] != b"{" and js.raw[-1][1][:1] == b"{"  # each answered in its own encoding
    with pytest.raises(CallFailed) as err:
        js.call("fail_after_write", "app")
    assert err.value.err == {"kind": "app", "name": "AppError", "message": "refused",
                             "data": {"reason": "test", "n": 1}}
    with pytest.raises(CallFailed) as err:
        cb.call("fail_after_write", "boom")
    assert err.value.err["kind"] == "internal" and "secret" not in str(err.value.err)
    assert "dirty" not in cb.call("get")


def test_bad_input_gets_clear_errors_and_the_bridge_keeps_serving(device, live):
    d = device("victim")
    assert d.call("incr") == 1
    d.publish(b"\xff\xfe not cbor")
    assert d.errors.get(timeout=10)["err"]["kind"] == "bad_request"
    d.publish(b'{"t": "call", "id": "j1", "method": "incr", "session": "no/slash"}')
    assert "session" in d.errors.get(timeout=10)["err"]["message"]
    d.publish(cbor2.dumps({"t": "call", "id": "big", "method": "incr", "args": ["x" * 70_000]}))
    assert "exceeds" in d.errors.get(timeout=10)["err"]["message"]  # not decoded at all, so no reply id
    for name in ("on_init", "_private", "__class__", "state", "not_a_method"):
        with pytest.raises(CallFailed) as err:
            d.call(name)
        assert err.value.err["kind"] == "bad_request"
    with pytest.raises(CallFailed):
        d.call("record")  # missing argument
    hostile_topics = ["ca/-x/in", "ca/" + "x" * 100 + "/in", "ca/caf\u00e9/in", "ca/a b/in", "ca/victim/in/extra",
                      "ca/victim\x01/in", "ca/$sys/in"]
    for topic in hostile_topics:
        # QoS 0: mosquitto disconnects a client that publishes a control character, and paho would resend a
        # QoS 1 message forever after reconnecting
        d.publish(cbor2.dumps({"t": "call", "id": "h", "method": "incr"}), topic=topic, qos=0)
        # fence: a call on the valid topic, published after the hostile one, is answered (resent until paho has
        # reconnected, if the broker dropped it) and finds the count unchanged
        assert d.call("get", retry=0.5, timeout=30)["n"] == 1, topic
    d.publish(cbor2.dumps([1, 2, 3]))
    d.publish(b"[" * 50_000)
    assert d.call("incr") == 2  # nothing above changed state, and the bridge still answers
    other = device("bystander")
    assert other.call("incr") == 1
    assert live.bridge.proc.poll() is None


def test_retried_request_id_runs_once(device):
    d = device("c1")
    rid = d.send_call("record", "tok")
    first = d.wait_reply(rid)
    assert first == {"t": "reply", "id": rid, "ok": 1}
    del d.replies[rid]  # only a new answer to the retry can satisfy the wait below
    d.send_call("record", "tok", rid=rid)
    assert d.wait_reply(rid) == first  # the recorded reply, re-sent; not a second run
    assert d.call("get")["seen"] == {"tok": 1}


def test_notifications_in_order_ack_and_resync_after_reconnect(device, live):
    d = device("c1", "phone")
    for i in range(3):
        d.call("notify_to", "phone", i)
    notes = d.wait_notes(3)
    assert [(n["seq"], n["args"]) for n in notes] == [(1, [0]), (2, [1]), (3, [2])]
    d.ack(2)
    d.close()  # the device is gone; calls from another session queue more for it
    other = device("c1", "desk")
    other.call("notify_to", "phone", 3)
    other.call("notify_to", "phone", 4)  # default limit 5 keeps seq 3..5
    back = device("c1", "phone")
    back.sync(2)
    answer = back.wait_sync()
    assert answer == {"t": "sync", "first": 3, "next": 6}
    replayed = back.wait_notes(3)
    assert [(n["seq"], n["args"]) for n in replayed] == [(3, [2]), (4, [3]), (5, [4])]
    back.ack(5)
    assert back.call("notify_to", "phone", "x") == 1  # outq after the ack holds only the new one


def test_json_session_gets_json_notifications(device):
    d = device("c2", "js", codec="json")
    d.call("notify_to", "js", {"b": "bytes"})
    d.wait_notes(1)
    note = next(p for _t, p in d.raw if b'"note"' in p)
    assert json.loads(note) == {"t": "note", "seq": 1, "args": [{"b": "bytes"}]}


def test_state_survives_a_clean_restart(device, live):
    d = device("c1")
    assert d.call("incr") == 1
    d.close()
    live.bridge.stop()
    live.bridge.start()
    d2 = device("c1")
    assert d2.call("incr", retry=1.0) == 2
    assert d2.call("get")["resumes"] == 1
