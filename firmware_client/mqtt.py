"""One MQTT 3.1.1 connection that survives outages.

Synchronous and single-threaded: nothing happens unless the owner calls ``pump(deadline)``.
Every blocking step (TCP connect, TLS handshake, CONNACK, SUBACK, each read and each write) is
bounded by a socket timeout derived from a deadline, so no call waits forever.

* QoS 1 publishes stay in ``inflight`` until PUBACK; after a reconnect they are sent again with DUP,
  in their original order. A ``key`` replaces an older unacknowledged publish with the same key
  (used for cumulative acks and syncs), so the in-flight list stays small and bounded.
* Reconnects use exponential backoff with jitter, re-subscribe, resend, then call ``on_connect``.
* Incoming bytes go into one preallocated buffer; a packet larger than it is skipped (and PUBACKed
  when it is a QoS 1 PUBLISH) and counted in ``oversize``.
"""

import select
import socket
import sys

from firmware_client import packet
from firmware_client.compat import (
    Timeout,
    deadline_in,
    is_timeout,
    rand_below,
    remaining,
    sleep_ms,
    ticks_diff,
    ticks_ms,
)

_MICRO = sys.implementation.name == "micropython"
_POLLIN = 1
_POLLOUT = 4
_POLLERR = 8
_POLLHUP = 16
_OBUF = 512  # control packets and PUBLISH headers; small payloads are copied in too
_MIN_TRY = 20  # ms: the shortest connection attempt worth starting (see MQTT.room)
# CONNACK return codes 1-5 (MQTT 3.1.1, 3.2.2.3)
_REFUSED = ("", "unacceptable protocol version", "client id rejected", "server unavailable",
            "bad user name or password", "not authorized")


