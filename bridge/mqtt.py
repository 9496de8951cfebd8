"""The bridge's MQTT link: a small MQTT 3.1.1 client written for asyncio.

Why not a general-purpose client: the bridge sits on the hot path of every call, and profiling showed the
general-purpose client's per-packet costs (a syscall per header byte, a send per packet, property objects, an
executor thread for connecting) dominating the bridge's CPU. This one parses packets from whole socket reads,
coalesces every packet written in one event-loop turn into a single send, and connects with the loop itself.

What it does: CONNECT (clean_session False, username/password, TLS), SUBSCRIBE, PUBLISH QoS 0 and 1 both ways,
PUBACK, PINGREQ keepalive with a dead-broker timeout, DISCONNECT. It reconnects by itself with exponential
backoff and jitter, re-subscribes, resends unacknowledged QoS 1 publishes with DUP, and keeps the QoS 1 publishes
made while the broker is away (bounded) to send them when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

from bridge.errors import ConfigError
from bridge.metrics import Metrics

__all__ = ["BrokerURL", "MqttLink", "backoff_delays", "packet", "prefixed"]

log = logging.getLogger("bridge.mqtt")

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14
MAX_INBOUND: Final = 4 * 1024 * 1024  # larger inbound packets are skipped (acknowledged, not delivered)
# An inbound QoS 1/2 PUBLISH's PUBACK/PUBREC is held so that it leaves in the same write as what the bridge sends
# next (at one device: the call's reply, one write per call instead of two), at most ACK_HOLD seconds, and never
# more than ACK_HELD of them: each one held keeps one of the broker's in-flight slots for the bridge busy, and a
# broker sends no more than its window (mosquitto's max_inflight_messages, 20 by default) before it hears a PUBACK.
ACK_HOLD: Final = 0.005
ACK_HELD: Final = 8
CONNACK_CODES: Final = {1: "unacceptable protocol version", 2: "client id rejected", 3: "server unavailable",
                        4: "bad user name or password", 5: "not authorized"}


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, default port 8883)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Parse a broker URL; ConfigError if it is not one."""
        parts = urlsplit(url if "://" in url else "mqtt://" + url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ConfigError(f"not a broker URL: {url!r} (expected mqtt://host:port)")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"bad port in broker URL {url!r}") from None
        return cls(
            parts.hostname, port, tls,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def prefixed(value: bytes) -> bytes:
    """A length-prefixed MQTT field (two bytes of length, then the bytes)."""
    return len(value).to_bytes(2, "big") + value


def packet(head: int, body: bytes) -> bytes:
    """An MQTT packet: its first byte, the remaining length, the body."""
    return bytes((head,)) + _length(len(body)) + body


_BB: Final = struct.Struct(">BB").pack  # a packet's first byte and a one-byte remaining length
_H: Final = struct.Struct(">H").pack  # a packet id (or a length prefix)


def _publish(topic: bytes, payload: bytes, qos: int, pid: int, dup: bool = False) -> bytes:
    """A PUBLISH packet (``topic`` bare; :func:`_publish_qos1` takes it length-prefixed)."""
    head = 0x30 | (0x08 if dup else 0) | (qos << 1)
    size = 2 + len(topic) + (2 if qos else 0) + len(payload)
    fixed = _BB(head, size) if size < 128 else bytes((head,)) + _length(size)
    if qos:
        return b"".join((fixed, _H(len(topic)), topic, _H(pid), payload))
    return b"".join((fixed, _H(len(topic)), topic, payload))


def _publish_qos1(prefixed_topic: bytes, payload: bytes, pid: int) -> bytes:
    """A QoS 1 PUBLISH, the bridge's every reply and notification: one join, the topic's length prefix made once
    per topic (:meth:`MqttLink.publish`)."""
    size = len(prefixed_topic) + 2 + len(payload)
    if size < 128:  # the usual reply or notification: a one-byte remaining length
        return b"".join((_BB(0x32, size), prefixed_topic, _H(pid), payload))
    return b"".join((b"\x32", _length(size), prefixed_topic, _H(pid), payload))


def _with_dup(publish: bytes) -> bytes:
    """The same PUBLISH packet with its DUP flag set (a resend)."""
    return bytes((publish[0] | 0x08,)) + publish[1:]


def backoff_delays(first: float, cap: float,
                   uniform: Callable[[float, float], float] | None = None) -> Iterator[float]:
    """The waits before each reconnect attempt: ``first``, doubling up to ``cap``, each times a random factor in
    [0.5, 1.5] so that bridges that lost the same broker do not all come back at the same moment.
    ``uniform`` defaults to :func:`random.uniform` (looked up at each step)."""
    delay = first
    while True:
        yield delay * (uniform or random.uniform)(0.5, 1.5)
        delay = min(delay * 2, cap)


class _Wire(asyncio.Protocol):
    """Frames packets out of the byte stream and hands them to the link: a PUBLISH's topic and payload to its
    ``on_message`` (and the acknowledgement to ``_hold_ack``), any other packet to ``_packet``."""

    def __init__(self, link: MqttLink) -> None:
        self.link = link
        self.buf = bytearray()
        self.skip = 0  # bytes of an oversized packet still to discard
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(exc)
        self.link._lost(self)

    def data_received(self, data: bytes) -> None:
        if self.skip:  # the tail of an oversized packet
            taken = min(self.skip, len(data))
            self.skip -= taken
            data = data[taken:]
        buf = self.buf
        if buf:  # the start of a packet came with an earlier read
            buf += data
            data = bytes(buf)
            buf.clear()
        # packets are framed straight out of the bytes read, and a PUBLISH's fields sliced straight out of them too
        # (no copy of its body, no buffer churn, no call per packet beyond the message's own)
        pos, end = 0, len(data)
        link = self.link
        if end:
            link._heard = self._loop.time()  # heard from the broker
        packet, hold, deliver = link._packet, link._hold_ack, link._on_message
        while end - pos >= 2:
            length = data[pos + 1]
            i = pos + 2
            if length & 0x80:  # a remaining length of more than one byte
                if end - i >= 1 and not data[i] & 0x80:  # two bytes: up to 16,383
                    length = (length & 0x7F) | data[i] << 7
                    i += 1
                else:
                    length &= 0x7F
                    mult, complete = 128, False
                    while i < end:
                        byte = data[i]
                        i += 1
                        length += (byte & 0x7F) * mult
                        if not byte & 0x80:
                            complete = True
                            break
                        mult <<= 7
                        if mult > 128**3:
                            self._fail("malformed remaining length")
                            return
                    if not complete:
                        break
            if length > MAX_INBOUND:
                self._oversized(data[pos], data[i : min(end, i + 64)])
                if end - i >= length:
                    pos = i + length
                    continue
                self.skip = length - (end - i)
                pos = end
                break
            nxt = i + length
            if nxt > end:
                break
            head = data[pos]
            pos = nxt
            if head & 0xF0 != 0x30:
                packet(head, data[i:nxt])
                continue
            # PUBLISH: topic length, topic, packet id (QoS 1 and 2), payload
            qos = head & 0x06
            tend = i + 2 + (data[i] << 8 | data[i + 1]) if length >= 2 else nxt + 1
            begin = tend + 2 if qos else tend  # where the payload begins
            if begin > nxt:
                log.warning("dropped a PUBLISH too short for its topic and packet id")
                continue
            if qos:  # PUBACK (PUBREC for QoS 2), held for the next write (see ACK_HOLD)
                if qos == 0x06:  # both QoS bits set: MQTT 3.1.1 (3.3.1-4) says to close the connection
                    self._fail("a PUBLISH with QoS 3")
                    return
                hold((b"\x40\x02" if qos == 0x02 else b"\x50\x02") + data[tend:begin])
            try:
                topic = data[i + 2 : tend].decode()
            except UnicodeDecodeError:
                log.warning("dropped a message whose topic is not UTF-8")
                continue
            try:
                deliver(topic, data[begin:nxt])
            except Exception:
                log.exception("unexpected failure handling a message on %r", topic[:200])
        if pos < end:
            buf += memoryview(data)[pos:]

    def _oversized(self, head: int, start: bytes) -> None:
        """Acknowledge a huge PUBLISH without keeping it (its topic and id are in its first bytes)."""
        if head >> 4 == PUBLISH and (head >> 1) & 3 and len(start) >= 2:
            tlen = int.from_bytes(start[:2], "big")
            if len(start) >= tlen + 4:
                self.link._oversized(int.from_bytes(start[tlen + 2 : tlen + 4], "big"))
                return
        if head >> 4 == PUBLISH and not (head >> 1) & 3:
            self.link._oversized(None)
            return
        self._fail("oversized packet without a readable header")

    def _fail(self, why: str) -> None:
        log.warning("closing the broker connection: %s", why)
        if self.transport is not None:
            self.transport.abort()


class MqttLink:
    """One MQTT 3.1.1 connection owned by an async context manager."""

    def __init__(
        self,
        url: BrokerURL,
        *,
        client_id: str,
        on_message: Callable[[str, bytes], None],
        subscriptions: list[tuple[str, int]],
        keepalive: int = 30,
        max_queued: int = 100_000,
        max_inflight: int = 1000,
        tls_context: ssl.SSLContext | None = None,
        backoff: tuple[float, float] = (0.25, 30.0),
        connect_timeout: float = 10.0,
        clean_session: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.url = url
        self.clean_session = clean_session
        self.client_id = client_id
        self._on_message = on_message
        self._subscriptions = subscriptions
        self._keepalive = keepalive
        self._max_queued = max_queued
        self._max_inflight = max_inflight
        self._tls = tls_context if tls_context is not None else (ssl.create_default_context() if url.tls else None)
        self._backoff = backoff
        self._connect_timeout = connect_timeout
        self._loop = asyncio.get_running_loop()
        self.connected = asyncio.Event()
        self.metrics = metrics if metrics is not None else Metrics()  # counts mqtt_connects, _dropped, _oversized
        self._wire: _Wire | None = None
        self._out: list[bytes] = []
        self._flush_handle: asyncio.Handle | None = None  # the flush on the loop's ready queue (write_now cancels it)
        self._acks: list[bytes] = []  # PUBACKs (PUBRECs) held for the next write, oldest first
        self._acks_since = 0.0  # loop time the oldest of them was held
        self._ack_timer: asyncio.TimerHandle | None = None
        # QoS 1 publishes sent and not yet acknowledged, oldest first: pid -> the PUBLISH packet (resent with DUP)
        self._inflight: dict[int, bytes] = {}
        self._waiting: deque[tuple[bytes, bytes]] = deque()  # QoS 1 publishes not yet sent: (prefixed topic, payload)
        self._pid = 0
        self._connack: asyncio.Future[int] | None = None
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._heard = 0.0  # loop time of the last packet from the broker
        self._closing = False
        self._tasks: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> MqttLink:
        self._tasks.append(asyncio.create_task(self._connect_loop(), name=f"mqtt[{self.client_id}].connect"))
        self._tasks.append(asyncio.create_task(self._keepalive_loop(), name=f"mqtt[{self.client_id}].keepalive"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait for the first (or next) connection; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            return False
        return True

    async def flush(self, timeout: float) -> bool:
        """Wait until every QoS 1 publish is acknowledged by the broker; False on timeout or if disconnected."""
        if not self.connected.is_set():
            return self._all_acked.is_set()
        try:
            async with asyncio.timeout(timeout):
                await self._all_acked.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self, flush_timeout: float = 2.0) -> None:
        """Flush (bounded), disconnect cleanly and stop the link's tasks."""
        await self.flush(flush_timeout)
        self._closing = True
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        wire = self._wire
        if wire is not None and wire.transport is not None:
            self._send(packet(DISCONNECT << 4, b""))
            self._flush()
            wire.transport.close()

    def unsubscribe(self, topic_filter: str) -> None:
        """Stop receiving ``topic_filter`` (now, and after any reconnect)."""
        self._subscriptions = [(t, q) for t, q in self._subscriptions if t != topic_filter]
        if self.connected.is_set():
            body = self._next_pid().to_bytes(2, "big") + prefixed(topic_filter.encode())
            self._send(packet((UNSUBSCRIBE << 4) | 2, body))

    # -- publishing ---------------------------------------------------------------------------------------------

    def publish(self, topic: str | bytes, payload: bytes, qos: int = 1) -> None:
        """Publish; while disconnected, QoS 1 messages wait (up to max_queued) for the next connection.

        ``topic``: text, or (for QoS 1) bytes already encoded *and* length-prefixed, as :func:`prefixed` makes
        them: a caller publishing to the same topics again and again (bridge.service) keeps those."""
        if not qos:
            if self.connected.is_set():
                self._send(_publish(topic.encode() if isinstance(topic, str) else topic[2:], payload, 0, 0))
            return
        t = prefixed(topic.encode()) if isinstance(topic, str) else topic
        if len(self._inflight) < self._max_inflight and not self._waiting and self.connected.is_set():
            self._send_qos1(t, payload)
        elif len(self._waiting) < self._max_queued:
            self._waiting.append((t, payload))
            self._all_acked.clear()
        else:
            self.metrics.mqtt_dropped += 1
            if self.metrics.mqtt_dropped % 1000 == 1:
                log.warning("outbound queue full: dropped %d publishes so far (devices recover by retry/sync)",
                            self.metrics.mqtt_dropped)

    def write_now(self) -> None:
        """Write what is queued now instead of at the end of the loop's turn (see ``_send``)."""
        handle = self._flush_handle
        if handle is not None:
            # cancelled, the handle on the loop's ready queue cannot write later by itself: it would run after the
            # next read, and send the acknowledgements held then in a write of their own (16 devices: 1.8 writes
            # per batch, where one is enough)
            handle.cancel()
            self._flush()

    def _send_qos1(self, topic: bytes, payload: bytes) -> None:
        """Send a QoS 1 publish (``topic`` length-prefixed) under the next free packet id."""
        inflight = self._inflight
        if not inflight:
            self._all_acked.clear()  # set only while nothing is in flight or waiting (see _drain_waiting)
        pid = self._pid % 65535 + 1  # as _next_pid and _send, inline: this runs for every reply and notification
        while pid in inflight:
            pid = pid % 65535 + 1
        self._pid = pid
        inflight[pid] = data = _publish_qos1(topic, payload, pid)
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _next_pid(self) -> int:
        while True:
            self._pid = self._pid % 65535 + 1
            if self._pid not in self._inflight:
                return self._pid

    def _send(self, data: bytes) -> None:
        """Queue bytes for the wire; everything queued in one loop turn leaves in one write."""
        self._out.append(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _hold_ack(self, ack: bytes) -> None:
        """Queue the acknowledgement of an inbound publish for the next write (see ACK_HOLD)."""
        acks = self._acks
        if not acks:
            self._acks_since = self._loop.time()
            if self._ack_timer is None:
                self._ack_timer = self._loop.call_later(ACK_HOLD, self._acks_due)
        acks.append(ack)
        if len(acks) >= ACK_HELD and self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _acks_due(self) -> None:
        """The hold timer: send acknowledgements held for ACK_HOLD now; look again later for younger ones."""
        self._ack_timer = None
        if not self._acks:
            return
        left = self._acks_since + ACK_HOLD - self._loop.time()
        if left > 0:  # the ones held when the timer was set left with a write since
            self._ack_timer = self._loop.call_later(left, self._acks_due)
        elif self._flush_handle is None:
            self._flush()

    def _flush(self) -> None:
        self._flush_handle = None
        if self._acks:  # acknowledgements first: they answer what came in before anything queued here
            self._out[:0] = self._acks
            self._acks.clear()
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        wire = self._wire
        if wire is not None and wire.transport is not None and not wire.transport.is_closing():
            wire.transport.write(data)
        # else: lost with the connection; QoS 1 publishes are resent from _inflight on reconnect

    def _drain_waiting(self) -> None:
        """After a PUBACK: send what waits for a free in-flight slot; tell flush() once nothing is left."""
        waiting = self._waiting
        if waiting:
            while waiting and len(self._inflight) < self._max_inflight:
                topic, payload = waiting.popleft()
                self._send_qos1(topic, payload)
        elif not self._inflight:
            self._all_acked.set()

    # -- inbound ---------------------------------------------------------------------------------------------------

    def _packet(self, head: int, body: bytes) -> None:
        """A packet from the broker other than a PUBLISH (the wire hands those to ``on_message``)."""
        kind = head >> 4
        if kind == PUBACK:  # of one of our QoS 1 publishes: free its id; the rest only when something waits
            inflight = self._inflight
            if inflight.pop(int.from_bytes(body[:2], "big"), None) is not None and (self._waiting or not inflight):
                self._drain_waiting()
        elif kind == PUBREL:
            self._send(b"\x70\x02" + body[:2])  # PUBCOMP
        elif kind == CONNACK and self._connack is not None and not self._connack.done():
            self._connack.set_result(body[1] if len(body) > 1 else 255)
        # SUBACK, PINGRESP: nothing to do beyond having heard from the broker

    def _oversized(self, pid: int | None) -> None:
        self.metrics.mqtt_oversized += 1
        if pid is not None:
            self._send(b"\x40\x02" + pid.to_bytes(2, "big"))
        log.warning("skipped an inbound message over %d bytes (%d so far)", MAX_INBOUND, self.metrics.mqtt_oversized)

    def _lost(self, wire: _Wire) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(ConnectionResetError("the broker closed the connection before CONNACK"))
        if wire is self._wire:
            self._wire = None
            if self.connected.is_set() and not self._closing:
                log.warning("lost the broker connection; reconnecting")
            self.connected.clear()

    # -- connection management ----------------------------------------------------------------------------------

    def _connect_packet(self) -> bytes:
        # clean_session False: the broker keeps our subscription and queued requests while we are away. A bridge in
        # a cluster starts clean instead, so that a dead bridge's share of the requests goes to the live ones.
        flags = 0x02 if self.clean_session else 0x00
        body = b"\x00\x04MQTT\x04"
        payload = prefixed(self.client_id.encode())
        if self.url.username is not None:
            flags |= 0x80
            payload += prefixed(self.url.username.encode())
            if self.url.password is not None:
                flags |= 0x40
                payload += prefixed(self.url.password.encode())
        return packet(CONNECT << 4, body + bytes((flags,)) + self._keepalive.to_bytes(2, "big") + payload)

    async def _connect_once(self) -> _Wire:
        url = self.url
        _, wire = await self._loop.create_connection(
            lambda: _Wire(self), url.host, url.port, ssl=self._tls, server_hostname=url.host if self._tls else None)
        self._wire = wire
        self._out.clear()  # nothing written for the previous connection may precede CONNECT
        self._acks.clear()  # the broker sends the unacknowledged publishes again
        self._heard = self._loop.time()
        self._connack = self._loop.create_future()
        self._send(self._connect_packet())
        code = await self._connack
        if code != 0:
            assert wire.transport is not None
            wire.transport.close()
            raise ConnectionRefusedError(f"the broker refused the connection: {CONNACK_CODES.get(code, code)}")
        topics = b"".join(prefixed(t.encode()) + bytes((q,)) for t, q in self._subscriptions)
        self._send(packet((SUBSCRIBE << 4) | 2, self._next_pid().to_bytes(2, "big") + topics))
        for publish in self._inflight.values():  # unacknowledged: resend with DUP, same id, oldest first
            self._send(_with_dup(publish))
        self.metrics.mqtt_connects += 1
        self.connected.set()
        self._drain_waiting()
        log.info("connected to broker %s:%d", url.host, url.port)
        return wire

    async def _connect_loop(self) -> None:
        waits = backoff_delays(*self._backoff)
        while not self._closing:
            try:
                async with asyncio.timeout(self._connect_timeout):
                    wire = await self._connect_once()
                waits = backoff_delays(*self._backoff)  # a connection that worked starts the sequence again
                await wire.closed
                wait = next(waits)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                wait = next(waits)
                log.warning("broker %s:%d unreachable (%s); retrying in %.2fs",
                            self.url.host, self.url.port, exc or type(exc).__name__, wait)
                if self._wire is not None and self._wire.transport is not None:
                    self._wire.transport.abort()
                self._wire = None
            self.connected.clear()
            if self._closing:
                return
            await asyncio.sleep(wait)

    async def _keepalive_loop(self) -> None:
        """PINGREQ when idle; drop a connection that has been silent for 1.5 keepalive periods."""
        period = max(self._keepalive / 2, 0.5)
        while True:
            await asyncio.sleep(period)
            wire = self._wire
            if wire is None or wire.transport is None or not self.connected.is_set():
                continue
            if self._loop.time() - self._heard > self._keepalive * 1.5:
                log.warning("the broker has been silent for %.0fs; reconnecting", self._loop.time() - self._heard)
                wire.transport.abort()
                continue
            self._send(b"\xc0\x00")  # PINGREQ
