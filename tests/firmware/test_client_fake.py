"""The client against a scripted fake broker, under CPython and the real MicroPython.

Each test runs tests/firmware/scenarios/device.py in a subprocess (same file for both
interpreters) against a FakeBroker in this process and asserts on what the device printed and
on what the broker saw. Elapsed-time checks are generous correctness bounds (never hangs).
"""


import cbor2
import pytest

from conftest import HERE, Proc, device_env, run_device

SCRIPT = HERE / "scenarios" / "device.py"


def calls(broker, method=None):
    return [e[1] for e in broker.events if e[0] == "call" and (method is None or e[1]["method"] == method)]


def test_client_calls_and_errors(broker, interp):
    """ok results round-trip every wire type; app and bad_request errors become CAError fields."""
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "basic"])
    assert rc == 0, err
    assert res["echo"] == [1, -2, "h\u00e9", {"$bytes": "AP8="}, [1.5, None, True], {"k": False}]
    assert res["fail"] == ["caerror", "app", "AppError", "bad nonce", {"item": "apple"}]
    assert res["unknown"][:3] == ["caerror", "bad_request", "BadRequest"]
    connects = [e for e in broker.events if e[0] == "connect"]
    assert connects[0][1] == "ca-dev-s1" and connects[0][2] & 0x02 == 0  # stable id, clean_session False
    assert ("subscribe", "ca/dev/session/s1", 1) in broker.events
    ids = [c["id"] for c in calls(broker)]
    assert len(set(ids)) == len(ids) == 3


def test_client_json_codec(broker, interp):
    """codec="json" sends JSON, bytes as $bytes, and reads JSON replies."""
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "json"])
    assert rc == 0, err
    assert broker.json
    assert res["echo"] == [1, "a", {"$bytes": "AQI="}, {"x": [None]}]


def _notes_device(broker, interp, n):
    p = Proc([*interp, str(SCRIPT), str(broker.port), "notes", str(n)], env=device_env())
    assert p.wait_output("READY", 15), p.output()
    assert broker.wait_for(lambda: broker.count("sync") >= 1)
    return p


def _finish(p, timeout=20):
    import json

    p.p.wait(timeout)
    out, err = p.output()
    assert p.p.returncode == 0, err
    return {json.loads(line[2:])[0]: json.loads(line[2:])[1] for line in out.splitlines() if line.startswith("R ")}


def test_client_gap_triggers_sync_and_duplicates_dropped(broker, interp):
    """A missing sequence number makes the device sync; it gets the gap filled, in order, no dups."""
    p = _notes_device(broker, interp, 4)
    try:
        broker.notify(["a"])  # 1 delivered
        broker.notify(["b"], send=False)  # 2 queued only: a gap
        broker.notify(["c"])  # 3 arrives early
        assert broker.wait_for(lambda: broker.count("sync") >= 2)
        broker.push_raw_note(1, ["a"])  # stale duplicate
        broker.push_raw_note(3, ["c"])  # duplicate
        broker.notify(["d"])
        res = _finish(p)
    finally:
        p.stop()
    assert res["notes"] == [["a"], ["b"], ["c"], ["d"]]
    syncs = [e[1]["seq"] for e in broker.events if e[0] == "sync"]
    assert syncs[:2] == [0, 1]  # connect sync, then the gap sync after processing 1
    acks = [e[1]["seq"] for e in broker.events if e[0] == "ack"]
    assert acks and acks[-1] == 4 and acks == sorted(acks)
    assert broker.queue == []


def test_client_reconnect_resyncs_without_duplicates(broker, interp):
    """After the broker drops the device, it reconnects, syncs with its last seq and misses nothing."""
    p = _notes_device(broker, interp, 6)
    try:
        broker.notify([1])
        broker.notify([2])
        assert broker.wait_for(lambda: any(e[0] == "ack" and e[1]["seq"] == 2 for e in broker.events))
        broker.kick()
        broker.notify([3], send=False)
        broker.notify([4], send=False)
        assert broker.wait_for(lambda: broker.count("sync") >= 2)
        broker.notify([5])
        broker.notify([6])
        res = _finish(p)
    finally:
        p.stop()
    assert res["notes"] == [[1], [2], [3], [4], [5], [6]]
    syncs = [e[1]["seq"] for e in broker.events if e[0] == "sync"]
    assert syncs[1] == 2
    assert broker.count("connect") >= 2


def test_client_sync_dropped_by_limit_counts_lost(broker, interp):
    """first > last+1 in the sync answer: the gap is counted as lost and delivery moves on."""
    p = _notes_device(broker, interp, 1)
    try:
        with broker.lock:
            broker.next_seq = 6
            broker.queue = [(5, ["five"])]  # 1-4 were dropped by the queue limit
        broker.kick()
        res = _finish(p)
    finally:
        p.stop()
    assert res["notes"] == [["five"]]
    assert res["lost"] == 4
    assert res["last_seq"] == 5