class MQTT:
    """A resilient MQTT connection. See the module docstring."""

    def __init__(
        self,
        host,
        port,
        client_id,
        *,
        keepalive=30,
        user=None,
        password=None,
        ssl=None,
        will=None,
        clean=False,
        connect_timeout=10.0,
        bufsize=4096,
        max_inflight=16,
        reconnect_min=0.5,
        reconnect_max=30.0,
    ):
        self.host = host
        self.port = port
        self.client_id = client_id
        self.keepalive = keepalive
        self.user = user
        self.password = password
        self.ssl = ssl
        self.will = will
        self.clean = clean
        self.connect_ms = int(connect_timeout * 1000)
        self.max_inflight = max_inflight
        self.backoff_min = int(reconnect_min * 1000)
        self.backoff_max = int(reconnect_max * 1000)
        self.on_message = None  # fn(topic, payload): a memoryview, valid only during the call (copy to keep)
        self.on_connect = None  # fn(session_present)
        self.subs = []  # [(topic, qos)], (re)subscribed on every connect
        self.inflight = []  # [[pid, topic, payload, key]] in send order
        self.connected = False
        self.sock = None
        self._tsock = None  # the object whose settimeout applies to reads/writes
        self._poller = None
        self._obuf = bytearray(_OBUF)
        self._omv = memoryview(self._obuf)
        self._ibuf = bytearray(bufsize)
        self._imv = memoryview(self._ibuf)
        self._istart = 0
        self._iend = 0
        self._skip = 0  # bytes of an oversize packet still to discard
        self._pid = 0
        self._backoff = 0
        self._next_try = ticks_ms()
        self._up_since = 0
        self._last_tx = 0
        self._ping_at = None
        self._suback = None
        self.connects = 0
        self.oversize = 0
        self.room = None  # fn() -> ms a connection attempt may take now (None: no limit), e.g. until a due command

    # ------------------------------------------------------------------ low level I/O

    def _wait(self, mask, ms):
        """MicroPython: poll a non-blocking socket. CPython: set the socket timeout instead."""
        if self._poller is None:
            self._tsock.settimeout(max(ms, 0) / 1000)
            return True
        if ms <= 0:
            return True
        self._poller.modify(self.sock, mask)
        ev = self._poller.poll(ms)
        if not ev:
            return False
        flags = ev[0][1]
        # A reset connection polls as writable (with ERR|HUP) while MicroPython's write() keeps returning
        # None: without this check a write to a dead broker spun until its deadline (found in CI, 1 run in 4).
        if flags & _POLLERR or (flags & _POLLHUP and (mask == _POLLOUT or not flags & _POLLIN)):
            raise OSError(104, "connection lost")
        return True

    def _write(self, data, deadline):
        mv = memoryview(data)
        n = len(mv)
        off = 0
        while off < n:
            left = remaining(deadline)
            if left <= 0:
                raise Timeout("write timed out")
            w = None
            if self._wait(_POLLOUT, left):
                try:
                    w = self._sendfn(mv[off:])
                except OSError as e:
                    if not is_timeout(e):
                        raise
            if w is None:
                continue
            if w <= 0:
                raise OSError(104, "connection closed while writing")
            off += w
        self._last_tx = ticks_ms()

    def _send(self, n, deadline=None):
        self._write(self._omv[:n], deadline if deadline is not None else deadline_in(self.connect_ms))

    def _read_some(self, ms):
        """Read what is available within ``ms``. False on timeout; raises OSError on EOF/error."""
        if self._istart and self._istart == self._iend:
            self._istart = self._iend = 0
        elif self._istart and self._iend == len(self._ibuf):
            rest = bytes(self._imv[self._istart : self._iend])
            self._ibuf[: len(rest)] = rest
            self._istart, self._iend = 0, len(rest)
        if not self._wait(_POLLIN, ms):
            return False
        try:
            r = self._recvfn(self._imv[self._iend :])
        except OSError as e:
            if is_timeout(e):
                return False
            raise
        if r is None:  # MicroPython stream read with nothing available
            return False
        if r == 0:
            raise OSError(104, "connection closed by broker")
        if self._skip:  # the tail of an oversize packet: drop it, keep what follows
            if r <= self._skip:
                self._skip -= r
                return True
            rest = bytes(self._imv[self._iend + self._skip : self._iend + r])
            self._ibuf[self._iend : self._iend + len(rest)] = rest
            r = len(rest)
            self._skip = 0
        self._iend += r
        if self._poller is not None and self._iend < len(self._ibuf):
            # MicroPython TLS: decrypted bytes may wait inside the TLS layer where poll() does
            # not see them, so drain without waiting before going back to poll()
            try:
                more = self._recvfn(self._imv[self._iend :])
            except OSError as e:
                if not is_timeout(e):
                    raise
                more = None
            if more:
                self._iend += more
            elif more == 0:
                raise OSError(104, "connection closed by broker")
        return True

    # ------------------------------------------------------------------ connection

    def _open(self, deadline):
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            sock.settimeout(max(remaining(deadline), 1) / 1000)
            sock.connect(ai[-1])
            try:
                sock.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: no Nagle stalls on replies
            except (OSError, AttributeError, TypeError):
                pass
            self._tsock = sock
            if self.ssl:
                from firmware_client.tls import wrap  # imported only when TLS is asked for

                sock = wrap(sock, self.ssl, self.host)
                if hasattr(sock, "settimeout"):
                    self._tsock = sock
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        if not _MICRO:  # CPython: blocking reads with socket timeouts
            self._poller = None
            self._sendfn = sock.send
            self._recvfn = sock.recv_into
        else:  # MicroPython: readinto() on a blocking socket loses data on timeout, so
            # go non-blocking and wait with select.poll (which also sees TLS-buffered bytes)
            self._tsock.setblocking(False)
            self._poller = select.poll()
            self._poller.register(sock, _POLLIN)
            self._sendfn = sock.write
            self._recvfn = sock.readinto
        self._istart = self._iend = self._skip = 0

    def _connect_once(self, deadline):
        self._open(deadline)
        try:
            n = packet.connect(
                self._obuf, self.client_id, self.keepalive, self.clean, self.user, self.password, self.will
            )
            self._send(n, deadline)
            first, body, end = self._read_packet(deadline)
            if first != packet.CONNACK or end - body != 2:
                raise packet.MQTTError("expected CONNACK")
            sp, rc = self._ibuf[body], self._ibuf[body + 1]
            self._istart = end
            if rc:
                why = _REFUSED[rc] if rc < len(_REFUSED) else "unknown reason"
                raise packet.MQTTError("connection refused: %s (CONNACK code %d)" % (why, rc), rc)
            self.connected = True
            self._ping_at = None
            if self.subs:
                self._suback = self._new_pid()
                self._send(packet.subscribe(self._obuf, self._suback, self.subs), deadline)
                while self._suback is not None:
                    self._handle(*self._read_packet(deadline))
            for e in self.inflight:
                self._send_publish(e[1], e[2], 1, e[0], True, deadline)
        except BaseException:
            self.connected = False
            self._close_sock()
            raise
        self.connects += 1
        self._up_since = ticks_ms()
        if self.on_connect:
            self.on_connect(sp & 1)

    def _read_packet(self, deadline):
        while True:
            got = packet.parse_header(self._ibuf, self._istart, self._iend)
            if got:
                return got
            left = remaining(deadline)
            if left <= 0:
                raise Timeout("broker did not answer in time")
            if self._iend == len(self._ibuf) and self._istart == 0:
                raise packet.MQTTError("packet larger than buffer during connect")
            self._read_some(left)

    def _close_sock(self):
        s, self.sock = self.sock, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    def drop(self):
        """Forget the connection (after an I/O error); the next pump reconnects."""
        was_up = self.connected
        self.connected = False
        self._close_sock()
        if was_up and ticks_diff(ticks_ms(), self._up_since) > 10000:
            self._backoff = 0  # it was a healthy connection: retry at once
            self._next_try = ticks_ms()
        else:
            self._schedule_retry()

    def _schedule_retry(self):
        b = self._backoff
        b = self.backoff_min if b == 0 else min(b * 2, self.backoff_max)
        self._backoff = b
        self._next_try = deadline_in(b // 2 + rand_below(b // 2 + 1))

    def connect(self, deadline, retry=True):
        """Connect, retrying with backoff until ``deadline`` (``retry=False``: one attempt). Raises the last error."""
        while True:
            err = self._try_connect(deadline, self.room() if self.room is not None else None)
            if err is None:
                return
            if not retry or (isinstance(err, packet.MQTTError) and err.code in (2, 4, 5)):
                raise err  # bad client id / credentials: retrying cannot help
            wait = ticks_diff(self._next_try, ticks_ms())
            if wait >= remaining(deadline):
                raise err
            sleep_ms(wait)

    def _try_connect(self, deadline, room=None):
        ms = min(self.connect_ms, max(remaining(deadline), 1000))
        if room is not None:
            ms = min(ms, max(room, _MIN_TRY))
        d = deadline_in(ms)
        try:
            self._connect_once(d)
        except OSError as e:
            self._schedule_retry()
            return e
        self._backoff = 0
        return None

    def close(self):
        """Send DISCONNECT (best effort) and close. Unacked publishes stay queued."""
        if self.connected:
            try:
                self._send(packet.simple(self._obuf, packet.DISCONNECT), deadline_in(1000))
            except OSError:
                pass
        self.connected = False
        self._close_sock()

    # ------------------------------------------------------------------ publish

    def _new_pid(self):
        used = [e[0] for e in self.inflight]
        pid = packet.next_pid(self._pid)
        while pid in used or pid == self._suback:
            pid = packet.next_pid(pid)
        self._pid = pid
        return pid

    def has_key(self, key):
        for e in self.inflight:
            if e[3] == key:
                return True
        return False

    def publish(self, topic, payload, qos=1, key=None, deadline=None):
        """Queue and send. QoS 1 survives disconnects (resent on reconnect); QoS 0 is dropped
        while offline. Returns the packet id (0 for QoS 0)."""
        pid = 0
        if qos:
            if key is not None:
                for e in self.inflight:
                    if e[3] == key:
                        self.inflight.remove(e)
                        break
            if len(self.inflight) >= self.max_inflight:
                raise packet.MQTTError("too many publishes in flight")
            pid = self._new_pid()
            self.inflight.append([pid, topic, payload, key])
        if self.connected:
            try:
                self._send_publish(topic, payload, qos, pid, False, deadline)
            except OSError:
                self.drop()
        return pid

    def _send_publish(self, topic, payload, qos, pid, dup, deadline):
        if deadline is None:
            deadline = deadline_in(self.connect_ms)
        n = packet.publish_header(self._obuf, topic, len(payload), qos, pid, dup)
        if n + len(payload) <= len(self._obuf):
            self._obuf[n : n + len(payload)] = payload
            self._send(n + len(payload), deadline)
        else:
            self._send(n, deadline)
            self._write(payload, deadline)

    # ------------------------------------------------------------------ receive loop

    def _handle(self, first, body, end):
        buf = self._ibuf
        self._istart = end  # consumed before any callback, so callbacks may pump again
        kind = first & 0xF0
        self._ping_at = None  # any packet proves the broker is alive
        if kind == packet.PUBLISH:
            topic, pid, off = packet.parse_publish(buf, first, body, end)
            payload = self._imv[off:end]  # a view into the input buffer, valid during the callback
            if pid:
                self._send(packet.puback(self._obuf, pid))
            if self.on_message:
                self.on_message(topic, payload)
        elif kind == packet.PUBACK:
            pid = packet.parse_u16(buf, body, end)
            for e in self.inflight:
                if e[0] == pid:
                    self.inflight.remove(e)
                    break
        elif kind == packet.SUBACK:
            if packet.parse_u16(buf, body, end) == self._suback:
                for i in range(body + 2, end):
                    if buf[i] == 0x80:
                        raise packet.MQTTError("subscription refused")
                self._suback = None
        elif kind != packet.PINGRESP:
            raise packet.MQTTError("unexpected packet 0x%02x" % first)

    def _dispatch(self):
        handled = False
        while self.connected:
            got = packet.parse_header(self._ibuf, self._istart, self._iend)
            if not got:
                if self._istart == 0 and self._iend == len(self._ibuf):
                    self._start_skip()
                return handled
            self._handle(*got)
            handled = True
        return handled

    def _start_skip(self):
        """The packet at the buffer start is bigger than the buffer: discard it (policy: count it,
        PUBACK it, never block the connection on it)."""
        buf = self._ibuf
        n, i = packet.parse_length(buf, 0, self._iend)  # complete: the buffer is full
        first = buf[0]
        if first & 0xF0 == packet.PUBLISH and (first >> 1) & 3:
            tlen = (buf[i] << 8) | buf[i + 1]
            p = i + 2 + tlen
            if p + 2 <= len(buf):
                self._send(packet.puback(self._obuf, (buf[p] << 8) | buf[p + 1]))
        self.oversize += 1
        self._skip = i + n - self._iend
        self._istart = self._iend = 0

    def _ping_due(self):
        """Milliseconds until the next keepalive action; sends PINGREQ / drops when due."""
        if not self.keepalive:
            return 3600000
        now = ticks_ms()
        half = self.keepalive * 500
        if self._ping_at is not None:
            left = half - ticks_diff(now, self._ping_at)
            if left <= 0:
                raise Timeout("no PINGRESP")
            return left
        left = half - ticks_diff(now, self._last_tx)
        if left <= 0:
            self._send(packet.simple(self._obuf, packet.PINGREQ))
            self._ping_at = ticks_ms()
            return half
        return left

    def pump(self, deadline):
        """Do one step of work within ``deadline``: reconnect if due, else read and handle what
        arrives (keepalive included). Returns True if a packet was handled or a connection made."""
        if not self.connected:
            wait = ticks_diff(self._next_try, ticks_ms())
            if wait > 0:
                left = remaining(deadline)
                sleep_ms(min(wait, left))
                if wait > left:
                    return False
            room = self.room() if self.room is not None else None
            if room is not None and room < _MIN_TRY:
                sleep_ms(max(0, min(room, remaining(deadline))))  # no attempt right before a due command
                return False
            err = self._try_connect(deadline, room)
            if isinstance(err, packet.MQTTError) and err.code in (2, 4, 5):
                raise err
            return err is None
        try:
            if self._dispatch():
                return True
            wait = min(remaining(deadline), self._ping_due())
            if self._read_some(wait):
                return self._dispatch()
            self._ping_due()
        except OSError:
            self.drop()
            return True
        return False

