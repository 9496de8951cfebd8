"""Minimal CBOR (RFC 8949) codec for the wire subset.

Subset: int (-2**1024 .. 2**1024-1), float, str, bytes, list (and tuple), dict, bool, None.
``dumps`` is byte-identical to CPython ``cbor2.dumps`` (non-canonical) on that subset:
shortest-form integer and length heads, float64 for finite floats, and the 3-byte float16
forms cbor2 uses for NaN and +/-Infinity; definite lengths; dict keys in insertion order.
Integers beyond 64 bits are bignums (tag 2, or tag 3 for negatives, around the big-endian
magnitude without leading zeros), as cbor2 writes them.

``loads`` is defensive: it rejects truncated input, trailing bytes, indefinite lengths, tags
other than a bignum's, bignums over ``MAX_BIGNUM`` bytes, unknown simple values and nesting
deeper than ``MAX_DEPTH``; it never allocates from a claimed length before checking that many
bytes are actually present. It also reads float16/float32.
"""

import struct

MAX_DEPTH = 32  # containers nested deeper than this are rejected (device C stack is small)
MAX_BIGNUM = 128  # bytes of a bignum's magnitude: integers up to 1024 bits (PROTOCOL.md, Encoding)
_BIG = 0x10000000000000000  # 2**64: from here on an integer is a bignum


class CBORError(ValueError):
    """Malformed or unsupported CBOR, or a value outside the wire subset. Permanent."""

    def __init__(self, msg):
        super().__init__(msg)


# ---------------------------------------------------------------------------- encoder


def _head(out, major, n):
    mt = major << 5
    if n < 24:
        out.append(mt | n)
    elif n < 0x100:
        out.append(mt | 24)
        out.append(n)
    elif n < 0x10000:
        out.append(mt | 25)
        out.extend(struct.pack(">H", n))
    elif n < 0x100000000:
        out.append(mt | 26)
        out.extend(struct.pack(">I", n))
    else:
        out.append(mt | 27)
        out.extend(struct.pack(">II", n >> 32, n & 0xFFFFFFFF))


def _bignum(out, tag, n):
    """Tag 2 (or 3) around the big-endian bytes of ``n`` (>= 2**64), without leading zeros."""
    size = 8
    while n >> (size * 8):
        size += 1
        if size > MAX_BIGNUM:
            raise CBORError("integer out of range (more than %d bits)" % (MAX_BIGNUM * 8))
    out.append(0xC0 | tag)
    _head(out, 2, size)
    for i in range(size - 1, -1, -1):
        out.append((n >> (i * 8)) & 0xFF)


