"""Platform seam: the few things CPython and MicroPython spell differently.

Everything else in the package imports time, randomness and socket quirks from here, so the
rest of the code is identical on both interpreters.
"""

import binascii
import os

try:  # MicroPython
    from time import sleep_ms, ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython: monotonic milliseconds that never wrap
    import time as _time

    def ticks_ms():
        return int(_time.monotonic() * 1000)

    def ticks_add(t, delta):
        return t + delta

    def ticks_diff(a, b):
        return a - b

    def sleep_ms(ms):
        if ms > 0:
            _time.sleep(ms / 1000)


try:
    _TimeoutBase = TimeoutError  # CPython: subclass of OSError
except NameError:  # MicroPython has no TimeoutError
    _TimeoutBase = OSError

_ETIMEDOUT = 110
_EAGAIN = (11, 35, 110, 115)  # EAGAIN (Linux, BSD), ETIMEDOUT, EINPROGRESS


class Timeout(_TimeoutBase):
    """A bounded wait ran out (no CONNACK, no reply, no write progress). Transient: retry later."""

    def __init__(self, msg="timed out"):
        super().__init__(_ETIMEDOUT, msg)


def is_timeout(exc):
    """True when an OSError raised by a socket read/write only means "nothing yet"."""
    if isinstance(exc, _TimeoutBase) and not isinstance(exc, Timeout):
        return True
    name = type(exc).__name__
    if name in ("SSLWantReadError", "SSLWantWriteError", "BlockingIOError"):
        return True
    args = getattr(exc, "args", ())
    return bool(args) and args[0] in _EAGAIN


def deadline_in(ms):
    """Ticks value ``ms`` milliseconds from now."""
    return ticks_add(ticks_ms(), int(ms))


def remaining(deadline):
    """Milliseconds left until ``deadline`` (may be negative)."""
    return ticks_diff(deadline, ticks_ms())


def rand_below(n):
    """Uniform-ish random int in [0, n) from os.urandom (no random module needed)."""
    if n <= 1:
        return 0
    b = os.urandom(4)
    return ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) % n


def hexlify(data):
    """Lower-case hex of ``data`` as str."""
    return binascii.hexlify(data).decode()
