"""An MQTT bridge that runs Caf.js-style Cloud Assistants for gadgets.

Public API::

    from bridge import CA, method, AppError

Module map (each one concept; arrows are imports):
    errors, codec, protocol      pure, no I/O
    app                          CA base class, @method
    session                      session data and the per-call transactional session view
    store -> sqlite              durable store interface, MemoryStore; SQLite implementation
    committer                    group commit, release after durability
    actor                        one CA: mailbox, transactions
    runtime                      registry, admission, pulses
    mqtt                         the MQTT 3.1.1 link (asyncio; no client library on the hot path)
    broker                       the embedded amqtt broker
    service                      wires runtime + store + MQTT (+ broker)
    cli, inspect                 command line
    testing                      Harness for app unit tests
"""

from bridge.app import CA, method
from bridge.errors import AppError, BadRequest, BridgeError, CallError, CodecError, ConfigError, StoreError
from bridge.session import SessionAPI, SessionLimits

__all__ = [
    "CA",
    "AppError",
    "BadRequest",
    "BridgeError",
    "CallError",
    "CodecError",
    "ConfigError",
    "SessionAPI",
    "SessionLimits",
    "StoreError",
    "method",
]
