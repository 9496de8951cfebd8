"""The MQTT link frames packets out of whatever chunks the socket hands it: whole, split anywhere, several per read,
with one- to four-byte remaining lengths; oversized publishes are acknowledged and skipped, malformed lengths close
the connection."""

from __future__ import annotations

import random
from typing import Any

import pytest

import bridge.mqtt
from bridge.mqtt import BrokerURL, MqttLink, _length, _publish, _Wire, packet


class _Link:
    """What the wire hands on, as events in order: ("ack", bytes), ("message", topic, payload), (head, body)."""

    def __init__(self) -> None:
        self.packets: list[tuple[Any, ...]] = []
        self.oversized: list[int | None] = []

    def _packet(self, head: int, body: bytes) -> None:
        assert type(body) is bytes and head & 0xF0 != 0x30
        self.packets.append((head, body))

    def _hold_ack(self, ack: bytes) -> None:
        self.packets.append(("ack", ack))

    def _on_message(self, topic: str, payload: bytes) -> None:
        assert type(payload) is bytes
        self.packets.append(("message", topic, payload))

    def _oversized(self, pid: int | None) -> None:
        self.oversized.append(pid)

    def _lost(self, wire: Any) -> None:
        pass


class _Transport:
    def __init__(self) -> None:
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def _wire() -> tuple[_Wire, _Link]:
    link = _Link()
    wire = _Wire(link)  # type: ignore[arg-type]
    wire.transport = _Transport()  # type: ignore[assignment]
    return wire, link


def _events(packets: list[tuple[int, bytes]]) -> list[tuple[Any, ...]]:
    """What the wire hands the link for these packets: a PUBLISH as its acknowledgement (QoS 1 and 2) and its
    topic and payload, any other packet as it is."""
    out: list[tuple[Any, ...]] = []
    for head, body in packets:
        if head & 0xF0 != 0x30:
            out.append((head, body))
            continue
        qos = (head >> 1) & 3
        tend = 2 + int.from_bytes(body[:2], "big")
        if qos:
            out.append(("ack", (b"\x40\x02" if qos == 1 else b"\x50\x02") + body[tend : tend + 2]))
        out.append(("message", body[2:tend].decode(), body[tend + (2 if qos else 0) :]))
    return out