def test_client_sync_session_recreated_starts_again(broker, interp):
    """last >= next in the sync answer: the session was recreated, numbering restarts at first."""
    p = _notes_device(broker, interp, 3)
    try:
        broker.notify(["old1"])
        broker.notify(["old2"])
        assert broker.wait_for(lambda: any(e[0] == "ack" and e[1]["seq"] == 2 for e in broker.events))
        with broker.lock:
            broker.next_seq = 1
            broker.queue = []
        broker.kick()
        # fence: the device's PUBACK of the sync answer, so "new1" leaves after that answer on the same connection
        assert broker.wait_for(lambda: _acked_after(broker, "sync", 2))
        broker.notify(["new1"])
        res = _finish(p)
    finally:
        p.stop()
    assert res["notes"] == [["old1"], ["old2"], ["new1"]]
    assert res["recreated"] == 1
    assert res["last_seq"] == 1


def _acked_after(broker, kind, n):
    """True once the device has PUBACKed a message the broker sent after the n-th ``kind`` event (its answer)."""
    with broker.lock:
        where = [i for i, e in enumerate(broker.events) if e[0] == kind]
        return len(where) >= n and any(e[0] == "puback" for e in broker.events[where[n - 1]:])


def test_client_lost_puback_retransmits_with_dup(broker, interp):
    """No PUBACK and a dropped connection: the call is resent with DUP and the same packet id."""
    broker.drop_first_puback = True  # the very first PUBLISH is the connect sync
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "call"])
    assert rc == 0, err
    assert res["result"] == ["ok", ["once"]]
    pubs = [e for e in broker.events if e[0] == "publish"]
    assert pubs[0][3] is False
    resent = [e for e in pubs[1:] if e[2] == pubs[0][2] and e[3] is True]
    assert resent, pubs  # same packet id, DUP set
    assert res["connects"] >= 2


def test_client_broker_closes_mid_packet(broker, interp):
    """Half a reply then EOF: the device reconnects, re-asks with the same id, the CA runs it once."""
    broker.close_mid_reply = True
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "call"])
    assert rc == 0, err
    assert res["result"] == ["ok", ["once"]]
    ids = [c["id"] for c in calls(broker, "echo")]
    assert len(ids) >= 2 and len(set(ids)) == 1
    assert list(broker.runs.values()) == [1]


def test_client_half_written_packets(broker, interp):
    """Replies trickling in one byte at a time are reassembled."""
    broker.trickle_replies = True
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "call"])
    assert rc == 0, err
    assert res["result"] == ["ok", ["once"]]
    assert res["connects"] == 1


def test_client_busy_retried_with_same_id(broker, interp):
    """busy replies are retried (same id) within the timeout until the CA runs the call."""
    broker.busy_first = 2
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "call"])
    assert rc == 0, err
    assert res["result"] == ["ok", ["once"]]
    ids = [c["id"] for c in calls(broker, "echo")]
    assert len(ids) == 3 and len(set(ids)) == 1


def test_client_no_connack_times_out(broker, interp):
    """A broker that accepts TCP but never answers CONNACK: connect() gives up within its timeout."""
    broker.connack = False
    connect_ms, attempt_ms = 1500, 2000  # scenarios/device.py: connect(timeout=1.5), Client(connect_timeout=2)
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "no_connack"], timeout=30)
    assert rc == 0, err
    assert res["result"] == "timeout"
    # it kept trying until its deadline, then gave up: at most one attempt's timeout later (plus generous slack)
    assert connect_ms <= res["ms"] < connect_ms + attempt_ms + 10_000, res["ms"]


def test_client_refused_credentials_raise(broker, interp):
    """CONNACK code 5 (not authorized) is raised at once, not retried forever."""
    broker.connack_code = 5
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "no_connack"], timeout=30)
    assert rc == 0, err
    assert res["result"] == "oserror"
    assert broker.count("connect") == 1


def test_client_silent_ca_call_times_out(broker, interp):
    """A call whose reply never comes raises Timeout after its timeout, not later."""
    broker.silent_methods = ("silent",)
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "silent"])
    assert rc == 0, err
    assert res["result"] == "timeout"
    call_ms = 1000  # scenarios/device.py: c.call("silent", timeout=1)
    assert call_ms * 0.9 <= res["ms"] < call_ms + 10_000, res["ms"]  # its deadline, not sooner; generous slack


