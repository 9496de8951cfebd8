"""The outbound path: QoS 1 PUBLISH packets built from a session topic encoded once, the in-flight packets resent
with DUP after a reconnect, the service's bounded cache of session topics, notes spliced from stored CBOR, and the
metrics a delivered call records in one step."""

from __future__ import annotations

import asyncio
import contextlib
import time
import types
from typing import Any

import cbor2
import pytest

import bridge.service
from bridge.metrics import Metrics
from bridge.mqtt import BrokerURL, MqttLink, _length, _publish, _publish_qos1, _with_dup, prefixed
from bridge.protocol import Topics, encode_note
from bridge.service import Bridge


def _reference_publish(topic: bytes, payload: bytes, pid: int, dup: bool = False) -> bytes:
    """A QoS 1 PUBLISH written out field by field (MQTT 3.1.1, 3.3)."""
    body = len(topic).to_bytes(2, "big") + topic + pid.to_bytes(2, "big") + payload
    return bytes((0x32 | (0x08 if dup else 0),)) + _length(len(body)) + body


def test_a_qos1_publish_from_a_prefixed_topic_is_the_packet_field_by_field():
    topic = b"ca/fan/session/d17"
    for size in (0, 1, 100, 103, 104, 105, 200, 16_383, 16_384, 20_000, 2_100_000):
        payload = bytes(range(256)) * (size // 256) + b"p" * (size % 256)
        for pid in (1, 255, 256, 65535):
            built = _publish_qos1(prefixed(topic), payload, pid)
            assert built == _reference_publish(topic, payload, pid), (size, pid)
            assert built == _publish(topic, payload, 1, pid)
            assert _with_dup(built) == _reference_publish(topic, payload, pid, dup=True)


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


async def test_text_and_prefixed_topics_publish_the_same_packets_and_pubacks_free_their_ids():
    link = MqttLink(BrokerURL("127.0.0.1", 1), client_id="t", on_message=lambda t, p: None, subscriptions=[])
    transport = _Transport()
    link._wire = types.SimpleNamespace(transport=transport)  # type: ignore[assignment]
    link.connected.set()
    link.publish("ca/x/session/a", b"one")
    link.publish(prefixed(b"ca/x/session/a"), b"two")
    link._flush()
    assert transport.written == [_reference_publish(b"ca/x/session/a", b"one", 1)
                                 + _reference_publish(b"ca/x/session/a", b"two", 2)]
    assert not link._all_acked.is_set()
    link._packet(0x40, b"\x00\x01")
    assert list(link._inflight) == [2] and not link._all_acked.is_set()
    link._packet(0x40, b"\x00\x02")
    assert not link._inflight and link._all_acked.is_set()
    assert await link.flush(1.0)


async def test_write_now_sends_the_held_ack_and_the_queue_in_one_write_within_the_turn():
    """What a committed batch sends leaves at once (bridge.admission.Sink.end_batch), behind the PUBACKs held for
    it; the flush that was on the loop's ready queue is cancelled, so a PUBACK held after it (the next request,
    read first) waits for the next reply instead of leaving in a write of its own."""
    link = MqttLink(BrokerURL("127.0.0.1", 1), client_id="t", on_message=lambda t, p: None, subscriptions=[])
    transport = _Transport()
    link._wire = types.SimpleNamespace(transport=transport)  # type: ignore[assignment]
    link.connected.set()
    link.write_now()
    assert transport.written == []  # nothing queued: no write
    link._hold_ack(b"\x40\x02\x00\x07")  # the PUBACK of the request being answered
    link.publish("ca/x/session/a", b"reply")
    assert transport.written == []
    link.write_now()
    assert transport.written == [b"\x40\x02\x00\x07" + _reference_publish(b"ca/x/session/a", b"reply", 1)]
    link._hold_ack(b"\x40\x02\x00\x08")  # the next request, read before the old flush's turn comes
    await asyncio.sleep(0)  # that flush was cancelled: it does not send the new PUBACK alone
    await asyncio.sleep(0)
    assert len(transport.written) == 1
    link.publish("ca/x/session/a", b"reply2")  # the PUBACK leaves with the next reply
    link.write_now()
    assert transport.written[1:] == [b"\x40\x02\x00\x08" + _reference_publish(b"ca/x/session/a", b"reply2", 2)]
    link.publish("ca/x/session/a", b"next")  # and the next publish schedules a write of its own
    await asyncio.sleep(0)
    assert transport.written[2:] == [_reference_publish(b"ca/x/session/a", b"next", 3)]
    if link._ack_timer is not None:
        link._ack_timer.cancel()


async def test_a_full_in_flight_window_queues_and_each_puback_sends_the_next():
    link = MqttLink(BrokerURL("127.0.0.1", 1), client_id="t", on_message=lambda t, p: None, subscriptions=[],
                    max_inflight=2)
    transport = _Transport()
    link._wire = types.SimpleNamespace(transport=transport)  # type: ignore[assignment]
    link.connected.set()
    for i in range(4):
        link.publish("t", b"%d" % i)
    link._flush()
    assert transport.written == [_reference_publish(b"t", b"0", 1) + _reference_publish(b"t", b"1", 2)]
    link._packet(0x40, b"\x00\x01")
    link._flush()
    assert transport.written[-1] == _reference_publish(b"t", b"2", 3)
    for pid in (2, 3):
        link._packet(0x40, pid.to_bytes(2, "big"))
    link._flush()
    assert transport.written[-1] == _reference_publish(b"t", b"3", 4)
    assert not link._all_acked.is_set()
    link._packet(0x40, b"\x00\x04")
    assert link._all_acked.is_set()


class _Broker:
    """Just enough of an MQTT broker: CONNACK, SUBACK; records each connection's PUBLISH packets, and acknowledges
    them only once ``ack`` is set."""

    def __init__(self) -> None:
        self.connections: list[list[bytes]] = []
        self.ack = False
        self.writers: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        got: list[bytes] = []
        self.connections.append(got)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readexactly(1))[0]
                length, mult = 0, 1
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length += (byte & 0x7F) * mult
                    mult *= 128
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                kind = head >> 4
                if kind == 1:
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == 8:
                    writer.write(b"\x90\x03" + body[:2] + b"\x01")
                elif kind == 3:
                    got.append(bytes((head,)) + _length(length) + body)
                    if self.ack:
                        tlen = int.from_bytes(body[:2], "big")
                        writer.write(b"\x40\x02" + body[2 + tlen:4 + tlen])


