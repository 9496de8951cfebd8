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
    for topic in ("ca/bob/in", "ca/bob/session/default", "ca/bob/errors", "ca/ca-bridge/in", "other/topic"):
        alice.publish(topic, call_msg(f"evil-{topic}", "incr"))  # acknowledged (amqtt) or dropped: never delivered
    alice.publish("ca/alice/in", call_msg("own-1", "incr"))  # her own CA still works, and orders after the above
    time.sleep(1.0)
    assert bob.call("get")["n"] == 1  # bob's method never ran for alice
    assert bob.call("incr") == 2
    assert not any(rid.startswith("evil") for rid in bob.replies)


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
    time.sleep(0.5)
    assert not any(b"secret-token" in payload for _t, payload, _r in alice.messages)
    assert [t for t, _p, _r in alice.messages if "/bob/" in t] == []


def test_no_retained_data_reaches_another_device(secure, devices, probes):
    bob = devices("bob")
    assert bob.call("record", "bob-private") == 1
    # bob (or a buggy bob firmware) publishes retained to its own request topic: only the bridge may read it
    bob.client.publish("ca/bob/in", call_msg("retained-1", "record", "retained-private"), qos=1,
                       retain=True).wait_for_publish(10)
    time.sleep(0.3)
    alice = probes("alice")
    assert alice.connect()
    alice.subscribe("ca/alice/session/+")
    for topic in ("ca/bob/in", "ca/#", "#", "ca/+/in"):
        alice.subscribe(topic)
    time.sleep(1.0)
    assert not any(b"private" in payload for _t, payload, _r in alice.messages)
    assert all(not retained for _t, _p, retained in alice.messages)
    # and the bridge itself never publishes retained messages
    watcher = probes("bob")
    assert watcher.connect()
    watcher.subscribe("ca/bob/session/+")
    bob.call("incr")
    time.sleep(0.3)
    assert all(not retained for _t, _p, retained in watcher.messages)
    cleared = probes("bob")
    assert cleared.connect()
    cleared.publish("ca/bob/in", b"", retain=True)  # clear it (an empty retained publish)


def test_a_removed_device_is_refused_on_its_next_connect(secure, devices, probes):
    alice = devices("alice")
    assert alice.call("incr") == 1
    out = cli("device", "remove", "alice", "--auth", str(secure.auth))
    assert "removed" in out.stdout
    secure.reload()
    time.sleep(0.2)
    assert not probes("alice").connect()
    assert probes("bob").connect()  # the others are untouched
    # a new device is accepted without a restart
    secure.creds["carol"] = add_device(secure.auth, "carol")
    secure.reload()
    time.sleep(0.2)
    assert devices("carol").call("incr") == 1


def test_rotation_invalidates_the_old_password(secure, probes):
    old = secure.creds["bob"]["password"]
    new = add_device(secure.auth, "bob", "--rotate")["password"]
    assert new != old
    secure.reload()
    time.sleep(0.2)
    assert not probes("bob", old).connect()
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
    other.publish("ca/bob/in", call_msg("queued-1", "record_notify", "queued-secret", session="s1"))
    time.sleep(0.5)  # the reply for session s1 is now queued in bob-phone's offline session
    thief = probes("alice", client_id="bob-phone", clean_session=False)
    thief.connect()
    time.sleep(1.0)
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
    time.sleep(1.0)
    assert alice_dev.call("get")["n"] == 1
