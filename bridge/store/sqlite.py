"""The default durable store: one SQLite file (WAL) behind a redo log, synchronous=FULL.

A batch of many CAs' calls is one record of the redo log (bridge.store.redo): one write and one fdatasync however
many calls it holds, and about half the CPU of a SQLite transaction. The store's thread applies the records to the
SQLite file every APPLY_S, many batches in one transaction that also records the last one it holds; loading a CA
with changes not applied yet applies them first, so a load always sees every commit. After a crash, opening the
store applies what the log holds beyond that mark.

Two threads: the log's (appends, fed by a queue; while it is idle and the disk is fast, a batch is appended on the
caller's thread instead) and the database's (the connection is never shared: opening, loads, and the
applications). Each job hands its result back with one ``call_soon_threadsafe``; a commit
(:meth:`SQLiteStore.commit_soon`) calls the committer's callback directly from there, no futures in between.
Stores opened by tools (``exclusive=False`` or read-only) have no log writer: ``ca-bridge create`` commits straight
to SQLite, and their loads add the log's records not applied yet to what they read.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
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

import cbor2

from bridge import faults
from bridge.errors import ConfigError, StoreError
from bridge.store.base import CARecord, Change, CommitDone, SessionRecord, SessionWrite, apply_changes
from bridge.store.redo import LogReader, RedoLog, read_records

__all__ = ["SQLiteStore"]

log = logging.getLogger("bridge.store")

T = TypeVar("T")

# A job for the database's thread: run fn(*args) there, then call reply(result, error) on the loop's thread.
Reply = Callable[[Any, "BaseException | None"], None]
Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.AbstractEventLoop, Reply]
_KICK = "kick"  # to the database's thread: the log has records to apply (within APPLY_S)
_APPLY = "apply"  # to the database's thread: apply the log's records now
Append = tuple[Sequence[Change], asyncio.AbstractEventLoop, CommitDone]  # a job for the log's thread

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
SCHEMA_VERSION = 5
# Version 1 kept dedup records per session (PRIMARY KEY (ca, sid, pos)); version 2 numbers them per CA so that a
# collected session does not take them along. Upgrading from 1 drops the old records (at worst a retry in flight
# during the upgrade runs again). Version 3 adds the meta table (the app the store belongs to): nothing to convert.
# Version 4 adds the device table (bridge.device: one row per CA that has device data): nothing to convert.
# Version 5 commits through the redo log (bridge.store.redo), whose mark is the meta row 'redo': nothing to convert,
# but a bridge of version 4 must not open it (it would not apply the log's records after a crash).
MIGRATIONS = {1: "DROP TABLE dedup;"}
INLINE_MAX_S = 0.002  # append on the caller's thread while an append takes less than this (seconds)
# The redo log's records are applied to the SQLite file this long after the first of them, at most, or as soon as
# APPLY_MAX batches wait. Loads wait behind an application (one thread owns the connection), so it must stay short:
# at 0.5 s the applications of a first contact with 10,000 CAs took 20-180 ms each and the contact took 5.1-6.6 s
# (once 17 s) where at 0.05 s it took 3.5-4.2 s (benchmarks/lazy.py), for 6 us less CPU per call at 16 devices
# (docs/BENCHMARKS.md). Every reader sees the records before that (loads apply them first, the tools read the
# log), and recovery after a crash replays at most this much.
APPLY_S = 0.05
APPLY_MAX = 512
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
        self._jobs: queue.SimpleQueue[Job | str | None] | None = None  # the database thread's queue (None: closed)
        self._thread: threading.Thread | None = None
        self._lock: int | None = None  # the descriptor holding the flock on <db>.lock
        self._append_s = 0.0  # how long the last append took (commit_soon: on the caller's thread while fast)
        self._devices = True  # the file has the device table (a store of schema 3 opened read-only has not)
        # The redo log (a writing bridge's store only) and what is committed there but not applied to SQLite yet:
        # (sequence number, batch), in order. The log's thread appends; the database's thread takes them.
        self._redo: RedoLog | None = None
        self._appends: queue.SimpleQueue[Append | None] | None = None  # the log thread's queue
        self._redo_thread: threading.Thread | None = None
        self._busy = threading.Lock()  # held while a batch is appended (on the log's thread, or inline: commit_soon)
        self._pending: list[tuple[int, Sequence[Change]]] = []
        self._pending_lock = threading.Lock()
        self._mark = 0  # a tool's store: the mark as of its last load
        self._log = LogReader(self.path)  # a tool's store: the log's records beyond the mark
        self._has_meta = True  # the file has the meta table (a store of schema 2 opened read-only has not)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store's thread and wait for its result."""
        if self._jobs is None:
            raise StoreError("store is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((fn, args, loop, partial(_resolve, future)))
        return await future

    def _serve(self, jobs: queue.SimpleQueue[Job | str | None]) -> None:
        """The database's thread: run jobs in order, each result going back to its loop with one wake-up; and apply
        the redo log's records APPLY_S after the first of them arrives (or at once when told to)."""
        due: float | None = None  # when to apply the records waiting
        while True:
            try:
                job = jobs.get(timeout=None if due is None else max(0.0, due - time.monotonic()))
            except queue.Empty:
                job = _APPLY
            if job is None:
                return
            if isinstance(job, str):
                if job == _APPLY:
                    due = None if self._apply_pending() else time.monotonic() + APPLY_S
                elif due is None:
                    due = time.monotonic() + APPLY_S
                continue
            fn, args, loop, reply = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:  # handed to the loop, which decides
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
                loop.call_soon_threadsafe(reply, result, error)

    def _serve_appends(self, appends: queue.SimpleQueue[Append | None]) -> None:
        """The log's thread: append batches in order; each outcome goes to its ``done`` with one wake-up."""
        while (job := appends.get()) is not None:
            changes, loop, done = job
            with self._busy:
                outcome = self._append_outcome(changes)
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(done, outcome)

    async def open(self) -> None:
        """Open the file on the database's thread: creating it and the schema, or upgrading it (read-only: as it is)."""
        if self.exclusive:
            self._lock = _take_lock(self.path)  # before anything is read or written; quick, never waits
        jobs: queue.SimpleQueue[Job | str | None] = queue.SimpleQueue()
        thread = threading.Thread(target=self._serve, args=(jobs,), name="sqlite-store", daemon=True)
        thread.start()
        self._jobs, self._thread = jobs, thread
        try:
            await self._run(self._open_read_only if self.read_only else self._open)
            if self.exclusive:
                await self._run(self._recover)
        except BaseException:
            self._stop()
            self._release_lock()
            raise
        if self._redo is not None:
            appends: queue.SimpleQueue[Append | None] = queue.SimpleQueue()
            self._redo_thread = threading.Thread(target=self._serve_appends, args=(appends,), name="sqlite-redo",
                                                 daemon=True)
            self._redo_thread.start()
            self._appends = appends

    def _stop(self) -> None:
        if self._appends is not None:
            self._appends.put(None)
        if self._redo_thread is not None:
            self._redo_thread.join()
        self._appends = self._redo_thread = None
        if self._jobs is not None:
            self._jobs.put(None)
        if self._thread is not None:
            self._thread.join()
        self._jobs = self._thread = None
        if self._redo is not None:
            self._redo.close()
            self._redo = None

    def _recover(self) -> None:
        """Apply what the redo log holds beyond the database's mark (a bridge that stopped without applying it: a
        crash), then start the log over."""
        mark = self._read_mark(self._conn())
        records, highest, gap = read_records(self.path, mark)
        if gap:
            log.warning("the redo log of %s has a gap after record %d (a power loss with synchronous=NORMAL?): "
                        "the records after it are dropped", self.path, records[-1][0] if records else mark)
        if records:
            self._write([c for _, batch in records for c in batch], mark=records[-1][0])
            log.info("applied %d committed batches from the redo log of %s", len(records), self.path)
        redo = RedoLog(self.path, flush=self.synchronous != "NORMAL")
        try:
            redo.start(highest)
        except OSError as exc:
            redo.close()
            raise StoreError(f"cannot open the redo log of {self.path}: {exc}") from None
        if highest != (records[-1][0] if records else mark):  # numbers skipped: the mark follows
            self._write([], mark=highest)
        self._redo = redo

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
        self._has_meta = "meta" in tables
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
            # A multi-row INSERT inside a transaction keeps a statement journal, so that a failing row can undo its
            # statement alone. Past 64 KiB SQLite spills it to a temporary file that it creates, writes and deletes
            # again: at 16 devices that was 9 pwrites per call on the database's thread, more than all its other
            # work. In memory it costs a few pages of RAM for the length of one statement.
            db.execute("PRAGMA temp_store=MEMORY")
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
        appends, self._appends = self._appends, None  # from now on commit_soon answers "store is closed"
        if appends is not None:  # appends already queued are made first (their outcomes still reach the loop)
            appends.put(None)
            assert self._redo_thread is not None
            await asyncio.to_thread(self._redo_thread.join)
            self._redo_thread = None
        try:
            await self._run(self._close)
        finally:
            self._stop()  # the thread has nothing left to do: joining it does not block
            self._release_lock()  # after the connection is closed: the next bridge finds a quiet file

    def _close(self) -> None:
        if self._apply_pending() and self._redo is not None:  # a clean stop leaves nothing for recovery to read
            with contextlib.suppress(OSError):
                self._redo.clear()
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
        return await self._run(self._load_applied, None)

    async def load(self, name: str) -> CARecord | None:
        """One CA, or None."""
        found = await self._run(self._load_applied, name)
        return found[0] if found else None

    async def names(self) -> list[str]:
        """Sorted CA names."""
        return await self._run(self._names)

    def _names(self) -> list[str]:
        db = self._conn()
        if self._redo is not None:
            self._applied_for(None)
            return [r[0] for r in db.execute("SELECT name FROM ca ORDER BY name")]
        db.execute("BEGIN")
        try:
            names = {r[0] for r in db.execute("SELECT name FROM ca")}
            mark = self._read_mark(db)
        finally:
            db.execute("COMMIT")
        names.update(self._log.read(mark)[0])
        return sorted(names)

    def _read_mark(self, db: sqlite3.Connection) -> int:
        """The last redo record applied (0: none, or a store from before the redo log)."""
        row = db.execute("SELECT value FROM meta WHERE key = 'redo'").fetchone() if self._has_meta else None
        return int(row[0]) if row is not None else 0

    async def register(self, name: str) -> bool:
        """An empty CA row: the CA exists, and on_init runs when a bridge first loads it."""

        def insert() -> bool:
            if self._redo is not None:
                self._applied_for(name)
            elif self._load_applied(name):  # a tool's store: the CA may be in the log of a bridge that stopped
                return False
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

    def _load_applied(self, name: str | None) -> list[CARecord]:
        """Load with every commit in view: the bridge's store first applies the log's records of the CA (all of
        them for every CA); a tool's adds the log's records beyond the mark it read to what it read."""
        if self._redo is not None:
            self._applied_for(name)
            return self._load(name)
        for _ in range(5):
            cas = self._load(name)
            by_ca, gap = self._log.read(self._mark)
            if not gap:  # else the bridge reused a file between the two reads: read both again
                break
        records_of = {rec.name: rec for rec in cas}
        if name is None:
            apply_changes(records_of, (c for changes in by_ca.values() for c in changes))
        elif name in by_ca:
            apply_changes(records_of, by_ca[name])
        return sorted(records_of.values(), key=lambda rec: rec.name) if name is None else list(records_of.values())

    def _load(self, name: str | None) -> list[CARecord]:
        db = self._conn()
        where, args = ("WHERE ca = ?", (name,)) if name is not None else ("", ())
        db.execute("BEGIN")
        try:
            if self._redo is None:  # a tool's store: the log's records beyond this mark are added to what it reads
                self._mark = self._read_mark(db)
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

    @property
    def applied(self) -> int:
        """The last redo record applied to the SQLite file (its mark in the meta table); 0 without a log."""
        return self._redo.applied if self._redo is not None else 0

    def unapplied(self) -> int:
        """Batches in the redo log not applied to the SQLite file yet (bridge.store.Backlog)."""
        return len(self._pending)

    async def flush(self) -> None:
        """Apply the redo log's records to the SQLite file now. They are durable already; this is for readers of
        the file alone (a copy of it, or a program that does not read the log)."""
        if self._redo is not None and not await self._run(self._apply_pending):
            raise StoreError(f"cannot apply the redo log to {self.path} (the log says why)")

    async def commit(self, changes: Sequence[Change]) -> frozenset[str]:
        """Commit a batch (one bridge owns the file: nothing is ever refused)."""
        if self._redo is None:  # a tool's store: straight to SQLite
            await self._run(self._write, changes)
            return _NOTHING_REFUSED
        loop = asyncio.get_running_loop()
        future: asyncio.Future[frozenset[str]] = loop.create_future()
        self.commit_soon(changes, partial(_settle, future), loop)
        return await future

    def commit_soon(self, changes: Sequence[Change], done: CommitDone, loop: asyncio.AbstractEventLoop) -> None:
        """Commit a batch: on the log's thread, whose outcome (the refused CAs, none, or the error) reaches ``done``
        once on ``loop``'s thread; or, while that thread is idle and appends are fast, right here, calling ``done``
        before returning. Called on ``loop``'s thread."""
        if self._appends is None:
            if self._jobs is None or self._redo is not None:  # (the log's thread stopped: closing)
                loop.call_soon(done, StoreError("store is closed"))
            else:  # a tool's store: straight to SQLite
                self._jobs.put((self._write, (changes,), loop, partial(_commit_done, done)))
            return
        if self._append_s < INLINE_MAX_S and self._busy.acquire(blocking=False):
            # the log's thread idle: append right here. That saves the hand-off there and back, and above all the
            # log's thread waiting for the GIL after its fdatasync while the loop runs Python (at 16 devices a
            # thread's append took 0.68 ms where an append here takes 0.26; docs/BENCHMARKS.md). On a slow disk (an
            # SD card's fsync) the loop must not wait, so the thread takes the appends again. The outcome goes to
            # ``done`` at once, which saves a turn of the loop before the replies can leave.
            try:
                outcome = self._append_outcome(changes)
            finally:
                self._busy.release()
            done(outcome)
            return
        self._appends.put((changes, loop, done))

    def _append_outcome(self, changes: Sequence[Change]) -> frozenset[str] | BaseException:
        """Append a batch (holding ``_busy``); what its ``done`` is told: nothing refused, or the error."""
        try:
            self._append(changes)
        except BaseException as exc:  # handed to the loop, which decides
            return exc
        return _NOTHING_REFUSED

    def _append(self, changes: Sequence[Change]) -> None:
        """Make a batch durable in the redo log (holding ``_busy``), and queue it to be applied to SQLite."""
        redo, jobs = self._redo, self._jobs
        if redo is None or jobs is None:
            raise StoreError("store is closed")
        started = time.perf_counter()
        try:
            seq = redo.append(changes)
        except (OSError, cbor2.CBOREncodeError) as exc:  # the disk, or a value that cannot be stored
            raise StoreError(f"commit failed: {exc}") from None
        finally:
            self._append_s = time.perf_counter() - started
        with self._pending_lock:
            self._pending.append((seq, changes))
            waiting = len(self._pending)
        if waiting == 1:
            jobs.put(_KICK)
        elif waiting == APPLY_MAX:
            jobs.put(_APPLY)

    def _applied_for(self, name: str | None) -> None:
        """Before reading the SQLite file for ``name`` (None: every CA): apply the log's records it needs, or raise
        (a read without them would miss commits)."""
        if not self._apply_pending(name):
            raise StoreError(f"cannot read {self.path}: applying its redo log failed (the log says why)")

    def _apply_pending(self, name: str | None = None) -> bool:
        """On the database's thread: apply the redo log's records waiting (``name``: only if one of them changes
        that CA) in one transaction with their mark, which frees their place in the log. False if that failed
        (they wait for the next try, and recovery has them meanwhile)."""
        with self._pending_lock:
            batches = self._pending
            if not batches or (name is not None and not any(c.ca == name for _, b in batches for c in b)):
                return True
            self._pending = []
        mark = batches[-1][0]
        try:
            self._write([c for _, batch in batches for c in batch], mark=mark)
        except BaseException:
            with self._pending_lock:
                self._pending[:0] = batches
            log.exception("applying %d committed batches to %s failed; they stay in the redo log and are applied "
                          "again later", len(batches), self.path)
            return False
        if self._redo is not None:
            self._redo.applied = mark
        return True

    def _write(self, changes: Sequence[Change], mark: int = 0) -> None:
        """One transaction with a batch's rows, in one pass (the later change of a CA or session wins, as
        bridge.store.merge would fold them), with a statement only for the kinds of rows there are; ``mark``: and
        the last redo record it applies."""
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
                if dedups and dedup_floors and len(changes) > 1:  # many batches applied: skip what they delete
                    dedups = [v for i in range(0, len(dedups), 5) if dedups[i + 1] >= dedup_floors.get(
                        (dedups[i], dedups[i + 2]), 0) for v in dedups[i:i + 5]]
                if dedups:
                    _insert(cur, _DEDUP, dedups)
                if dedup_floors:
                    cur.executemany("DELETE FROM dedup WHERE ca = ? AND sid = ? AND pos < ?",
                                    [(ca, sid, floor) for (ca, sid), floor in dedup_floors.items()])
                if mark:
                    cur.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('redo', ?)", (str(mark),))
                    faults.hit("in_apply")  # killed here, the transaction is lost and recovery replays the log
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
                if seq >= w.note_floor:  # (many batches applied at once: one may drop what another queued)
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


def _settle(future: asyncio.Future[Any], outcome: frozenset[str] | BaseException) -> None:
    """A commit's outcome (a CommitDone's argument) into the future that ``commit`` awaits."""
    if isinstance(outcome, BaseException):
        _resolve(future, None, outcome)
    else:
        _resolve(future, outcome, None)


def _commit_done(done: CommitDone, result: Any, error: BaseException | None) -> None:
    done(_NOTHING_REFUSED if error is None else error)