def test_client_keepalive_pings_and_detects_dead_broker(broker, interp):
    """With keepalive 1 s the device pings; when PINGRESP stops, it reconnects."""
    broker.ping_reply = False
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "keepalive"])
    assert rc == 0, err
    assert broker.count("ping") >= 2
    assert res["connects"] >= 2


def test_client_oversize_packet_skipped(broker, interp):
    """A packet bigger than the input buffer is skipped (PUBACKed, counted); later traffic works."""
    p = Proc([*interp, str(SCRIPT), str(broker.port), "oversize"], env=device_env())
    try:
        assert p.wait_output("READY", 15), p.output()
        assert broker.wait_for(lambda: broker.count("sync") >= 1)
        broker.push_raw_note(1, ["x" * 2000])
        assert broker.wait_for(lambda: broker.count("puback") >= 1)
        broker.notify(["small"])
        res = _finish(p)
    finally:
        p.stop()
    assert res["oversize"] >= 1
    assert res["echo"] == ["after"]
    assert res["notes"] == [["small"]]


def test_client_packet_ids_wrap(broker, interp):
    """Packet ids wrap from 65535 to 1 and are never 0."""
    rc, _res, _out, err = run_device(interp, SCRIPT, [broker.port, "pids"])
    assert rc == 0, err
    pids = [e[2] for e in broker.events if e[0] == "publish"]
    assert 65535 in pids and 1 in pids and 0 not in pids


def test_client_sets_the_will_and_announces_online_then_offline(broker, interp):
    """CONNECT carries the offline presence as a QoS 1, non-retained will on the request topic; online follows
    the connect sync; close() sends offline before DISCONNECT."""
    rc, res, _, err = run_device(interp, SCRIPT, [broker.port, "presence", "on"])
    assert rc == 0, err
    assert res["echo"] == [1]
    (will,) = [e for e in broker.events if e[0] == "will"]
    assert (will[1], cbor2.loads(will[2]), will[3], will[4]) == (
        "ca/dev/in", {"t": "presence", "session": "s1", "online": False}, 1, False)
    kinds = [e[0] for e in broker.events if e[0] in ("sync", "presence", "call", "disconnect")]
    assert kinds == ["sync", "presence", "call", "presence", "disconnect"]
    presence = [e[1] for e in broker.events if e[0] == "presence"]
    assert presence == [{"t": "presence", "session": "s1", "online": True},
                        {"t": "presence", "session": "s1", "online": False}]
    assert all(e[4] == 1 for e in broker.events if e[0] == "publish")  # QoS 1


def test_client_without_presence_sets_no_will(broker, interp):
    rc, _, _, err = run_device(interp, SCRIPT, [broker.port, "presence", "off"])
    assert rc == 0, err
    assert not [e for e in broker.events if e[0] in ("will", "presence")]
    connect = next(e for e in broker.events if e[0] == "connect")
    assert connect[2] & 0x04 == 0


def test_presence_and_an_own_will_exclude_each_other():
    from firmware_client import Client

    with pytest.raises(ValueError):
        Client("dev", "s1", will=("ca/dev/in", b"x", 1, False))
    Client("dev", "s1", will=("ca/dev/in", b"x", 1, False), presence=False)


@pytest.mark.parametrize("lose", ["drop_calls", "drop_replies"])
def test_client_resends_the_identical_request_after_a_silence(broker, interp, lose):
    """Issue 14 item 16: a request (or its reply) lost without a trace is sent again after `resend` seconds of
    silence with the same id and the same bytes, so the call runs once and is answered; notifications that arrive
    meanwhile are delivered and acked; a CA that stays silent still ends in Timeout within the call's timeout."""
    setattr(broker, lose, 2)
    broker.note_on_drop = True
    broker.silent_methods = ("silent",)
    rc, res, _out, err = run_device(interp, SCRIPT, [broker.port, "resend", "0.3"])
    assert rc == 0, err
    assert res["result"] == ["ok", ["once"]]
    assert res["resent"] == 2
    echoes = calls(broker, "echo")
    assert len(echoes) == 3 and len({c["id"] for c in echoes}) == 1
    assert len(set(broker.raw_calls[:3])) == 1  # byte for byte the same request
    assert broker.runs == {echoes[0]["id"]: 1}
    assert res["notes"] == [["lost call" if lose == "drop_calls" else "lost reply"]] * 2
    assert broker.wait_for(lambda: any(e[0] == "ack" and e[1]["seq"] == 2 for e in broker.events))
    assert res["silent"] == "timeout"
    assert res["silent_resent"] >= 1  # 0.3 s, then 0.6 s, ... all inside the 1.5 s timeout
    silent = calls(broker, "silent")
    assert len(silent) == 1 + res["silent_resent"] and len({c["id"] for c in silent}) == 1
    assert res["silent_ms"] < 5000  # bounded by the call's timeout (generous: never hangs)
