"""The PostgreSQL store: the same Store as SQLite, on a database several bridges may share.

Every batch of calls is one PostgreSQL statement (group commit). With an ``owner`` token set (the fence of
bridge.store.membership; PostgresMembership sets it), a commit first locks the rows of its CAs and keeps only the
CAs this bridge still owns under the epoch its changes were computed on: a bridge that lost a CA to another one
(because it was presumed dead) cannot overwrite the new owner's work, whatever its clocks or its cache say. The
refused CAs are returned, nothing of theirs is written, and the caller reloads.

Ownership lives in the ``ca`` row itself (``owner``, ``epoch``), so that the fence is checked in the commit's own
statement; membership lives in ``node`` (one row per running bridge, renewed by heartbeat). Both are managed by
bridge.store.postgres_membership, on this store's pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from bridge import faults
from bridge.errors import StoreError
from bridge.store.base import CARecord, Change, SessionRecord, merge
from bridge.store.pgconn import Transaction, reason, store_error
from bridge.store.urls import redact_url, scrub

__all__ = ["SCHEMA_VERSION", "PostgresStore"]

SCHEMA_VERSION = 6
SCHEMA = """
CREATE TABLE IF NOT EXISTS ca_bridge_schema (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS ca (
    name text PRIMARY KEY, state bytea NOT NULL, owner text, epoch bigint NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS ca_owner ON ca (owner);
CREATE TABLE IF NOT EXISTS session (
    ca text NOT NULL, sid text NOT NULL, meta bytea NOT NULL, PRIMARY KEY (ca, sid));
CREATE TABLE IF NOT EXISTS note (
    ca text NOT NULL, sid text NOT NULL, seq bigint NOT NULL, args bytea NOT NULL, PRIMARY KEY (ca, sid, seq));
CREATE TABLE IF NOT EXISTS dedup (
    ca text NOT NULL, pos bigint NOT NULL, sid text NOT NULL, rid bytea NOT NULL, reply bytea NOT NULL,
    PRIMARY KEY (ca, pos));
CREATE TABLE IF NOT EXISTS node (
    token text PRIMARY KEY, name text NOT NULL, started timestamptz NOT NULL DEFAULT now(),
    expires timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS ca_bridge_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE IF NOT EXISTS device (ca text PRIMARY KEY, data bytea NOT NULL);
"""
# version N -> SQL that upgrades it to N + 1 (run under the schema lock, in the same transaction)
MIGRATIONS: dict[int, str] = {
    # Version 1 kept request ids as text, which cannot hold NUL (nor lone surrogates): a device chooses its ids, so
    # one odd id made every batch it was in fail. Version 2 keeps them as bytes (UTF-8, surrogatepass).
    1: "ALTER TABLE dedup ALTER COLUMN rid TYPE bytea USING convert_to(rid, 'UTF8');",
    # Version 3 writes each batch through the ca_bridge_commit function (created with the schema, below).
    2: "SELECT 1;",
    # Version 4 fences on the ownership epoch too: the function takes one more array (replaced below).
    3: "DROP FUNCTION IF EXISTS ca_bridge_commit(text, text[], text[], bytea[], text[], text[], text[], text[], "
       "bytea[], text[], text[], bigint[], bytea[], text[], bigint[], text[], bytea[], bytea[], text[], text[], "
       "bigint[], text[], bigint[]);",
    # Version 5 keeps the dedup records per session (the floors name a session: the function changes again) and
    # records the app the database belongs to (ca_bridge_meta, in SCHEMA).
    4: "DROP FUNCTION IF EXISTS ca_bridge_commit(text, text[], bigint[], text[], bytea[], text[], text[], text[], "
       "text[], bytea[], text[], text[], bigint[], bytea[], text[], bigint[], text[], bytea[], bytea[], text[], "
       "text[], bigint[], text[], bigint[]);",
    # Version 6 adds the device table (bridge.device, in SCHEMA): the function takes its two arrays too.
    5: "DROP FUNCTION IF EXISTS ca_bridge_commit(text, text[], bigint[], text[], bytea[], text[], text[], text[], "
       "text[], bytea[], text[], text[], bigint[], bytea[], text[], bigint[], text[], bytea[], bytea[], text[], "
       "text[], bigint[], text[], text[], bigint[]);",
}
# One batch, one statement: the fence (lock the batch's CA rows in name order, keep those this bridge owns) and
# every table's writes for the owned CAs, from column arrays. Returns the refused CA names.
COMMIT_FUNCTION = """
CREATE OR REPLACE FUNCTION ca_bridge_commit(
    tok text, names text[], epochs bigint[],
    st_ca text[], st_blob bytea[],
    pu_ca text[], pu_sid text[],
    me_ca text[], me_sid text[], me_blob bytea[],
    no_ca text[], no_sid text[], no_seq bigint[], no_args bytea[],
    de_ca text[], de_pos bigint[], de_sid text[], de_rid bytea[], de_reply bytea[],
    nf_ca text[], nf_sid text[], nf_seq bigint[],
    df_ca text[], df_sid text[], df_pos bigint[],
    dv_ca text[], dv_data bytea[]
) RETURNS text[] LANGUAGE plpgsql AS $fn$
DECLARE
    owned text[] := names;
BEGIN
    IF tok IS NOT NULL THEN
        -- owned now, and under the same epoch as the copy the changes were computed on (an epoch of 0: any)
        owned := ARRAY(SELECT ca.name FROM ca JOIN unnest(names, epochs) AS f(name, epoch) ON ca.name = f.name
                       WHERE ca.owner = tok AND (f.epoch = 0 OR ca.epoch = f.epoch)
                       ORDER BY ca.name FOR UPDATE OF ca);
        IF cardinality(owned) = 0 THEN
            RETURN names;
        END IF;
    END IF;
    IF cardinality(pu_ca) > 0 THEN
        DELETE FROM session s USING unnest(pu_ca, pu_sid) AS u(ca, sid)
            WHERE s.ca = u.ca AND s.sid = u.sid AND u.ca = ANY(owned);
        DELETE FROM note n USING unnest(pu_ca, pu_sid) AS u(ca, sid)
            WHERE n.ca = u.ca AND n.sid = u.sid AND u.ca = ANY(owned);
    END IF;
    IF cardinality(st_ca) > 0 THEN
        INSERT INTO ca (name, state) SELECT u.ca, u.blob FROM unnest(st_ca, st_blob) AS u(ca, blob)
            WHERE u.ca = ANY(owned) ON CONFLICT (name) DO UPDATE SET state = excluded.state;
    END IF;
    IF cardinality(me_ca) > 0 THEN
        INSERT INTO session (ca, sid, meta) SELECT * FROM unnest(me_ca, me_sid, me_blob) AS u(ca, sid, blob)
            WHERE u.ca = ANY(owned) ON CONFLICT (ca, sid) DO UPDATE SET meta = excluded.meta;
    END IF;
    IF cardinality(no_ca) > 0 THEN
        INSERT INTO note (ca, sid, seq, args) SELECT * FROM unnest(no_ca, no_sid, no_seq, no_args) AS u(ca, sid, seq, a)
            WHERE u.ca = ANY(owned) ON CONFLICT (ca, sid, seq) DO UPDATE SET args = excluded.args;
    END IF;
    IF cardinality(de_ca) > 0 THEN
        INSERT INTO dedup (ca, pos, sid, rid, reply)
            SELECT * FROM unnest(de_ca, de_pos, de_sid, de_rid, de_reply) AS u(ca, pos, sid, rid, reply)
            WHERE u.ca = ANY(owned)
            ON CONFLICT (ca, pos) DO UPDATE SET sid = excluded.sid, rid = excluded.rid, reply = excluded.reply;
    END IF;
    IF cardinality(nf_ca) > 0 THEN
        DELETE FROM note n USING unnest(nf_ca, nf_sid, nf_seq) AS u(ca, sid, seq)
            WHERE n.ca = u.ca AND n.sid = u.sid AND n.seq < u.seq AND u.ca = ANY(owned);
    END IF;
    IF cardinality(df_ca) > 0 THEN
        DELETE FROM dedup d USING unnest(df_ca, df_sid, df_pos) AS u(ca, sid, pos)
            WHERE d.ca = u.ca AND d.sid = u.sid AND d.pos < u.pos AND u.ca = ANY(owned);
    END IF;
    IF cardinality(dv_ca) > 0 THEN
        INSERT INTO device (ca, data) SELECT * FROM unnest(dv_ca, dv_data) AS u(ca, data)
            WHERE u.ca = ANY(owned) ON CONFLICT (ca) DO UPDATE SET data = excluded.data;
    END IF;
    RETURN ARRAY(SELECT unnest(names) EXCEPT SELECT unnest(owned));
END
$fn$;
"""
_SCHEMA_LOCK = 0x63615F62  # pg_advisory_xact_lock key: bridges starting together create the schema once



class PostgresStore:
    """A :class:`bridge.store.Store` in PostgreSQL, through a psycopg 3 async connection pool."""

    def __init__(self, url: str, *, pool_size: int = 4, application_name: str = "ca-bridge",
                 connect_timeout: float = 5.0, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only  # for tools (`ca-bridge inspect`): no schema, no migration, every write refused
        self.pool_size = pool_size
        self.application_name = application_name
        self.connect_timeout = connect_timeout
        self.owner: str | None = None  # the fence (PostgresMembership.fence): commits write only its CAs
        self._pool: Any = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create or migrate the schema (once, whoever starts first) on a first connection, then open the pool.

        The first connection is made directly, not by the pool: a pool that cannot connect only times out, whereas
        a direct attempt fails at once (connection refused, unknown database, bad password) and says why.
        """
        try:
            import psycopg
            from psycopg_pool import AsyncConnectionPool
        except ImportError as exc:  # pragma: no cover - a packaging problem, reported clearly
            raise StoreError(f"PostgreSQL support needs psycopg: pip install 'ca-bridge[postgres]' ({exc})") from None
        where = redact_url(self.url)
        kwargs: dict[str, Any] = {
            "application_name": self.application_name,
            "connect_timeout": max(1, int(self.connect_timeout)),
            # a silent network (a partition, not a refusal) must fail queries within seconds, not hang them
            "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
            "tcp_user_timeout": 10_000,
            # a batch is one statement (ca_bridge_commit), atomic by itself: no BEGIN/COMMIT round trips for it;
            # everything else still runs in explicit transactions (Transaction)
            "autocommit": True,
        }
        if self.read_only:  # the server refuses any write, whatever a bug here might try
            kwargs["options"] = "-c default_transaction_read_only=on"
        limit = max(2.0, self.connect_timeout) + 1.0  # psycopg applies connect_timeout (2 s at least) per attempt
        try:  # ... and this bounds the name resolution too
            conn = await asyncio.wait_for(psycopg.AsyncConnection.connect(self.url, **kwargs), limit)
        except TimeoutError:
            raise StoreError(f"cannot connect to PostgreSQL at {where}: no answer within {limit:g} s") from None
        except Exception as exc:  # psycopg.Error, OSError; a malformed URL's message may quote the password
            raise StoreError(f"cannot connect to PostgreSQL at {where}: {scrub(reason(exc), self.url)}") from None
        try:
            async with conn.transaction():
                await (_check_schema(conn.cursor(), where) if self.read_only else _migrate(conn.cursor()))
        except Exception as exc:
            raise store_error(exc) from None
        finally:
            await conn.close()
        pool = AsyncConnectionPool(
            self.url, min_size=1, max_size=self.pool_size, open=False, timeout=self.connect_timeout,
            kwargs=kwargs, name=self.application_name, reconnect_timeout=0,
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except Exception as exc:
            await pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {where}: {scrub(reason(exc), self.url)}") from None
        self._pool = pool

    def describe(self) -> str:
        """The database URL without its password."""
        return redact_url(self.url)

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(timeout=2.0)

    def transaction(self, *, atomic: bool = True) -> Transaction:
        """``async with store.transaction() as cur``: a pooled connection in one transaction (``atomic``), as a
        cursor; for this module and the membership sharing the pool."""
        if self._pool is None:
            raise StoreError("store is closed")
        return Transaction(self._pool, self.connect_timeout, atomic)

    # -- the Store interface ---------------------------------------------------------------------------------

    async def load_all(self) -> list[CARecord]:
        """Every CA (for tools: a bridge in a cluster loads the CAs it owns, lazily)."""
        async with self.transaction() as cur:
            return await load_records(cur, None)

    async def load(self, name: str) -> CARecord | None:
        """One CA, or None."""
        async with self.transaction() as cur:
            found = await load_records(cur, [name])
        return found[0] if found else None

    async def names(self) -> list[str]:
        """Sorted CA names."""
        async with self.transaction() as cur:
            await cur.execute('SELECT name FROM ca ORDER BY name COLLATE "C"')  # as Python sorts, whatever the locale
            return [r[0] for r in await cur.fetchall()]

    async def register(self, name: str) -> bool:
        """An empty, unowned CA row: on_init runs when a bridge first claims it."""
        async with self.transaction() as cur:
            await cur.execute("INSERT INTO ca (name, state) VALUES (%s, '') ON CONFLICT DO NOTHING", (name,))
            return bool(cur.rowcount == 1)

    async def bind_app(self, app: str) -> str | None:
        """Record the app this database belongs to, or say which other app it belongs to (bridges starting
        together: the first insert wins, the others read it)."""
        async with self.transaction() as cur:
            await cur.execute(
                "INSERT INTO ca_bridge_meta (key, value) VALUES ('app', %s) ON CONFLICT (key) DO NOTHING", (app,))
            await cur.execute("SELECT value FROM ca_bridge_meta WHERE key = 'app'")
            row = await cur.fetchone()
        return None if row is None or row[0] == app else str(row[0])

    async def app(self) -> str | None:
        """The app recorded as this database's owner (None: not recorded yet)."""
        async with self.transaction() as cur:
            await cur.execute("SELECT to_regclass('ca_bridge_meta') IS NOT NULL")
            row = await cur.fetchone()
            if not (row and row[0]):
                return None
            await cur.execute("SELECT value FROM ca_bridge_meta WHERE key = 'app'")
            row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def commit(self, changes: Sequence[Change]) -> frozenset[str]:
        """One transaction for the batch; returns the CAs refused because this bridge no longer owns them."""
        merged = merge(changes)
        # one statement is atomic by itself; with the in_commit fault armed (tests), it runs in an explicit
        # transaction so that the process can die after the writes and before COMMIT
        async with self.transaction(atomic=faults.armed("in_commit")) as cur:
            refused = await _write(cur, merged, self.owner)
            faults.hit("in_commit")
        return refused

    async def import_changes(self, changes: Sequence[Change], *, replace: bool) -> None:
        """Write whole CAs (bridge.migrate) in one transaction, unowned; with ``replace``, existing rows of these
        CAs go first, so no dedup record or notification of an older copy survives."""
        merged = merge(changes)
        names = list(merged)
        async with self.transaction() as cur:
            if replace:
                for table, column in (("note", "ca"), ("session", "ca"), ("dedup", "ca"), ("device", "ca"),
                                      ("ca", "name")):
                    await cur.execute(f"DELETE FROM {table} WHERE {column} = ANY(%s)", (names,))
            await _write(cur, merged, None)

async def _schema_version(cur: Any) -> int | None:
    """The schema version of the database, None if it has no ca-bridge schema (reads only)."""
    await cur.execute("SELECT to_regclass('ca_bridge_schema') IS NOT NULL")
    row = await cur.fetchone()
    if not (row and row[0]):
        return None
    await cur.execute("SELECT max(version) FROM ca_bridge_schema")
    found = await cur.fetchone()
    return int(found[0]) if found and found[0] is not None else 0


async def _check_schema(cur: Any, where: str) -> None:
    """For a read-only store: the schema must be there already, in a version this code reads."""
    version = await _schema_version(cur)
    if version is None:
        raise StoreError(f"no ca-bridge schema in {where} (no bridge has run on it)")
    if version > SCHEMA_VERSION:
        raise StoreError(f"database has schema {version}, newer than this bridge ({SCHEMA_VERSION})")
    if version < 2:  # request ids were text then
        raise StoreError(f"database has schema {version}: run a bridge on it once to upgrade it")


async def _migrate(cur: Any) -> None:
    """Bring the schema to SCHEMA_VERSION, inside the caller's transaction. At the current version nothing is
    written: no DDL runs, so opening a store (a bridge starting, `ca-bridge inspect`) takes no lock on the tables
    and never waits for, nor holds up, the commits of running bridges."""
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
    version = await _schema_version(cur) or 0
    if version > SCHEMA_VERSION:
        raise StoreError(f"database has schema {version}, newer than this bridge ({SCHEMA_VERSION})")
    if version == SCHEMA_VERSION:
        return
    while version and version < SCHEMA_VERSION:
        await cur.execute(MIGRATIONS[version])
        version += 1
    await cur.execute(SCHEMA)
    await cur.execute(COMMIT_FUNCTION)
    await cur.execute("DELETE FROM ca_bridge_schema")
    await cur.execute("INSERT INTO ca_bridge_schema (version) VALUES (%s)", (SCHEMA_VERSION,))


def _rid_bytes(rid: str) -> bytes:
    return rid.encode("utf-8", "surrogatepass")


async def load_records(cur: Any, names: list[str] | None) -> list[CARecord]:
    """The CAs named (all of them: None), whole, in the cursor's transaction."""
    args: tuple[Any, ...]
    if names is None:
        where, args = "", ()
        await cur.execute('SELECT name, state, epoch FROM ca ORDER BY name COLLATE "C"')
    else:
        where, args = "WHERE ca = ANY(%s)", (names,)
        await cur.execute("SELECT name, state, epoch FROM ca WHERE name = ANY(%s)", args)
    cas = {n: CARecord(n, bytes(state), epoch=int(epoch)) for n, state, epoch in await cur.fetchall()}
    if not cas:
        return []
    await cur.execute(f"SELECT ca, sid, meta FROM session {where}", args)
    for ca, sid, meta in await cur.fetchall():
        cas[ca].sessions[sid] = SessionRecord(bytes(meta))
    await cur.execute(f"SELECT ca, sid, seq, args FROM note {where} ORDER BY ca, sid, seq", args)
    for ca, sid, seq, blob in await cur.fetchall():
        cas[ca].sessions[sid].notes.append((seq, bytes(blob)))
    await cur.execute(f"SELECT ca, pos, sid, rid, reply FROM dedup {where} ORDER BY ca, pos", args)
    for ca, pos, sid, rid, reply in await cur.fetchall():
        cas[ca].dedup.append((pos, sid, bytes(rid).decode("utf-8", "surrogatepass"), bytes(reply)))
    await cur.execute("SELECT to_regclass('device') IS NOT NULL")  # a read-only look at an older schema
    row = await cur.fetchone()
    if row and row[0]:
        await cur.execute(f"SELECT ca, data FROM device {where}", args)
        for ca, data in await cur.fetchall():
            if ca in cas:
                cas[ca].device = bytes(data)
    return list(cas.values())


_COMMIT_TYPES = (  # the parameters of ca_bridge_commit, in order (empty arrays need their type spelled out)
    "text", "text[]", "bigint[]", "text[]", "bytea[]", "text[]", "text[]", "text[]", "text[]", "bytea[]",
    "text[]", "text[]", "bigint[]", "bytea[]", "text[]", "bigint[]", "text[]", "bytea[]", "bytea[]",
    "text[]", "text[]", "bigint[]", "text[]", "text[]", "bigint[]", "text[]", "bytea[]",
)
_COMMIT = "SELECT ca_bridge_commit(" + ", ".join(f"%b::{t}" for t in _COMMIT_TYPES) + ")"


async def _write(cur: Any, merged: dict[str, Change], owner: str | None) -> frozenset[str]:
    """Write a merged batch with one call of ca_bridge_commit (COMMIT_FUNCTION): the rows of each table go as
    column arrays, so the whole batch costs one statement and one round trip, however many CAs and tables it
    touches. Returns the CAs refused by the ownership fence (none when ``owner`` is None)."""
    state: tuple[list[Any], ...] = ([], [])
    purge: tuple[list[Any], ...] = ([], [])
    meta: tuple[list[Any], ...] = ([], [], [])
    note: tuple[list[Any], ...] = ([], [], [], [])
    dedup: tuple[list[Any], ...] = ([], [], [], [], [])
    note_floor: tuple[list[Any], ...] = ([], [], [])
    dedup_floor: tuple[list[Any], ...] = ([], [], [])
    device: tuple[list[Any], ...] = ([], [])

    def add(columns: tuple[list[Any], ...], *values: Any) -> None:
        for column, value in zip(columns, values, strict=True):
            column.append(value)

    for ca, change in merged.items():
        if change.state is not None:
            add(state, ca, change.state)
        if change.device is not None:
            add(device, ca, change.device)
        for pos, sid, rid, reply in change.dedup:
            add(dedup, ca, pos, sid, _rid_bytes(rid), reply)
        for sid, floor in change.dedup_floors.items():
            add(dedup_floor, ca, sid, floor)
        for sid, w in change.sessions.items():
            if w.purge:
                add(purge, ca, sid)
            if w.meta is not None:
                add(meta, ca, sid, w.meta)
            for seq, blob in w.notes:
                add(note, ca, sid, seq, blob)
            if w.note_floor:
                add(note_floor, ca, sid, w.note_floor)
    epochs = [change.epoch for change in merged.values()]
    columns = (*state, *purge, *meta, *note, *dedup, *note_floor, *dedup_floor, *device)
    await cur.execute(_COMMIT, (owner, list(merged), epochs, *columns))
    row = await cur.fetchone()
    return frozenset(row[0]) if row and row[0] else frozenset()