async def test_unacknowledged_publishes_are_resent_with_dup_same_ids_in_order_after_a_reconnect():
    broker = _Broker()
    server = await asyncio.start_server(broker.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = MqttLink(BrokerURL("127.0.0.1", port), client_id="resend", on_message=lambda t, p: None,
                    subscriptions=[("x/#", 1)], backoff=(0.01, 0.05))
    try:
        async with link:
            assert await link.wait_connected(10)
            for i in range(3):
                link.publish(prefixed(b"ca/x/session/s%d" % i), b"note %d" % i)
            deadline = time.monotonic() + 10
            while len(broker.connections[0]) < 3:
                assert time.monotonic() < deadline, "the first publishes never reached the broker"
                await asyncio.sleep(0.01)
            first = list(broker.connections[0])
            assert first == [_reference_publish(b"ca/x/session/s%d" % i, b"note %d" % i, i + 2) for i in range(3)]
            broker.ack = True
            broker.writers[0].close()  # the connection drops with the three unacknowledged
            deadline = time.monotonic() + 10
            while link._inflight or not link.connected.is_set():  # resent on the next connection, acknowledged
                assert time.monotonic() < deadline, "the unacknowledged publishes were never acknowledged"
                await asyncio.sleep(0.01)
            assert broker.connections[1] == [_with_dup(packet) for packet in first]
            assert await link.flush(1)
    finally:
        server.close()
        await server.wait_closed()


def _service(link: Any) -> Any:
    fake = types.SimpleNamespace(link=link, topics=Topics("ca"), _session_topics={})
    fake._session_topic = Bridge._session_topic.__get__(fake)
    return fake, Bridge.send.__get__(fake)


def test_the_service_publishes_on_the_session_topic_and_keeps_a_bounded_cache_of_them(monkeypatch):
    sent: list[tuple[Any, bytes]] = []
    link = types.SimpleNamespace(publish=lambda topic, payload, qos=1: sent.append((topic, payload)))
    fake, send = _service(link)
    send("ca1", "s1", b"a")
    send("ca1", "s1", b"b")
    send("ca1", "s2", b"c")
    assert sent == [(prefixed(b"ca/ca1/session/s1"), b"a"), (prefixed(b"ca/ca1/session/s1"), b"b"),
                    (prefixed(b"ca/ca1/session/s2"), b"c")]
    assert sent[0][0] is sent[1][0]  # encoded once
    monkeypatch.setattr(bridge.service, "SESSION_TOPICS", 4)
    for i in range(10):
        send("ca2", f"s{i}", b"x")
        assert len(fake._session_topics) <= 4
    assert sent[-1] == (prefixed(b"ca/ca2/session/s9"), b"x")


@pytest.mark.parametrize("seq", [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1])
def test_a_note_spliced_from_stored_args_is_the_map_encoded_whole(seq):
    for args in ([], [1.5, "x"], [{"k": [1, 2]}, None, b"\x00"]):
        stored = cbor2.dumps(args)
        assert encode_note(seq, stored, "cbor") == cbor2.dumps({"t": "note", "seq": seq, "args": args})
        assert encode_note(seq, cbor2.dumps([1, "x"]), "json") == b'{"t":"note","seq":%d,"args":[1,"x"]}' % seq


def test_call_finished_counts_as_call_done_and_call_stages_and_tells_the_wall_time():
    one, two = Metrics(), Metrics()
    admitted = time.perf_counter()
    values = [("incr", "ok", admitted, admitted + 0.001, admitted + 0.002, admitted + 0.004, admitted + 0.0045),
              ("incr", "app", admitted, admitted + 0.01, admitted + 0.02, admitted + 0.04, admitted + 0.05),
              ("other", "ok", admitted, admitted, admitted, admitted + 0.3, admitted + 1.2)] * 700
    for method, outcome, a, s, sub, durable, sent in values:
        one.call_done(method, outcome, sent - a)
        one.call_stages(a, s, sub, durable, sent)
        wall = two.call_finished(method, outcome, a, s, sub, durable, sent)
        assert abs(wall - (time.time() - (time.perf_counter() - sent))) < 1.0  # the same clock, read once
    assert one.calls == two.calls
    for method in ("incr", "other"):
        assert one.latency[method].counts == two.latency[method].counts
        assert one.latency[method].total == pytest.approx(two.latency[method].total)
    for name in one.stages:
        assert one.stages[name].counts == two.stages[name].counts
