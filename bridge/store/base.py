"""The durable store interface and its records.

A store keeps, per CA: the state (CBOR), the dedup records of its recent requests, and per session the metadata
row and the queued notifications; and for the whole store, which app (bridge.runtime.app_identity) it belongs to.
The runtime hands it batches of :class:`Change` (one per call, many CAs) and needs each batch committed atomically:
all of it durable, or none of it. Anything transactional can implement this: SQLite (bridge.store.sqlite),
PostgreSQL (bridge.store.postgres), and a dict for tests (bridge.store.memory).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Backlog", "CARecord", "Change", "CommitDone", "CommitSoon", "SessionRecord", "SessionWrite", "Store",
           "apply_changes", "merge"]

CommitDone = Callable[[frozenset[str] | BaseException], None]  # a batch's outcome: the refused CAs, or the error


@dataclass(slots=True)
class SessionRecord:
    """One session as loaded: its meta row and queued notifications, oldest first."""

    meta: bytes
    notes: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class CARecord:
    """One CA as loaded from the store."""

    name: str
    state: bytes
    sessions: dict[str, SessionRecord] = field(default_factory=dict)
    dedup: list[tuple[int, str, str, bytes]] = field(default_factory=list)  # (pos, session, request id, reply)
    epoch: int = field(default=0, compare=False)  # clusters: the ownership epoch of this copy (Change.epoch)
    device: bytes | None = None  # the device record (bridge.device.model), None: the CA has no device data


@dataclass(slots=True)
class SessionWrite:
    """What one call (or a merged batch) changes in a session.

    ``purge`` deletes every row of the session first; with ``meta`` None after a purge the session is gone.
    """

    meta: bytes | None = None
    notes: list[tuple[int, bytes]] = field(default_factory=list)
    note_floor: int = 0
    purge: bool = False

    def absorb(self, later: SessionWrite) -> None:
        """Fold a later write of the same session into this one."""
        if later.purge:
            self.purge = True
            self.meta = None
            self.notes.clear()
            self.note_floor = 0
        if later.meta is not None:
            self.meta = later.meta
        self.notes.extend(later.notes)
        self.note_floor = max(self.note_floor, later.note_floor)


@dataclass(slots=True)
class Change:
    """Everything one committed call changes in one CA.

    Dedup records are numbered per CA (``pos``) and kept per session: ``dedup_floors`` maps a session id to the
    position below which that session's records are deleted. They are not in the session's rows, so purging (or
    collecting) a session never forgets which of its requests ran.
    """

    ca: str
    state: bytes | None = None  # None: unchanged
    sessions: dict[str, SessionWrite] = field(default_factory=dict)
    dedup: list[tuple[int, str, str, bytes]] = field(default_factory=list)
    dedup_floors: dict[str, int] = field(default_factory=dict)  # session -> delete its records below this position
    epoch: int = 0  # clusters: commit only if the CA's ownership epoch is still this one (0: don't check)
    device: bytes | None = None  # the device record (bridge.device.model) to write; None: unchanged

    def empty(self) -> bool:
        """True if there is nothing to write."""
        return self.state is None and not self.sessions and not self.dedup and self.device is None


def merge(changes: Iterable[Change]) -> dict[str, Change]:
    """Fold a batch into one Change per CA: the last state wins, session writes are absorbed in order."""
    merged: dict[str, Change] = {}
    for change in changes:
        into = merged.get(change.ca)
        if into is None:
            into = merged[change.ca] = Change(change.ca)
        if change.state is not None:
            into.state = change.state
        if change.device is not None:
            into.device = change.device
        into.epoch = change.epoch
        into.dedup.extend(change.dedup)
        for sid, floor in change.dedup_floors.items():
            into.dedup_floors[sid] = max(into.dedup_floors.get(sid, 0), floor)
        for sid, write in change.sessions.items():
            have = into.sessions.get(sid)
            if have is None:
                have = into.sessions[sid] = SessionWrite()
            have.absorb(write)
    return merged


def apply_changes(records: dict[str, CARecord], changes: Iterable[Change]) -> None:
    """Fold committed changes into CAs as loaded, adding the CAs they create: what a commit does to a store, done
    in memory (bridge.store.memory; a read-only view of SQLite with its redo log, bridge.store.sqlite)."""
    for change in merge(changes).values():
        rec = records.get(change.ca)
        if rec is None:
            rec = records[change.ca] = CARecord(change.ca, b"\xa0")
        if change.state is not None:
            rec.state = change.state
        if change.device is not None:
            rec.device = change.device
        for sid, write in change.sessions.items():
            _apply_session(rec, sid, write)
        rec.dedup.extend(change.dedup)
        floors = change.dedup_floors
        if floors:
            rec.dedup[:] = [d for d in rec.dedup if d[0] >= floors.get(d[1], 0)]


def _apply_session(rec: CARecord, sid: str, write: SessionWrite) -> None:
    if write.purge:
        rec.sessions.pop(sid, None)
    if write.meta is None and sid not in rec.sessions:
        return
    srec = rec.sessions.get(sid)
    if srec is None:
        srec = rec.sessions[sid] = SessionRecord(write.meta or b"")
    elif write.meta is not None:
        srec.meta = write.meta
    srec.notes.extend(write.notes)
    srec.notes[:] = [n for n in srec.notes if n[0] >= write.note_floor]


class Store(Protocol):
    """What the runtime needs from durable storage."""

    async def open(self) -> None:
        """Create or open the store (and its schema)."""

    async def bind_app(self, app: str) -> str | None:
        """Record ``app`` as the app this store belongs to, unless one is recorded already (a store from before
        the record existed is adopted by the first app that opens it). Returns the recorded app when it is another
        one (nothing is changed then), else None."""

    def describe(self) -> str:
        """Where the data lives, for messages: a file path, or a URL without its password."""

    async def close(self) -> None:
        """Release everything; further calls fail."""

    async def load_all(self) -> list[CARecord]:
        """Every CA, for start-up."""

    async def load(self, name: str) -> CARecord | None:
        """One CA, or None if it was never committed."""

    async def names(self) -> list[str]:
        """Every CA name, sorted."""

    async def register(self, name: str) -> bool:
        """Create an empty CA row (on_init runs on first load); False if the CA exists already."""

    async def commit(self, changes: Sequence[Change]) -> frozenset[str]:
        """Make a batch durable atomically, or raise StoreError having changed nothing.

        Returns the CAs whose changes were refused because this bridge no longer owns them (only a store shared
        by several bridges refuses anything; see bridge.store.membership): none of theirs is written, all else is.
        """


@runtime_checkable
class CommitSoon(Protocol):
    """Optional, for a store with a thread of its own (bridge.store.sqlite): commit without an awaitable in
    between, so that a batch costs one hand-off to that thread and one back (bridge.committer uses it if there)."""

    def commit_soon(self, changes: Sequence[Change], done: CommitDone, loop: asyncio.AbstractEventLoop) -> None:
        """Like :meth:`Store.commit`, but without waiting: call ``done`` exactly once on ``loop``'s thread with what
        commit would return or raise, later or (a commit made on the spot) before returning. Called on ``loop``'s
        thread."""


@runtime_checkable
class Backlog(Protocol):
    """Optional, for a store that makes commits durable before it files them (bridge.store.sqlite's redo log): how
    far behind the filing is, for the metrics."""

    def unapplied(self) -> int:
        """Committed batches not filed yet (a number that keeps growing means the filing fails: the log says why)."""
