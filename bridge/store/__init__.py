"""Durable storage and cluster ownership, each behind one interface.

- :class:`Store` (bridge.store.base): what the runtime needs from durable storage, with its records and
  :func:`merge`; implemented by SQLiteStore (bridge.store.sqlite), PostgresStore (bridge.store.postgres) and
  MemoryStore (bridge.store.memory, for tests).
- :class:`Membership` (bridge.store.membership): what a cluster needs from its coordination backend (live
  members, CA claims, the commit fence); implemented on PostgreSQL by PostgresMembership
  (bridge.store.postgres_membership). bridge.cluster holds the policy on top of it.
- :func:`open_store`: the one place a store is chosen from ``--db``; :func:`membership_for`: its Membership.

Nothing here imports the runtime, the service or the command line.
"""

from bridge.store.base import Backlog, CARecord, Change, CommitSoon, SessionRecord, SessionWrite, Store, merge
from bridge.store.factory import membership_for, open_store
from bridge.store.membership import Claim, Membership
from bridge.store.memory import MemoryStore
from bridge.store.urls import is_postgres_url, redact_url

__all__ = [
    "Backlog",
    "CARecord",
    "Change",
    "Claim",
    "CommitSoon",
    "Membership",
    "MemoryStore",
    "SessionRecord",
    "SessionWrite",
    "Store",
    "is_postgres_url",
    "membership_for",
    "merge",
    "open_store",
    "redact_url",
]
