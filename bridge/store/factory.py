"""The one place a store is chosen: ``--db`` (a path, a URL, or None) to a Store, and a store to its Membership."""

from __future__ import annotations

import os
import re
from pathlib import Path

from bridge.errors import ConfigError
from bridge.store.base import Store
from bridge.store.membership import Membership
from bridge.store.memory import MemoryStore
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_membership import PostgresMembership
from bridge.store.sqlite import SQLiteStore
from bridge.store.urls import is_postgres_url, redact_url

__all__ = ["membership_for", "open_store"]

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def open_store(target: str | os.PathLike[str] | None, *, synchronous: str = "FULL", read_only: bool = False,
               pool_size: int = 4, application_name: str = "ca-bridge", exclusive: bool = True) -> Store:
    """The store ``target`` names, not opened yet (call ``await store.open()``).

    - ``postgresql://`` or ``postgres://`` URL: PostgreSQL (``pool_size`` connections, ``application_name`` as
      the server shows it); several bridges may share it;
    - any other path: a SQLite file (``synchronous``: FULL, NORMAL or EXTRA);
    - None: a MemoryStore (no durability: for the Harness and unit tests).

    ``read_only`` (tools such as `ca-bridge inspect`): the store is opened as it is, no schema is created or
    upgraded, and every write is refused. A writing SQLite store is ``exclusive`` to one process (a second
    bridge on the file is refused at open); ``exclusive=False`` is for the tools (`ca-bridge create` beside a
    running bridge, `migrate`). Another URL scheme is a ConfigError.
    """
    if target is None:
        return MemoryStore()
    if isinstance(target, str):
        if is_postgres_url(target):
            return PostgresStore(target, pool_size=pool_size, application_name=application_name, read_only=read_only)
        if _URL.match(target):
            raise ConfigError(f"unsupported store URL {redact_url(target)}: give a SQLite file path or a "
                              "postgresql:// URL")
    return SQLiteStore(Path(target), synchronous=synchronous, read_only=read_only, exclusive=exclusive)


def membership_for(store: Store) -> Membership | None:
    """The cluster membership that comes with ``store``: PostgreSQL keeps it in the same database (so that the
    store's commit can check ownership atomically); a SQLite file or a MemoryStore serves one bridge (None)."""
    if isinstance(store, PostgresStore):
        return PostgresMembership(store)
    return None
