"""The MQTT link frames packets out of whatever chunks the socket hands it: whole, split anywhere, several per read,
with one- to four-byte remaining lengths; oversized publishes are acknowledged and skipped, malformed lengths close
the connection."""

from __future__ import annotations

import random
from typing import Any

import pytest

import bridge.mqtt
from bridge.mqtt import _length, _publish, _Wire


class _Link:
    def __init__(self) -> None:
        self.packets: list[tuple[int, bytes]] = []
        self.oversized: list[int | None] = []

    def _packet(self, head: int, body: bytes) -> None:
        assert type(body) is bytes
        self.packets.append((head, body))

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


def _feed(wire: _Wire, stream: bytes, cuts: list[int]) -> None:
    last = 0
    for cut in [*sorted(cuts), len(stream)]:
        wire.data_received(stream[last:cut])
        last = cut


PACKETS = [
    (0x32, b"\x00\x03a/b\x00\x07" + b"x" * n) for n in (0, 1, 120, 121, 122, 200, 16_500, 70_000)
] + [(0x40, b"\x00\x09"), (0xD0, b""), (0x30, b"\x00\x01t")]


async def test_packets_come_out_whole_whatever_the_chunks():
    stream = b"".join(bytes((head,)) + _length(len(body)) + body for head, body in PACKETS)
    rng = random.Random(17)
    for cuts in ([], list(range(1, 40)), [1], [2], [len(stream) - 1], *[rng.sample(range(1, len(stream)), 25)
                                                                         for _ in range(20)]):
        wire, link = _wire()
        _feed(wire, stream, cuts)
        assert link.packets == PACKETS
        assert not wire.buf and not wire.skip


async def test_a_publish_built_by_the_link_frames_back_to_its_parts():
    for size in (0, 100, 123, 124, 125, 126, 127, 128, 300, 20_000):
        for qos in (0, 1):
            packet = _publish(b"ca/x/session/s", b"p" * size, qos, 513)
            wire, link = _wire()
            wire.data_received(packet)
            ((head, body),) = link.packets
            assert head == 0x30 | (qos << 1)
            assert body == b"\x00\x0eca/x/session/s" + (b"\x02\x01" if qos else b"") + b"p" * size


async def test_an_oversized_publish_is_acknowledged_and_skipped(monkeypatch):
    monkeypatch.setattr(bridge.mqtt, "MAX_INBOUND", 1000)
    big = (0x32, b"\x00\x01t\x01\x02" + b"z" * 5000)
    stream = b"".join(bytes((h,)) + _length(len(b)) + b for h, b in [PACKETS[0], big, PACKETS[-1]])
    for cuts in ([], [10, 20, 30, 3000, 5000, len(stream) - 3]):
        wire, link = _wire()
        _feed(wire, stream, cuts)
        assert link.packets == [PACKETS[0], PACKETS[-1]]
        assert link.oversized == [0x0102]


@pytest.mark.parametrize("chunks", [[b"\x30\xff\xff\xff\xff\x01"], [b"\x30\xff", b"\xff\xff", b"\xff\x01"]])
async def test_a_remaining_length_over_four_bytes_closes_the_connection(chunks):
    wire, link = _wire()
    for chunk in chunks:
        wire.data_received(chunk)
    assert wire.transport.aborted  # type: ignore[union-attr]
    assert not link.packets