def _feed(wire: _Wire, stream: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        wire.data_received(stream[last:cut])
        last = cut


PACKETS = [  # remaining lengths of one byte (up to 127), two (up to 16,383) and three
    (0x32, b"\x00\x03a/b\x00\x07" + b"x" * n) for n in (0, 1, 120, 121, 122, 200, 16_376, 16_377, 16_500, 70_000)
] + [(0x40, b"\x00\x09"), (0xD0, b""), (0x30, b"\x00\x01t")]


async def test_packets_come_out_whole_whatever_the_chunks():
    stream = b"".join(bytes((head,)) + _length(len(body)) + body for head, body in PACKETS)
    rng = random.Random(17)
    for cuts in ([], list(range(1, 40)), [1], [2], [len(stream) - 1], *[rng.sample(range(1, len(stream)), 25)
                                                                         for _ in range(20)]):
        wire, link = _wire()
        _feed(wire, stream, cuts)
        assert link.packets == _events(PACKETS)
        assert not wire.buf and not wire.skip


async def test_a_publish_built_by_the_link_frames_back_to_its_parts():
    for size in (0, 100, 123, 124, 125, 126, 127, 128, 300, 20_000):
        for qos in (0, 1):
            packet = _publish(b"ca/x/session/s", b"p" * size, qos, 513)
            wire, link = _wire()
            wire.data_received(packet)
            assert link.packets == [("ack", b"\x40\x02\x02\x01")] * qos + [("message", "ca/x/session/s", b"p" * size)]


async def test_an_oversized_publish_is_acknowledged_and_skipped(monkeypatch):
    monkeypatch.setattr(bridge.mqtt, "MAX_INBOUND", 1000)
    big = (0x32, b"\x00\x01t\x01\x02" + b"z" * 5000)
    stream = b"".join(bytes((h,)) + _length(len(b)) + b for h, b in [PACKETS[0], big, PACKETS[-1]])
    for cuts in ([], [10, 20, 30, 3000, 5000, len(stream) - 3]):
        wire, link = _wire()
        _feed(wire, stream, cuts)
        assert link.packets == _events([PACKETS[0], PACKETS[-1]])
        assert link.oversized == [0x0102]


@pytest.mark.parametrize("chunks", [[b"\x30\xff\xff\xff\xff\x01"], [b"\x30\xff", b"\xff\xff", b"\xff\x01"]])
async def test_a_remaining_length_over_four_bytes_closes_the_connection(chunks):
    wire, link = _wire()
    for chunk in chunks:
        wire.data_received(chunk)
    assert wire.transport.aborted  # type: ignore[union-attr]
    assert not link.packets


async def test_a_publish_with_qos_3_closes_the_connection_unanswered():
    """MQTT 3.1.1 (3.3.1-4): a PUBLISH with both QoS bits set is malformed, and the connection is closed; what came
    before it in the same read is handled, nothing after it."""
    wire, link = _wire()
    wire.data_received(_publish(b"ca/a/in", b"x", 1, 7) + packet(0x36, b"\x00\x07ca/b/in\x00\x08y")
                       + _publish(b"ca/c/in", b"z", 0, 0))
    assert wire.transport.aborted  # type: ignore[union-attr]
    assert link.packets == [("ack", b"\x40\x02\x00\x07"), ("message", "ca/a/in", b"x")]


def _every_split(stream: bytes):
    """The stream in one read, byte by byte, and cut in two at every point."""
    yield [stream]
    yield [stream[i : i + 1] for i in range(len(stream))]
    for cut in range(1, len(stream)):
        yield [stream[:cut], stream[cut:]]


async def test_every_split_point_frames_the_same_packets():
    packets = [(0x32, b"\x00\x03a/b\x00\x07" + b"x" * n) for n in (0, 119, 120, 200)] \
        + [(0x40, b"\x00\x09"), (0xD0, b""), (0x30, b"\x00\x01t" + b"y" * 130)]
    stream = b"".join(bytes((head,)) + _length(len(body)) + body for head, body in packets)
    for chunks in _every_split(stream):
        wire, link = _wire()
        for chunk in chunks:
            wire.data_received(chunk)
        assert link.packets == _events(packets), chunks
        assert not wire.buf


async def test_two_and_three_byte_remaining_lengths_at_their_edges():
    for size in (127, 128, 16_383, 16_384, 2_097_151, 2_097_152):
        body = b"\x00\x01t" + b"z" * (size - 3)
        stream = bytes((0x30,)) + _length(size) + body + b"\xd0\x00"
        for chunks in ([stream], [stream[:2], stream[2:]], [stream[:3], stream[3:5], stream[5:]]):
            wire, link = _wire()
            for chunk in chunks:
                wire.data_received(chunk)
            assert link.packets == _events([(0x30, body), (0xD0, b"")])


async def _link(on_message: Any) -> MqttLink:
    return MqttLink(BrokerURL("127.0.0.1", 1), client_id="t", on_message=on_message, subscriptions=[])


async def test_the_link_delivers_publishes_and_holds_their_acks_whatever_the_chunks():
    stream = b"".join((
        _publish("ca/é/in".encode(), b"q0", 0, 0),
        _publish(b"ca/a/in", b"q1" * 100, 1, 0x0102),
        _publish(b"ca/b/in", b"", 2, 0x0304),
        b"\x40\x02\x00\x07",  # a PUBACK of something the link published
        _publish(b"t", b"last", 1, 0xFFFF),
    ))
    for chunks in _every_split(stream):
        got: list[tuple[str, bytes]] = []
        link = await _link(lambda topic, payload, got=got: got.append((topic, payload)))
        link._inflight[7] = b"the publish"
        wire = _Wire(link)
        for chunk in chunks:
            wire.data_received(chunk)
        assert got == [("ca/é/in", b"q0"), ("ca/a/in", b"q1" * 100), ("ca/b/in", b""), ("t", b"last")]
        assert all(type(payload) is bytes for _, payload in got)
        assert link._acks == [b"\x40\x02\x01\x02", b"\x50\x02\x03\x04", b"\x40\x02\xff\xff"]  # PUBACK, PUBREC, PUBACK
        assert 7 not in link._inflight
        assert link._heard > 0
        link._ack_timer.cancel()  # type: ignore[union-attr]


async def test_a_publish_too_short_for_its_topic_or_id_is_dropped_unanswered(caplog):
    got: list[tuple[str, bytes]] = []
    link = await _link(lambda topic, payload: got.append((topic, payload)))
    wire = _Wire(link)
    for body in (b"", b"\x00", b"\x00\x05ab"):
        wire.data_received(packet(0x32, body) + _publish(b"ok", body, 0, 0))
    wire.data_received(packet(0x32, b"\x00\x02ab\x01"))  # QoS 1: the packet id is cut short
    wire.data_received(packet(0x30, b"\x00\x02ab"))  # QoS 0 needs no id: delivered
    assert got == [("ok", b""), ("ok", b"\x00"), ("ok", b"\x00\x05ab"), ("ab", b"")]
    assert link._acks == []
    assert caplog.text.count("dropped a PUBLISH too short") == 4


async def test_a_publish_whose_topic_is_not_utf8_is_acknowledged_and_dropped(caplog):
    got: list[tuple[str, bytes]] = []
    link = await _link(lambda topic, payload: got.append((topic, payload)))
    _Wire(link).data_received(_publish(b"ca/\xff/in", b"x", 1, 9) + _publish(b"ca/a/in", b"y", 0, 0))
    assert got == [("ca/a/in", b"y")]
    assert link._acks == [b"\x40\x02\x00\x09"]
    assert "not UTF-8" in caplog.text
    link._ack_timer.cancel()  # type: ignore[union-attr]
