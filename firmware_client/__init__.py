"""firmware_client: talk to a CA through the MQTT bridge from MicroPython or CPython.

Public names: Client, Device, PersistentSession, CAError, Timeout, MQTTError, CBORError, __version__.

Errors:
    CAError      the CA answered with an error (.kind .name .message .data)
    OSError      transport failure
      Timeout      a bounded wait ran out (also a TimeoutError on CPython)
      MQTTError    broker refused or broke the protocol (.code)
    ValueError
      CBORError    undecodable / unencodable payload
"""

from firmware_client.cbor import CBORError
from firmware_client.client import CAError, Client
from firmware_client.compat import Timeout
from firmware_client.packet import MQTTError

__version__ = "0.1.0"
__all__ = ["CAError", "CBORError", "Client", "Device", "MQTTError", "PersistentSession", "Timeout", "__version__"]


def __getattr__(name):
    # Device is imported on first use: a plain Client does not pay its heap (about 20 KB on MicroPython).
    # MicroPython's `from firmware_client import jsoncodec` asks here first, so submodules are imported too.
    import sys

    if name == "Device":
        if sys.implementation.name == "micropython":
            import gc

            gc.collect()  # a small heap: loading the runtime needs room, without the garbage of earlier imports
        from firmware_client.device import Device

        return Device
    if name == "PersistentSession":
        from firmware_client.session import PersistentSession

        return PersistentSession
    if name in ("aio", "bundles", "calls", "device", "jsoncodec", "maps", "session", "timesync", "tls"):
        __import__("firmware_client." + name)
        return sys.modules["firmware_client." + name]
    raise AttributeError(name)
