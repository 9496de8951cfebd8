"""An MQTT bridge that runs Caf.js-style Cloud Assistants for gadgets.

Public API::

    from bridge import CA, method, AppError

Module map (each one concept; arrows are imports):
    errors, codec, protocol      pure, no I/O
    app                          CA base class, @method
    session                      session data and the per-call transactional session view
    store -> sqlite, postgres    durable store interface, MemoryStore; SQLite and PostgreSQL implementations
    cluster                      several bridges on one PostgreSQL: membership, CA ownership, routing
    metrics                      counters and histograms of the hot path; the Prometheus collector
    committer                    group commit, release after durability
    actor                        one CA: mailbox, transactions, presence
    runtime                      registry, admission, pulses, claims in a cluster
    mqtt                         the MQTT 3.1.1 link (asyncio; no client library on the hot path)
    broker, amqtt_plugins, auth  the embedded amqtt broker, its device policy, device credentials
    http -> dashboard            a small read-only HTTP server; the web dashboard (dashboard.html)
    logs                         text or JSON logging with CA / session / request context
    service                      wires runtime + store + MQTT (+ broker, metrics, dashboard)
    cli, inspect, migrate        command line
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
