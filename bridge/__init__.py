"""An MQTT bridge that runs Caf.js-style Cloud Assistants for gadgets.

Public API::

    from bridge import CA, method, AppError, Bundle

Module map (each one concept; arrows are imports; tests/test_layers.py enforces the layers, lowest first: a module
imports only its own layer or lower ones, never in a circle):
    errors, codec                pure, no I/O
    protocol                     topics, names and every message kind: inbound classes registered by their ``t``
                                 (validation beside each), outbound builders and encoders
    app                          CA base class, @method
    session                      session data and the per-call transactional session view
    device/                      the device layer (docs/DEVICES.md), beside session:
      model                        the device record: maps, versions, tombstones, commands, boot, bundles, results
      api                          ``self.device`` (a working copy per transaction, made on first use) and Bundle
      handlers                     what dstart / dsync do to a record and their answers (run by actor)
    store/                       durable storage and cluster ownership, each behind one interface:
      base, memory                 the Store protocol, its records, merge; MemoryStore (tests, Harness)
      sqlite, postgres             SQLite and PostgreSQL stores (pgconn: pooled transactions; urls: --db URLs)
      membership                   the Membership protocol (claims, liveness, the commit fence) and Claim
      postgres_membership          Membership on the PostgreSQL store's database and pool
      factory                      open_store(--db) -> Store, membership_for(store): the one place a store is chosen
    metrics                      counters and histograms of the hot path; the Prometheus collector
    cluster                      several bridges on one shared store: this node's membership policy, routing cache
    committer                    group commit, release after durability (needs only an Owner: name, epoch, invalidate)
    workers                      the work tasks (CA workers, lookups, claims): busy count, parking, closing
    actor                        one CA: mailbox, transactions, presence; one handler per inbound kind; sees only
                                 an ActorContext, never the runtime
    admission, router            whether a request may run and every rejection; where a CA runs in a cluster
    runtime                      registry of loaded CAs, placing requests on them, pulses, claims in a cluster
    ingress                      the one way requests come in (any transport): topic -> CA, decode, validate,
                                 error replies, routing, then the runtime
    mqtt                         the MQTT 3.1.1 link (asyncio; no client library on the hot path)
    broker, amqtt_plugins, auth  the embedded amqtt broker, its device policy, device credentials
    http -> dashboard            a small read-only HTTP server; the web dashboard (dashboard.html)
    logs                         text or JSON logging with CA / session / request context
    service                      wires store + runtime + ingress + MQTT (+ broker, metrics, dashboard); the sink
    cli, inspect, migrate        command line
    testing                      Harness for app unit tests (the same ingress, in memory)
"""

from bridge.app import CA, method
from bridge.device import Bundle
from bridge.errors import AppError, BadRequest, BridgeError, CallError, CodecError, ConfigError, StoreError
from bridge.session import SessionAPI, SessionLimits

__all__ = [
    "CA",
    "AppError",
    "BadRequest",
    "BridgeError",
    "Bundle",
    "CallError",
    "CodecError",
    "ConfigError",
    "SessionAPI",
    "SessionLimits",
    "StoreError",
    "method",
]