def _enc(out, obj, depth):
    if obj is None:
        out.append(0xF6)
    elif obj is True:
        out.append(0xF5)
    elif obj is False:
        out.append(0xF4)
    elif isinstance(obj, int):
        if obj >= 0:
            if obj < _BIG:
                _head(out, 0, obj)
            else:
                _bignum(out, 2, obj)
        elif obj >= -_BIG:
            _head(out, 1, -1 - obj)
        else:
            _bignum(out, 3, -1 - obj)
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        _head(out, 3, len(b))
        out.extend(b)
    elif isinstance(obj, float):
        if obj != obj:
            out.extend(b"\xf9\x7e\x00")
        elif obj in (float("inf"), float("-inf")):
            out.extend(b"\xf9\x7c\x00" if obj > 0 else b"\xf9\xfc\x00")
        else:
            out.append(0xFB)
            out.extend(struct.pack(">d", obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        _head(out, 2, len(obj))
        out.extend(obj)
    else:
        if depth >= MAX_DEPTH:
            raise CBORError("nesting too deep")
        if isinstance(obj, (list, tuple)):
            _head(out, 4, len(obj))
            for x in obj:
                _enc(out, x, depth + 1)
        elif isinstance(obj, dict):
            _head(out, 5, len(obj))
            for k in obj:
                _enc(out, k, depth + 1)
                _enc(out, obj[k], depth + 1)
        else:
            raise CBORError("cannot encode %s" % type(obj).__name__)


def dumps(obj):
    """Encode ``obj`` to CBOR bytes."""
    out = bytearray()
    _enc(out, obj, 0)
    return bytes(out)


# ---------------------------------------------------------------------------- decoder


def _half(h):
    exp = (h >> 10) & 0x1F
    frac = h & 0x3FF
    if exp == 0:
        val = frac * 2.0**-24
    elif exp == 31:
        val = float("nan") if frac else float("inf")
    else:
        val = (1024 + frac) * 2.0 ** (exp - 25)
    return -val if h & 0x8000 else val


class _Reader:
    def __init__(self, data):
        self.data = data if isinstance(data, memoryview) else memoryview(data)  # slices without copies
        self.pos = 0

    def take(self, n):
        p = self.pos
        if n > len(self.data) - p:
            raise CBORError("truncated")
        self.pos = p + n
        return p

    def arg(self, ai):
        d = self.data
        if ai < 24:
            return ai
        if ai == 24:
            return d[self.take(1)]
        if ai == 25:
            p = self.take(2)
            return (d[p] << 8) | d[p + 1]
        if ai == 26:
            p = self.take(4)
            return (d[p] << 24) | (d[p + 1] << 16) | (d[p + 2] << 8) | d[p + 3]
        if ai == 27:
            p = self.take(8)
            n = 0
            for i in range(8):
                n = (n << 8) | d[p + i]
            return n
        raise CBORError("indefinite length or reserved additional info")

    def item(self, depth):
        ib = self.data[self.take(1)]
        major = ib >> 5
        ai = ib & 31
        if major == 7:
            return self.simple(ai)
        n = self.arg(ai)
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2 or major == 3:
            p = self.take(n)
            if major == 2:
                return bytes(self.data[p : p + n])
            try:
                return str(self.data[p : p + n], "utf-8")  # decoded from the view: one allocation
            except Exception:  # UnicodeError on MicroPython, UnicodeDecodeError on CPython
                raise CBORError("invalid utf-8")
        if major == 6:
            return self.bignum(n)
        if depth >= MAX_DEPTH:
            raise CBORError("nesting too deep")
        if major == 4:
            if n > len(self.data) - self.pos:  # each item takes a byte at least: never allocate from a claimed length
                raise CBORError("truncated")
            out = [None] * n  # sized once: no regrowth on a small heap
            for i in range(n):
                out[i] = self.item(depth + 1)
            return out
        out = {}
        for _ in range(n):
            k = self.item(depth + 1)
            try:
                out[k] = self.item(depth + 1)
            except TypeError:
                raise CBORError("unhashable map key")
        return out

    def bignum(self, tag):
        if tag != 2 and tag != 3:
            raise CBORError("tags other than bignums (2, 3) are not supported")
        ib = self.data[self.take(1)]
        if ib >> 5 != 2:
            raise CBORError("a bignum must be a byte string")
        size = self.arg(ib & 31)
        if size > MAX_BIGNUM:
            raise CBORError("bignum longer than %d bytes" % MAX_BIGNUM)
        p = self.take(size)
        d = self.data
        n = 0
        try:
            for i in range(p, p + size):
                n = (n << 8) | d[i]
        except OverflowError:  # a port built without arbitrary-precision ints
            raise CBORError("integer too large for this port")
        return n if tag == 2 else -1 - n

    def simple(self, ai):
        d = self.data
        if ai == 20:
            return False
        if ai == 21:
            return True
        if ai == 22:
            return None
        if ai == 25:
            p = self.take(2)
            return _half((d[p] << 8) | d[p + 1])
        if ai == 26:
            p = self.take(4)
            return struct.unpack(">f", bytes(d[p : p + 4]))[0]
        if ai == 27:
            p = self.take(8)
            return struct.unpack(">d", bytes(d[p : p + 8]))[0]
        raise CBORError("unsupported simple value %d" % ai)


def loads(data):
    """Decode one CBOR item from bytes-like ``data``; the whole input must be consumed."""
    r = _Reader(data)
    val = r.item(0)
    if r.pos != len(data):
        raise CBORError("trailing bytes")
    return val
