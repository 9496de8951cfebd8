"""amqtt 0.12.1 mis-frames a PUBLISH whose topic holds a wildcard: the rest of its body is parsed as new packets, so
a PUBLISH hidden in the payload is processed. These tests pin down what that means with and without the ACL."""

from __future__ import annotations

import cbor2
import pytest

from tests.device import Device
from tests.security.conftest import APP, add_device, publish_packet, raw_session


def smuggle(port: int, username: str | None, password: str | None, inner_topic: str, rid: str,
            fence: Device) -> None:
    """Send PUBLISH(topic="ca/+/in", payload=<a complete PUBLISH to inner_topic>) on a raw connection, then a plain
    call on ``fence``'s request topic (allowed) on the same connection, and wait for ``fence`` to get its reply:
    the broker and the bridge handled the smuggled packet, whatever became of it, before that call."""
    inner = publish_packet(inner_topic, cbor2.dumps({"t": "call", "id": rid, "method": "incr", "args": []}))
    outer = publish_packet("ca/+/in", inner, qos=1, packet_id=7)
    fence_id = f"{rid}-fence"
    after = publish_packet(f"ca/{fence.ca}/in", cbor2.dumps({"t": "call", "id": fence_id, "method": "get", "args": []}),
                           qos=1, packet_id=8)
    sock = raw_session(port, f"raw-{rid}", username, password)
    try:
        sock.sendall(outer + after)
        fence.wait_reply(fence_id, 15)
    finally:
        sock.close()


@pytest.fixture
def secured_amqtt(tmp_path, bridge_factory):
    auth = tmp_path / "devices.auth"
    creds = {name: add_device(auth, name) for name in ("alice", "bob")}
    bridge = bridge_factory(APP, extra=["--auth", str(auth)])
    bridge.start()
    yield bridge, creds
    bridge.stop()


def test_without_auth_a_smuggled_publish_reaches_any_ca(bridge_factory):
    """The framing bug itself (no ACL): an anonymous client makes bob's CA run a call it could not send directly."""
    bridge = bridge_factory(APP)
    bridge.start()
    bob = Device(bridge.port, "bob")
    try:
        smuggle(bridge.port, None, None, "ca/bob/in", "smuggled-1", fence=bob)
        assert bob.call("get").get("n") == 1  # the smuggled incr ran: without auth anyone may publish anyway
    finally:
        bob.close()
        bridge.stop()


def test_with_the_acl_a_smuggled_publish_is_still_checked(secured_amqtt):
    bridge, creds = secured_amqtt
    bob = Device(bridge.port, "bob", username="bob", password=creds["bob"]["password"])
    alice = Device(bridge.port, "alice", username="alice", password=creds["alice"]["password"])
    try:
        smuggle(bridge.port, "alice", creds["alice"]["password"], "ca/bob/in", "smuggled-2", fence=alice)
        smuggle(bridge.port, "alice", creds["alice"]["password"], "ca/alice/in", "smuggled-3", fence=alice)
        assert bob.call("get").get("n") is None  # never ran for bob
        # the smuggled packet is processed as alice's own (the framing bug is real) but under alice's rights
        assert alice.call("get").get("n") == 1
        assert bridge.proc.poll() is None  # and the broker survived
    finally:
        bob.close()
        alice.close()
