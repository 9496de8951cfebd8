"""MQTT 3.1.1 packets: pure encoders into caller-owned buffers, and pure decoders.

No sockets here, so every byte can be checked on CPython and MicroPython alike.
Encoders write into a preallocated ``bytearray`` and return the number of bytes used; they raise
``ValueError`` if the buffer is too small. A PUBLISH is written as a header (fixed header, topic,
packet id) so that the payload can be sent from its own buffer without a copy.
"""

import struct

try:
    from micropython import const
except ImportError:

    def const(x):
        return x


CONNECT = const(0x10)
CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBSCRIBE = const(0x82)
SUBACK = const(0x90)
PINGREQ = const(0xC0)
PINGRESP = const(0xD0)
DISCONNECT = const(0xE0)

MAX_REMAINING = const(268435455)  # 4-byte variable length integer limit


class MQTTError(OSError):
    """Protocol violation or refusal by the broker. ``code`` is the CONNACK return code (or -1)."""

    def __init__(self, msg, code=-1):
        super().__init__(msg)
        self.code = code


def next_pid(pid):
    """Packet id after ``pid``: 1..65535, wraps, never 0."""
    return pid % 65535 + 1


def _varlen(buf, off, n):
    if n > MAX_REMAINING:
        raise ValueError("packet too large")
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            buf[off] = b | 0x80
            off += 1
        else:
            buf[off] = b
            return off + 1


def varlen_size(n):
    """Bytes needed to encode remaining length ``n``."""
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4


def _str(buf, off, b):
    n = len(b)
    if n > 65535:
        raise ValueError("string too long")
    struct.pack_into(">H", buf, off, n)
    buf[off + 2 : off + 2 + n] = b
    return off + 2 + n


def _b(s):
    return s.encode("utf-8") if isinstance(s, str) else bytes(s)


def _fixed(buf, first, rem):
    size = 1 + varlen_size(rem) + rem
    if size > len(buf):
        raise ValueError("buffer too small: need %d" % size)
    buf[0] = first
    return _varlen(buf, 1, rem)


def connect(buf, client_id, keepalive, clean=False, user=None, password=None, will=None):
    """CONNECT. ``will`` is (topic, payload, qos, retain) or None. Returns the length."""
    cid = _b(client_id)
    flags = 0x02 if clean else 0
    rem = 10 + 2 + len(cid)
    if will:
        wt, wm = _b(will[0]), _b(will[1])
        flags |= 0x04 | (will[2] << 3) | (0x20 if will[3] else 0)
        rem += 4 + len(wt) + len(wm)
    if user is not None:
        user = _b(user)
        flags |= 0x80
        rem += 2 + len(user)
    if password is not None:
        password = _b(password)
        flags |= 0x40
        rem += 2 + len(password)
    off = _fixed(buf, CONNECT, rem)
    buf[off : off + 7] = b"\x00\x04MQTT\x04"
    buf[off + 7] = flags
    struct.pack_into(">H", buf, off + 8, keepalive)
    off = _str(buf, off + 10, cid)
    if will:
        off = _str(buf, off, wt)
        off = _str(buf, off, wm)
    if user is not None:
        off = _str(buf, off, user)
    if password is not None:
        off = _str(buf, off, password)
    return off


def publish_header(buf, topic, payload_len, qos=0, pid=0, dup=False, retain=False):
    """Everything of a PUBLISH except its payload. Returns the header length."""
    t = _b(topic)
    rem = 2 + len(t) + (2 if qos else 0) + payload_len
    first = PUBLISH | (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
    n = 1 + varlen_size(rem) + 2 + len(t) + (2 if qos else 0)
    if n > len(buf):
        raise ValueError("buffer too small: need %d" % n)
    buf[0] = first
    off = _str(buf, _varlen(buf, 1, rem), t)
    if qos:
        struct.pack_into(">H", buf, off, pid)
        off += 2
    return off


def subscribe(buf, pid, topics):
    """SUBSCRIBE for [(topic, qos), ...]. Returns the length."""
    enc = [(_b(t), q) for t, q in topics]
    rem = 2
    for t, _ in enc:
        rem += 3 + len(t)
    off = _fixed(buf, SUBSCRIBE, rem)
    struct.pack_into(">H", buf, off, pid)
    off += 2
    for t, q in enc:
        off = _str(buf, off, t)
        buf[off] = q
        off += 1
    return off


def puback(buf, pid):
    """PUBACK for ``pid``. Returns 4."""
    buf[0] = PUBACK
    buf[1] = 2
    struct.pack_into(">H", buf, 2, pid)
    return 4


def simple(buf, kind):
    """PINGREQ / PINGRESP / DISCONNECT (two bytes). Returns 2."""
    buf[0] = kind
    buf[1] = 0
    return 2


# ---------------------------------------------------------------------------- decoding


def parse_length(buf, start, end):
    """Decode the remaining length of the packet at ``start``: (length, body_start), or None if
    the length bytes are not all there yet. Raises MQTTError on a malformed length."""
    n = 0
    shift = 0
    i = start + 1
    while True:
        if i >= end:
            return None
        b = buf[i]
        n |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 21:
            raise MQTTError("malformed remaining length")


def parse_header(buf, start, end):
    """Look for a complete packet in ``buf[start:end]``.

    Returns (first_byte, body_start, packet_end) when complete, None when more bytes are needed.
    Raises MQTTError on a malformed remaining length.
    """
    if end - start < 2:
        return None
    got = parse_length(buf, start, end)
    if got is None or end - got[1] < got[0]:
        return None
    return buf[start], got[1], got[1] + got[0]


def parse_publish(buf, first, body, stop):
    """Split a PUBLISH body. Returns (topic_str, pid, payload_start)."""
    if stop - body < 2:
        raise MQTTError("short PUBLISH")
    tlen = (buf[body] << 8) | buf[body + 1]
    off = body + 2 + tlen
    qos = (first >> 1) & 3
    if qos == 3 or off + (2 if qos else 0) > stop:
        raise MQTTError("malformed PUBLISH")
    topic = bytes(buf[body + 2 : off]).decode("utf-8")
    pid = 0
    if qos:
        pid = (buf[off] << 8) | buf[off + 1]
        off += 2
    return topic, pid, off


def parse_u16(buf, body, stop):
    """The packet id of PUBACK / SUBACK, or the (flags, code) pair of CONNACK."""
    if stop - body < 2:
        raise MQTTError("short packet")
    return (buf[body] << 8) | buf[body + 1]
