"""A Store in a dict: no durability, the same semantics. For unit tests and the Harness (``db=None``)."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.store.base import CARecord, Change, SessionRecord, SessionWrite, merge

__all__ = ["MemoryStore"]


class MemoryStore:
    """A Store in a dict: no durability, same semantics. For unit tests and the Harness."""

    def __init__(self) -> None:
        self._cas: dict[str, CARecord] = {}
        self.app: str | None = None
        self.commits = 0
        self.fail_next: Exception | None = None  # test hook: the next commit raises this

    async def open(self) -> None:
        """Nothing to open."""

    def describe(self) -> str:
        """An in-memory store has no location."""
        return "the in-memory store"

    async def close(self) -> None:
        """Nothing to close."""

    async def bind_app(self, app: str) -> str | None:
        """The first app to ask owns the store."""
        if self.app is None:
            self.app = app
        return None if self.app == app else self.app

    async def load_all(self) -> list[CARecord]:
        """Copies of every CA."""
        return [_copy(rec) for rec in self._cas.values()]

    async def load(self, name: str) -> CARecord | None:
        """A copy of one CA."""
        rec = self._cas.get(name)
        return None if rec is None else _copy(rec)

    async def names(self) -> list[str]:
        """Sorted names."""
        return sorted(self._cas)

    async def register(self, name: str) -> bool:
        """An empty row, as `ca-bridge create` makes."""
        if name in self._cas:
            return False
        self._cas[name] = CARecord(name, b"")
        return True

    async def commit(self, changes: Sequence[Change]) -> frozenset[str]:
        """Apply a batch (all or nothing: the failure hook fires before anything changes)."""
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        for change in merge(changes).values():
            rec = self._cas.get(change.ca)
            if rec is None:
                rec = self._cas[change.ca] = CARecord(change.ca, b"\xa0")
            if change.state is not None:
                rec.state = change.state
            if change.device is not None:
                rec.device = change.device
            for sid, write in change.sessions.items():
                _apply(rec, sid, write)
            rec.dedup.extend(change.dedup)
            floors = change.dedup_floors
            if floors:
                rec.dedup[:] = [d for d in rec.dedup if d[0] >= floors.get(d[1], 0)]
        self.commits += 1
        return frozenset()


def _apply(rec: CARecord, sid: str, write: SessionWrite) -> None:
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


def _copy(rec: CARecord) -> CARecord:
    return CARecord(
        rec.name,
        rec.state,
        {sid: SessionRecord(s.meta, list(s.notes)) for sid, s in rec.sessions.items()},
        list(rec.dedup),
        device=rec.device,
    )
