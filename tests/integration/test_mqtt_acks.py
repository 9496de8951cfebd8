"""The link holds the PUBACK of an inbound publish for its next write: at one device, the acknowledgement of a
request leaves with the reply (one write per call instead of two); with nothing to send, it leaves after ACK_HOLD.
Against a real mosquitto, with the link's transport wrapped to see each write."""

from __future__ import annotations

import asyncio
from typing import Any

import bridge.mqtt
from bridge.mqtt import BrokerURL, MqttLink
from tests.conftest import Mosquitto


class _Writes:
    """The link's transport, noting the bytes of each write."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


async def _until(pred, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _pubacks(data: bytes) -> int:
    return data.count(b"\x40\x02")


async def _linked(broker: Mosquitto, on_message: Any) -> tuple[MqttLink, MqttLink, _Writes]:
    bridge_link = MqttLink(BrokerURL("127.0.0.1", broker.port), client_id="acks-bridge", on_message=on_message,
                           subscriptions=[("req/#", 1)], clean_session=True)
    device = MqttLink(BrokerURL("127.0.0.1", broker.port), client_id="acks-device", on_message=lambda t, p: None,
                      subscriptions=[("reply/#", 1)], clean_session=True)
    await bridge_link.__aenter__()
    await device.__aenter__()
    assert await bridge_link.wait_connected(20) and await device.wait_connected(20)
    wire = bridge_link._wire
    assert wire is not None
    writes = _Writes(wire.transport)
    wire.transport = writes  # type: ignore[assignment]
    return bridge_link, device, writes


async def test_the_puback_of_a_request_leaves_in_the_same_write_as_its_reply(tmp_path, monkeypatch):
    monkeypatch.setattr(bridge.mqtt, "ACK_HOLD", 30.0)  # only the reply may release it here
    broker = Mosquitto(tmp_path).start()
    got: list[bytes] = []
    loop = asyncio.get_running_loop()
    links: list[MqttLink] = []

    def on_message(topic: str, payload: bytes) -> None:
        got.append(payload)
        # the reply comes a few loop turns later, as a committed call's does
        loop.call_later(0.05, links[0].publish, "reply/x", b"answer:" + payload)

    try:
        bridge_link, device, writes = await _linked(broker, on_message)
        links.append(bridge_link)
        try:
            for i in range(3):
                device.publish("req/x", b"call%d" % i)
                await _until(lambda i=i: sum(b"answer:call" in w for w in writes.writes) == i + 1, "the reply")
            assert got == [b"call0", b"call1", b"call2"]
            replies = [w for w in writes.writes if b"answer:call" in w]
            assert all(_pubacks(w) == 1 for w in replies), replies  # each reply carries its request's PUBACK
            assert not [w for w in writes.writes if _pubacks(w) and b"answer:" not in w]  # no PUBACK on its own
        finally:
            await device.aclose()
            await bridge_link.aclose()
    finally:
        broker.stop()


async def test_a_held_puback_leaves_by_itself_when_nothing_else_is_sent(tmp_path):
    broker = Mosquitto(tmp_path).start()
    try:
        bridge_link, device, writes = await _linked(broker, lambda t, p: None)
        try:
            device.publish("req/x", b"no reply for this one")
            await _until(lambda: any(_pubacks(w) for w in writes.writes), "the PUBACK")
            assert await bridge_link.flush(5)
        finally:
            await device.aclose()
            await bridge_link.aclose()
    finally:
        broker.stop()


async def test_at_most_ack_held_pubacks_wait(tmp_path, monkeypatch):
    # more publishes than mosquitto's in-flight window (20): they only keep coming if the held PUBACKs leave
    n = 3 * bridge.mqtt.ACK_HELD
    monkeypatch.setattr(bridge.mqtt, "ACK_HOLD", 30.0)
    broker = Mosquitto(tmp_path).start()
    got: list[bytes] = []
    try:
        bridge_link, device, writes = await _linked(broker, lambda t, p: got.append(p))
        try:
            for i in range(n):
                device.publish("req/x", b"m%d" % i)
            await _until(lambda: len(got) == n, "the publishes")
            assert sum(_pubacks(w) for w in writes.writes) >= n - bridge.mqtt.ACK_HELD
        finally:
            await device.aclose()
            await bridge_link.aclose()
    finally:
        broker.stop()
