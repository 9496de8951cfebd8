"""The default durable store: one SQLite file, WAL, synchronous=FULL, one writer thread.

A batch of many CAs' calls is one SQLite transaction (group commit): one fsync however many calls it holds.
All database work runs on a single dedicated thread, so the event loop never blocks on the disk and the
connection is never shared between threads. The thread is fed by a queue; each job hands its result back with one
``call_soon_threadsafe``. A commit (:meth:`SQLiteStore.commit_soon`) calls the committer's callback directly from
there: one hand-off each way per batch, no futures in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar

from bridge import faults
from bridge.errors import ConfigError, StoreError
from bridge.store.base import CARecord, Change, CommitDone, SessionRecord, SessionWrite

__all__ = ["SQLiteStore"]

T = TypeVar("T")

# A job for the store's thread: run fn(*args) there, then call reply(result, error) on the loop's thread.
Reply = Callable[[Any, "BaseException | None"], None]
Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, Reply]

SCHEMA = """
CREATE TABLE IF NOT EXISTS ca (name TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS session (
    ca TEXT NOT NULL, sid TEXT NOT NULL, meta BLOB NOT NULL, PRIMARY KEY (ca, sid)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS note (
    ca TEXT NOT NULL, sid TEXT NOT NULL, seq INTEGER NOT NULL, args BLOB NOT NULL,
    PRIMARY KEY (ca, sid, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dedup (
    ca TEXT NOT NULL, pos INTEGER NOT NULL, sid TEXT NOT NULL, rid TEXT NOT NULL, reply BLOB NOT NULL,
    PRIMARY KEY (ca, pos)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device (ca TEXT PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;
"""
SCHEMA_VERSION = 4
# Version 1 kept dedup records per session (PRIMARY KEY (ca, sid, pos)); version 2 numbers them per CA so that a
# collected session does not take them along. Upgrading from 1 drops the old records (at worst a retry in flight
# during the upgrade runs again). Version 3 adds the meta table (the app the store belongs to): nothing to convert.
# Version 4 adds the device table (bridge.device: one row per CA that has device data): nothing to convert.
MIGRATIONS = {1: "DROP TABLE dedup;"}
INLINE_MAX_S = 0.002  # commit a lone change on the caller's thread while one takes less than this (seconds)
_ROWS = 16  # rows per insert statement at most: 64 statement texts in all, which sqlite3's cache (128) keeps


class _Insert:
    """One of the commit's inserts, as multi-row statements: ``sql[n]`` inserts n rows (1 <= n <= _ROWS)."""

    __slots__ = ("columns", "sql")

    def __init__(self, head: str, columns: int, tail: str = "") -> None:
        row = "(" + ", ".join("?" * columns) + ")"
        self.columns = columns
        self.sql = [""] + [f"{head} VALUES {', '.join([row] * n)}{tail}" for n in range(1, _ROWS + 1)]


# sqlite3 binds int, float, str and bytearray directly but sends every other value, bytes included, through its
# adapter lookup first: a registry miss, then two failed attribute lookups (one formats an AttributeError), about
# 0.5 us per blob. Each commit binds two blobs per call (the state and the reply): that lookup was a fifth of the
# store thread's instructions with 16 devices. With bytes registered, the lookup is a hit whose adapter is
# ``bytes.__bytes__``, which returns the very object (a 15 ns call, where ``bytes(b)`` parses its arguments): the same
# value is bound, for every sqlite3 connection of the process.
sqlite3.register_adapter(bytes, bytes.__bytes__)

_STATE = _Insert("INSERT INTO ca (name, state)", 2, " ON CONFLICT (name) DO UPDATE SET state = excluded.state")
_META = _Insert("INSERT INTO session (ca, sid, meta)", 3, " ON CONFLICT (ca, sid) DO UPDATE SET meta = excluded.meta")
_NOTE = _Insert("INSERT OR REPLACE INTO note (ca, sid, seq, args)", 4)
_DEDUP = _Insert("INSERT OR REPLACE INTO dedup (ca, pos, sid, rid, reply)", 5)


def _take_lock(db: Path) -> int:
    """An exclusive advisory lock on ``<db>.lock``, held while the returned descriptor stays open.

    flock belongs to the open file, so the kernel drops it when the process ends however it ends (SIGKILL
    included): a lock is never stale, and the file itself is never removed (removing it would let a third process
    lock a new file while the second still holds the old one). The holder writes its pid into it for the message.
    """
    path = db.with_name(db.name + ".lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open store {db}: {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StoreError(f"cannot lock store {db}: {path}: {exc.strerror}") from None
        pid = f" (pid {holder})" if holder.isdigit() else ""
        raise ConfigError(f"{db} is in use by another ca-bridge{pid}; stop it, give this bridge its own --db, or "
                          "use PostgreSQL for several bridges") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class SQLiteStore:
    """A :class:`bridge.store.Store` in one SQLite file."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL", read_only: bool = False,
                 exclusive: bool = True) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.read_only = read_only  # for tools (`ca-bridge inspect`): no schema, no migration, writes fail
        # A writing store belongs to one process: two bridges on one file would each hold CAs in memory and
        # overwrite each other's commits. The tools opt out (exclusive=False): `ca-bridge create` writes one
        # transaction beside a running bridge (README: with --no-autocreate), which SQLite's own locking keeps safe.
        self.exclusive = exclusive and not read_only
        self._db: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None  # the commits' cursor (one for all of them: no cursor per statement)
        self._jobs: queue.SimpleQueue[Job | None] | None = None  # the store thread's queue (None: closed)
        self._thread: threading.Thread | None = None
        self._lock: int | None = None  # the descriptor holding the flock on <db>.lock
        self._lone_s = 0.0  # how long the last commit of a lone change took (commit_soon: inline while fast)
        self._busy = threading.Lock()  # held while a job runs (on the store thread, or inline: commit_soon)
        self._devices = True  # the file has the device table (a store of schema 3 opened read-only has not)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread and wait for its result."""
        if self._jobs is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, loop, partial(_resolve, future)))
        return await future

    def _serve(self, jobs: queue.SimpleQueue[Job | None]) -> None:
        """The store's thread: run jobs in order; each result goes back to its loop with one wake-up."""
        while (job := jobs.get()) is not None:
            fn, args, loop, reply = job
            with self._busy:
                try:
                    result, error = fn(*args), None
                except BaseException as exc:  # handed to the loop, which decides
                    result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(reply, result, error)

    async def open(self) -> None:
        """Open the file on the writer thread: creating it and the schema, or upgrading it (read-only: as it is)."""
        if self.exclusive:
            self._lock = _take_lock(self.path)  # before anything is read or written; quick, never waits
        jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        thread = threading.Thread(target=self._serve, args=(jobs,), name="sqlite-store", daemon=True)
        thread.start()
        self._jobs, self._thread = jobs, thread
        try:
            await self._run(self._open_read_only if self.read_only else self._open)
        except BaseException:
            self._stop()
            self._release_lock()
            raise

    def _stop(self) -> None:
        if self._jobs is not None:
            self._jobs.put(None)
        if self._thread is not None:
            self._thread.join()
        self._jobs = self._thread = None

    def _open_read_only(self) -> None:
        """Open an existing store as it is: no schema is created or upgraded, and SQLite refuses any write."""
        try:
            db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from None
        self._devices = "device" in tables
        if not {"ca", "session", "note", "dedup"} <= tables:
            db.close()
            raise StoreError(f"no ca-bridge store in {self.path}")
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreError(f"store {self.path} has schema {version}, newer than this bridge ({SCHEMA_VERSION})")
        self._db = db

    def _open(self) -> None:
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")  # `ca-bridge create` may write while the bridge runs
            db.execute(f"PRAGMA synchronous={self.synchronous}")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"store {self.path} has schema {version}, newer than this bridge ({SCHEMA_VERSION})")
            if version in MIGRATIONS:
                db.executescript(MIGRATIONS[version])
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from None
        self._db = db

    def describe(self) -> str:
        """The database file."""
        return str(self.path)

    async def close(self) -> None:
        """Close the connection and stop the writer thread."""
        if self._jobs is None:
            return
        try:
            await self._run(self._close)
        finally:
            self._stop()  # the thread has nothing left to do: joining it does not block
            self._release_lock()  # after the connection is closed: the next bridge finds a quiet file

    def _close(self) -> None:
        if self._db is not None:
            self._cursor = None
            self._db.close()
            self._db = None

    def _release_lock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor drops the flock (the file stays: see _take_lock)
            self._lock = None

    async def load_all(self) -> list[CARecord]:
        """Every CA with its sessions."""
        return await self._run(self._load, None)

    async def load(self, name: str) -> CARecord | None:
        """One CA, or None."""
        found = await self._run(self._load, name)
        return found[0] if found else None

    async def names(self) -> list[str]:
        """Sorted CA names."""
        return await self._run(lambda: [r[0] for r in self._conn().execute("SELECT name FROM ca ORDER BY name")])

    async def register(self, name: str) -> bool:
        """An empty CA row: the CA exists, and on_init runs when a bridge first loads it."""

        def insert() -> bool:
            cur = self._conn().execute("INSERT OR IGNORE INTO ca (name, state) VALUES (?, x'')", (name,))
            return cur.rowcount == 1

        return await self._run(insert)

    async def bind_app(self, app: str) -> str | None:
        """Record the app this store belongs to, or say which other app it belongs to."""

        def bind() -> str | None:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    row = db.execute("SELECT value FROM meta WHERE key = 'app'").fetchone()
                    if row is None:
                        db.execute("INSERT INTO meta (key, value) VALUES ('app', ?)", (app,))
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreError(f"cannot record the app in store {self.path}: {exc}") from None
            return None if row is None or row[0] == app else str(row[0])

        return await self._run(bind)

    async def app(self) -> str | None:
        """The app recorded as this store's owner (None: not recorded yet)."""

        def read() -> str | None:
            db = self._conn()
            if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
                return None
            row = db.execute("SELECT value FROM meta WHERE key = 'app'").fetchone()
            return None if row is None else str(row[0])

        return await self._run(read)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("store is closed")
        return self._db

    def _load(self, name: str | None) -> list[CARecord]:
        db = self._conn()
        where, args = ("WHERE ca = ?", (name,)) if name is not None else ("", ())
        db.execute("BEGIN")
        try:
            cas = {
                n: CARecord(n, state)
                for n, state in db.execute(
                    "SELECT name, state FROM ca " + ("WHERE name = ?" if name is not None else ""), args
                )
            }
            for ca, sid, meta in db.execute(f"SELECT ca, sid, meta FROM session {where}", args):
                cas[ca].sessions[sid] = SessionRecord(meta)
            notes = db.execute(f"SELECT ca, sid, seq, args FROM note {where} ORDER BY ca, sid, seq", args)
            for ca, sid, seq, blob in notes:
                cas[ca].sessions[sid].notes.append((seq, blob))
            for ca, pos, sid, rid, reply in db.execute(
                f"SELECT ca, pos, sid, rid, reply FROM dedup {where} ORDER BY ca, pos", args
            ):
                cas[ca].dedup.append((pos, sid, rid, reply))
            if self._devices:
                for ca, data in db.execute(f"SELECT ca, data FROM device {where}", args):
                    if ca in cas:
                        cas[ca].device = data
        finally:
            db.execute("COMMIT")
        return list(cas.values())

    async def commit(self, changes: Sequence[Change]) -> frozenset[str]:
        """One SQLite transaction for the whole batch (one bridge owns the file: nothing is ever refused)."""
        await self._run(self._commit, changes)
        return frozenset()

    def commit_soon(self, changes: Sequence[Change], done: CommitDone, loop: asyncio.AbstractEventLoop) -> None:
        """Commit a batch: on the store's thread, whose outcome (the refused CAs, none, or the error) reaches
        ``done`` once on ``loop``'s thread; or, a lone change while that thread is idle, right here, calling ``done``
        before returning. Called on ``loop``'s thread."""
        if self._jobs is None:
            loop.call_soon(done, StoreError("store is closed"))
            return
        if len(changes) == 1 and self._lone_s < INLINE_MAX_S and self._busy.acquire(blocking=False):
            # a lone change (one client, or a quiet moment) with the store's thread idle: commit it right here, which
            # saves the hand-off there and back (a fifth of the CPU of a lone client's call), as long as the disk is
            # fast; on a slow one (an SD card's fsync) the loop must not wait, so the thread takes it again. Its
            # outcome goes to ``done`` at once, which saves a turn of the loop before the reply can leave.
            try:
                try:
                    self._commit(changes)
                    outcome: frozenset[str] | BaseException = _NOTHING_REFUSED
                except BaseException as exc:
                    outcome = exc
            finally:
                self._busy.release()
            done(outcome)
            return
        self._jobs.put((self._commit, (changes,), loop, partial(_commit_done, done)))

    def _commit(self, changes: Sequence[Change]) -> None:
        """The batch's rows in one pass (the later change of a CA or session wins, as bridge.store.merge would
        fold them), then one transaction with a statement only for the kinds of rows there are."""
        started = time.perf_counter()
        try:
            self._write(changes)
        finally:
            if len(changes) == 1:
                self._lone_s = time.perf_counter() - started

    def _write(self, changes: Sequence[Change]) -> None:
        """The commit itself (``_commit`` times it)."""
        db = self._conn()
        states: dict[str, bytes] = {}
        devices: dict[str, bytes] = {}
        dedups: list[Any] = []  # flat: ca, pos, sid, rid, reply of each record
        dedup_floors: dict[tuple[str, str], int] = {}
        sessions: dict[tuple[str, str], SessionWrite] | None = None
        for change in changes:
            ca = change.ca
            if change.state is not None:
                states[ca] = change.state
            if change.device is not None:
                devices[ca] = change.device
            for pos, sid, rid, reply in change.dedup:
                dedups += (ca, pos, sid, rid, reply)
            if change.dedup_floors:
                for sid, floor in change.dedup_floors.items():
                    if floor > dedup_floors.get((ca, sid), 0):
                        dedup_floors[(ca, sid)] = floor
            if change.sessions:
                if sessions is None:
                    sessions = {}
                for sid, write in change.sessions.items():
                    have = sessions.get((ca, sid))
                    if have is None:
                        have = sessions[(ca, sid)] = SessionWrite()
                    have.absorb(write)
        cur = self._cursor
        if cur is None:
            cur = self._cursor = db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            try:
                if sessions:
                    self._write_sessions(cur, sessions, states)
                elif len(states) == 1:  # a lone device's batch
                    cur.execute(_STATE.sql[1], next(iter(states.items())))
                elif states:
                    _insert(cur, _STATE, list(chain.from_iterable(states.items())))
                if devices:
                    cur.executemany("INSERT OR REPLACE INTO device (ca, data) VALUES (?, ?)", devices.items())
                if dedups:
                    _insert(cur, _DEDUP, dedups)
                if dedup_floors:
                    cur.executemany("DELETE FROM dedup WHERE ca = ? AND sid = ? AND pos < ?",
                                    [(ca, sid, floor) for (ca, sid), floor in dedup_floors.items()])
                faults.hit("in_commit")
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StoreError(f"commit failed: {exc}") from None

    @staticmethod
    def _write_sessions(cur: sqlite3.Cursor, sessions: dict[tuple[str, str], SessionWrite],
                        states: dict[str, bytes]) -> None:
        """The session rows of a batch, and its states between the purges and the rest (the order of old)."""
        purges: list[tuple[str, str]] = []
        metas: list[Any] = []  # flat, as _insert takes them
        notes: list[Any] = []
        note_floors: list[tuple[str, str, int]] = []
        for (ca, sid), w in sessions.items():
            if w.purge:
                purges.append((ca, sid))
            if w.meta is not None:
                metas += (ca, sid, w.meta)
            for seq, blob in w.notes:
                notes += (ca, sid, seq, blob)
            if w.note_floor:
                note_floors.append((ca, sid, w.note_floor))
        if purges:
            for table in ("session", "note"):
                cur.executemany(f"DELETE FROM {table} WHERE ca = ? AND sid = ?", purges)
        if states:
            _insert(cur, _STATE, list(chain.from_iterable(states.items())))
        if metas:
            _insert(cur, _META, metas)
        if notes:
            _insert(cur, _NOTE, notes)
        if note_floors:
            cur.executemany("DELETE FROM note WHERE ca = ? AND sid = ? AND seq < ?", note_floors)

    def integrity_check(self) -> list[str]:
        """Run SQLite's integrity check plus the store's own invariants (synchronously, for tools and tests)."""
        db = sqlite3.connect(self.path)
        try:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check") if r[0] != "ok"]
            orphans = db.execute(
                "SELECT count(*) FROM note n WHERE NOT EXISTS "
                "(SELECT 1 FROM session s WHERE s.ca = n.ca AND s.sid = n.sid)"
            ).fetchone()[0]
            if orphans:
                problems.append(f"{orphans} notifications without a session")
            return problems
        finally:
            db.close()


def _insert(cur: sqlite3.Cursor, insert: _Insert, values: list[Any]) -> None:
    """Insert rows given flat (``insert.columns`` values each) with one statement per _ROWS rows. SQLite steps a
    statement once for all its rows, and the store's thread lets go of the GIL and takes it back at every step,
    where ``executemany`` steps (and waits for the event loop's thread to hand back the GIL) once per row."""
    step = _ROWS * insert.columns
    if len(values) <= step:
        cur.execute(insert.sql[len(values) // insert.columns], values)
        return
    for start in range(0, len(values), step):
        chunk = values[start:start + step]
        cur.execute(insert.sql[len(chunk) // insert.columns], chunk)


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller was cancelled
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


_NOTHING_REFUSED: frozenset[str] = frozenset()


def _commit_done(done: CommitDone, result: Any, error: BaseException | None) -> None:
    done(_NOTHING_REFUSED if error is None else error)
