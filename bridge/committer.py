"""Group commit: one durable store transaction for everything the CAs ran since the last one.

CAs hand over a :class:`Pending` as soon as a call has run and go on with their next call; the committer writes
whole batches and only then releases each batch's replies and notifications, in submission order. So nothing
leaves before it is durable, and a busy CA is not capped by the commit latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bridge import faults
from bridge.metrics import Metrics
from bridge.store import Change, Store

if TYPE_CHECKING:
    from bridge.actor import Actor

__all__ = ["Committer", "Pending"]

log = logging.getLogger("bridge.commit")


@dataclass(slots=True, eq=False)
class Pending:
    """One call's effects waiting for durability: the store change, then what to publish and whom to tell."""

    actor: Actor
    epoch: int
    change: Change | None
    sends: list[tuple[str, bytes]] = field(default_factory=list)
    future: asyncio.Future[Any] | None = None
    outcome: bytes | BaseException | None = None  # for ``future``: the reply payload, or the AppError raised
    on_fail: Callable[[], None] | None = None  # what to tell the caller if this is never committed
    # run the request again from the start: its effects were built on a copy of the CA that turned out stale (a
    # failed earlier commit, or, in a cluster, a CA another bridge owns now), so it never ran as far as anyone knows
    retry: Callable[[], None] | None = None
    method: str = ""  # a call's method, for the metrics ("" for hooks, acks, syncs)
    result: str = ""  # a call's outcome: ok, app or internal
    at: float = 0.0  # a call's admission time (time.monotonic)
    notes: int = 0  # notifications among ``sends``
    session: str = ""  # a call's session and request id (the dashboard's recent calls)
    request: str = ""


class Committer:
    """Owns the commit loop; feed it with :meth:`submit`."""

    def __init__(
        self,
        store: Store,
        deliver: Callable[[Pending], None],
        *,
        max_batch: int = 4096,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._deliver = deliver
        self._max_batch = max_batch
        self._metrics = metrics or Metrics()
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, pending: Pending) -> None:
        """Queue one call's effects for the next batch."""
        self._queue.append(pending)
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once everything submitted so far is committed and delivered (or failed)."""
        await self._idle.wait()

    async def run(self) -> None:
        """The commit loop; runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._commit(batch)
            if not self._queue:
                self._idle.set()

    async def _commit(self, batch: list[Pending]) -> None:
        live = []
        for pending in batch:
            if pending.epoch == pending.actor.epoch:
                live.append(pending)
            else:
                self._retry(pending)  # built on state a failed commit threw away
        changes = [p.change for p in live if p.change is not None]
        if changes:
            started = time.perf_counter()
            try:
                refused = await self._store.commit(changes)
            except Exception:
                self._metrics.commit_failures += 1
                log.exception("commit of %d calls failed; their CAs reload from the store", len(changes))
                for pending in live:
                    pending.actor.invalidate()
                    self._fail(pending)
                return
            self._metrics.commit_seconds.observe(time.perf_counter() - started)
            self._metrics.commit_batch.observe(len(changes))
            faults.hit("after_commit")
        else:
            refused = frozenset()
        for pending in live:
            if refused and pending.actor.name in refused:  # another bridge owns this CA now (bridge.cluster)
                pending.actor.invalidate()
                self._retry(pending)
                continue
            try:
                self._deliver(pending)
            except Exception:  # a delivery bug must never stop the commit loop
                log.exception("delivering the effects of CA %s failed", pending.actor.name)
        faults.hit("after_publish")

    @staticmethod
    def _fail(pending: Pending) -> None:
        if pending.on_fail is not None:
            pending.on_fail()

    @classmethod
    def _retry(cls, pending: Pending) -> None:
        if pending.retry is not None:
            pending.retry()
        else:
            cls._fail(pending)
