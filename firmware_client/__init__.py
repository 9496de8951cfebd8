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
from firmware_client.client import CAError, Client, PersistentSession
from firmware_client.compat import Timeout
from firmware_client.device import Device
from firmware_client.packet import MQTTError

__version__ = "0.1.0"
__all__ = ["CAError", "CBORError", "Client", "Device", "MQTTError", "PersistentSession", "Timeout", "__version__"]
