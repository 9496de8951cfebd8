"""A Store in a dict: no durability, the same semantics. For unit tests and the Harness (``db=None``)."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.store.base import CARecord, Change, SessionRecord, apply_changes

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
        apply_changes(self._cas, changes)
        self.commits += 1
        return frozenset()


def _copy(rec: CARecord) -> CARecord:
    return CARecord(
        rec.name,
        rec.state,
        {sid: SessionRecord(s.meta, list(s.notes)) for sid, s in rec.sessions.items()},
        list(rec.dedup),
        device=rec.device,
    )
