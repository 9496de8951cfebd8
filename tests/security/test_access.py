"""Devices can only touch their own CA: authentication, per-device ACLs, revocation and TLS, on both brokers."""

from __future__ import annotations

import os
import time

import cbor2
import pytest

from tests.device import Device
from tests.security.conftest import Probe, _varint, add_device, cli


@pytest.fixture
def devices(secure):
    made: list[Device] = []

    def make(name: str, session: str = "default", *, tls: bool = False, **kw) -> Device:
        c = secure.creds[name]
        d = Device(secure.tls_port if tls else secure.port, name, session, username=c["username"],
                   password=c["password"], tls=str(secure.certs["ca"]) if tls else None, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.fixture
def probes(secure):
    made: list[Probe] = []

    def make(name: str | None, password: str | None = None, *, tls: bool = False, **kw) -> Probe:
        if name is not None and password is None and name in secure.creds:
            password = secure.creds[name]["password"]
        p = Probe(secure.tls_port if tls else secure.port, name, password,
                  tls=secure.certs["ca"] if tls else None, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def call_msg(rid: str, method: str, *args, session: str = "default") -> bytes:
    return cbor2.dumps({"t": "call", "id": rid, "session": session, "method": method, "args": list(args)})


def _reply(payload: bytes, rid: str) -> dict | None:
    try:
        msg = cbor2.loads(payload)
    except Exception:  # not CBOR: not the reply looked for
        return None
    return msg if isinstance(msg, dict) and msg.get("t") == "reply" and msg.get("id") == rid else None


def fence(probe: Probe, own_ca: str, rid: str, timeout: float = 15.0) -> dict:
    """Publish a call to the probe's own CA (an allowed path) and wait for its reply (the probe must be subscribed
    to its own session topics). Whatever the broker delivers to this probe before that reply has been delivered."""
    probe.publish(f"ca/{own_ca}/in", call_msg(rid, "get"))
    return wait_reply(probe, rid, timeout)


def wait_reply(probe: Probe, rid: str, timeout: float = 15.0) -> dict:
    with probe._cond:
        assert probe._cond.wait_for(
            lambda: any(_reply(p, rid) for _t, p, _r in probe.messages), timeout), f"no reply to {rid}"
        return next(r for _t, p, _r in probe.messages if (r := _reply(p, rid)))


def eventually(check, what: str, timeout: float = 10.0) -> None:
    """Retry ``check`` until it holds (a reloaded password file takes effect when the broker rereads it)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_devices_work_and_the_bridge_serves_them(devices):
    alice = devices("alice")
    assert alice.call("incr") == 1
    assert devices("bob", tls=True).call("incr") == 1  # a paho device over TLS


def test_wrong_missing_or_unknown_credentials_are_refused(secure, probes):
    assert not probes(None).connect()  # anonymous
    assert not probes("alice", "not-the-password").connect()
    assert not probes("alice", "").connect()
    assert not probes("mallory", "whatever").connect()
    assert not probes("ca-bridge", "guess").connect()
    assert not probes("alice", secure.creds["bob"]["password"]).connect()  # bob's password is not alice's
    assert probes("alice").connect()


def test_a_device_cannot_publish_to_another_ca(secure, devices, probes):
    bob = devices("bob")
    assert bob.call("incr") == 1
    alice = probes("alice")
    assert alice.connect()
    assert alice.subscribe("ca/alice/session/+") == [1]
    for topic in ("ca/bob/in", "ca/bob/session/default", "ca/bob/errors", "ca/ca-bridge/in", "other/topic"):
        alice.publish(topic, call_msg(f"evil-{topic}", "incr"))  # acknowledged (amqtt) or dropped: never delivered
    # the fence: her own CA still works, and her call there is handled after the above (same connection, in order)
    alice.publish("ca/alice/in", call_msg("own-1", "incr"))
    assert wait_reply(alice, "own-1")["ok"] == 1
    # had the bridge taken any of them, bob's get would queue behind that incr; bob's session would have got the
    # publishes on his topics before the reply to the get
    assert bob.call("get")["n"] == 1  # bob's method never ran for alice
    assert bob.call("incr") == 2
    assert not any(rid.startswith("evil") for rid in bob.replies)
    assert bob.errors.empty()


def test_a_device_cannot_read_another_cas_topics(secure, devices, probes):
    bob = devices("bob", "watch")
    alice = probes("alice")
    assert alice.connect()
    for topic in ("ca/bob/session/+", "ca/bob/session/watch", "ca/bob/errors", "ca/bob/in", "ca/+/session/+",
                  "ca/#", "#", "ca/alice/#"):
        codes = alice.subscribe(topic)
        # amqtt refuses the SUBSCRIBE; mosquitto 2.0 grants it and filters every message by the read ACL
        assert codes == [0x80] or secure.kind == "mosquitto", f"{topic}: {codes}"
    assert alice.subscribe("ca/alice/session/+") == [1]
    assert alice.subscribe("ca/alice/errors") == [1]
    assert bob.call("record_notify", "secret-token") == 1  # a reply and a notification for bob
    bob.wait_notes(1)
    bob.publish(b"\xff garbage")  # and an error on bob's errors topic
    bob.errors.get(timeout=10)
    # fence: the bridge answers alice after it published all of the above, so anything of bob's routed to her
    # would have reached her before this reply
    fence(alice, "alice", "fence-read")
    assert not any(b"secret-token" in payload for _t, payload, _r in alice.messages)
    assert [t for t, _p, _r in alice.messages if "/bob/" in t] == []


def test_no_retained_data_reaches_another_device(secure, devices, probes):
    bob = devices("bob")
    assert bob.call("record", "bob-private") == 1
    # bob (or a buggy bob firmware) publishes retained to its own request topic: only the bridge may read it
    bob.client.publish("ca/bob/in", call_msg("retained-1", "record", "retained-private"), qos=1,
                       retain=True).wait_for_publish(10)
    assert bob.wait_reply("retained-1")["ok"] == 1  # the broker has taken (and retained) it: the bridge ran it
    alice = probes("alice")
    assert alice.connect()
    alice.subscribe("ca/alice/session/+")
    for topic in ("ca/bob/in", "ca/#", "#", "ca/+/in"):
        alice.subscribe(topic)
    # fence: retained messages are sent for a subscription before anything published after it
    fence(alice, "alice", "fence-retained")
    assert not any(b"private" in payload for _t, payload, _r in alice.messages)
    assert all(not retained for _t, _p, retained in alice.messages)
    # and the bridge itself never publishes retained messages: one subscribing after its replies gets none of them
    assert bob.call("incr") == 1
    late = probes("bob")
    assert late.connect()
    assert late.subscribe("ca/bob/session/+") == [1]
    bob.send_call("get", rid="fence-late")
    wait_reply(late, "fence-late")
    assert [_reply(p, "fence-late") is not None for _t, p, _r in late.messages] == [True]
    assert all(not retained for _t, _p, retained in late.messages)
    cleared = probes("bob")
    assert cleared.connect()
    cleared.publish("ca/bob/in", b"", retain=True)  # clear it (an empty retained publish)


def test_a_removed_device_is_refused_on_its_next_connect(secure, devices, probes):
    alice = devices("alice")
    assert alice.call("incr") == 1
    out = cli("device", "remove", "alice", "--auth", str(secure.auth))
    assert "removed" in out.stdout
    secure.reload()
    eventually(lambda: not probes("alice").connect(), "alice to be refused")
    assert probes("bob").connect()  # the others are untouched
    # a new device is accepted without a restart
    secure.creds["carol"] = add_device(secure.auth, "carol")
    secure.reload()
    eventually(lambda: probes("carol").connect(), "carol to be accepted")
    assert devices("carol").call("incr") == 1


def test_rotation_invalidates_the_old_password(secure, probes):
    old = secure.creds["bob"]["password"]
    new = add_device(secure.auth, "bob", "--rotate")["password"]
    assert new != old
    secure.reload()
    eventually(lambda: not probes("bob", old).connect(), "the old password to be refused")
    assert probes("bob", new).connect()


def test_tls_needs_a_trusted_certificate(secure, probes):
    assert probes("alice", tls=True).connect()
    untrusting = Probe(secure.tls_port, "alice", secure.creds["alice"]["password"], tls=secure.certs["other_ca"])
    try:
        assert not untrusting.connect(timeout=3)
    finally:
        untrusting.close()
    assert not probes("alice", "wrong", tls=True).connect()


def test_a_device_cannot_take_over_another_devices_session(secure, probes):
    """Same client id as bob, persistent session: alice must neither get bob's queued messages nor his rights."""
    bob = probes("bob", client_id="bob-phone", clean_session=False)
    assert bob.connect()
    assert bob.subscribe("ca/bob/session/+") == [1]
    bob.close()
    other = probes("bob")
    assert other.connect()
    assert other.subscribe("ca/bob/session/s1") == [1]
    other.publish("ca/bob/in", call_msg("queued-1", "record_notify", "queued-secret", session="s1"))
    wait_reply(other, "queued-1")  # routed to every subscriber: it is now queued in bob-phone's offline session
    thief = probes("alice", client_id="bob-phone", clean_session=False)
    if thief.connect():
        # fence: a resumed session's queued messages are sent at once, before the reply to a later call
        assert thief.subscribe("ca/alice/session/+") == [1]
        fence(thief, "alice", "fence-thief")
    assert not any(b"queued-secret" in p for _t, p, _r in thief.messages)
    assert [t for t, _p, _r in thief.messages if "/bob/" in t] == []


def test_auth_files_are_private(secure):
    assert (os.stat(secure.auth).st_mode & 0o777) == 0o700
    for f in secure.auth.iterdir():
        assert (os.stat(f).st_mode & 0o777) == 0o600, f


def test_secrets_never_reach_the_logs(secure, devices, probes):
    assert devices("alice").call("incr") == 1
    assert not probes("bob", "wrong-password").connect()
    secrets = [c["password"] for c in secure.creds.values()]
    secrets.append((secure.auth / "bridge.secret").read_text().strip())
    logs = secure.bridge.logs() + (secure.broker.log.read_text() if secure.broker is not None else "")
    for secret in secrets:
        assert secret not in logs


def _connect_with_will(port: int, username: str, password: str, will_topic: str | None, will_payload: bytes = b"",
                       client_id: str | None = None):
    """A raw CONNECT (clean session off) with a QoS 1 will; returns (socket, CONNACK return code or -1)."""
    import socket

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    will = s(will_topic.encode()) + s(will_payload) if will_topic is not None else b""
    flags = (0x04 | 0x08 if will else 0) | 0x80 | 0x40  # will with QoS 1, username, password
    body = (s(b"MQTT") + bytes([4, flags]) + (60).to_bytes(2, "big") + s((client_id or os.urandom(4).hex()).encode())
            + will + s(username.encode()) + s(password.encode()))
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(bytes([0x10]) + _varint(len(body)) + body)
    try:
        connack = sock.recv(4)
    except OSError:
        connack = b""
    return sock, connack[3] if len(connack) == 4 else -1


def test_a_device_cannot_smuggle_a_request_through_its_will(secure, devices):
    """A will is a publish: one on another CA's topic never reaches it (refused at CONNECT, or dropped), while a
    will on the device's own request topic (what presence uses) is delivered when the connection dies."""
    bob = devices("bob")
    assert bob.call("incr") == 1
    alice = secure.creds["alice"]
    sock, _code = _connect_with_will(secure.port, alice["username"], alice["password"], "ca/bob/in",
                                     call_msg("evil-will", "incr"))
    sock.close()  # no DISCONNECT: the broker publishes the will if it accepted it
    sock, code = _connect_with_will(secure.port, alice["username"], alice["password"], "ca/alice/in",
                                    call_msg("own-will", "incr"))
    assert code == 0
    sock.close()
    watcher = devices("alice")
    deadline = time.monotonic() + 10
    while watcher.call("get").get("n") != 1 and time.monotonic() < deadline:  # her own will ran her own incr
        time.sleep(0.1)
    assert watcher.call("get").get("n") == 1
    assert bob.call("get")["n"] == 1  # bob's method never ran for alice's will


def test_a_refused_connect_cannot_plant_a_will_in_another_devices_session(secure, devices):
    """bob CONNECTs with alice's client id and a will on alice's request topic: whatever the broker does with the
    connection (amqtt refuses it, mosquitto refuses the will), alice's CA never runs bob's will."""
    alice_dev = devices("alice")
    assert alice_dev.call("incr") == 1
    alice, bob = secure.creds["alice"], secure.creds["bob"]
    board, code = _connect_with_will(secure.port, alice["username"], alice["password"], None, client_id="alice-board")
    assert code == 0
    intruder, _code = _connect_with_will(secure.port, bob["username"], bob["password"], "ca/alice/in",
                                         call_msg("planted", "incr"), client_id="alice-board")
    intruder.close()
    board.close()  # alice's own connection dies without DISCONNECT (if the intruder has not replaced it already)
    # fence: a will of alice's own on her own request topic, from a connection that dies after the two above
    sock, code = _connect_with_will(secure.port, alice["username"], alice["password"], "ca/alice/in",
                                    call_msg("fence-will", "record", "fence"))
    assert code == 0
    sock.close()
    deadline = time.monotonic() + 15
    while "fence" not in alice_dev.call("get")["seen"]:
        assert time.monotonic() < deadline, "the fence will never ran"
        time.sleep(0.1)
    assert alice_dev.call("get")["n"] == 1
