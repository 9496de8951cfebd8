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
from typing import Any, Final, Protocol

from bridge import faults
from bridge.metrics import Metrics
from bridge.protocol import Inbound, error_body
from bridge.store import Change, Store

__all__ = ["UNDURABLE", "Committer", "Owner", "Pending", "Reject", "Retry"]

log = logging.getLogger("bridge.commit")

UNDURABLE: Final = error_body("unavailable", "Unavailable", "the call could not be made durable; retry")

Retry = Callable[[str, Inbound, "asyncio.Future[Any] | None"], None]  # submit a request again: (CA, request, future)
Reject = Callable[[str, Inbound, "asyncio.Future[Any] | None", dict[str, Any]], None]  # answer a request that fails


class Owner(Protocol):
    """What the committer needs of the CA a :class:`Pending` belongs to (bridge.actor.Actor)."""

    @property
    def name(self) -> str: ...

    @property
    def epoch(self) -> int:
        """Bumped whenever the CA's in-memory copy is thrown away: effects built in an older epoch are stale."""

    def invalidate(self) -> None:
        """A commit of this CA failed or was refused: reload it before its next item."""


@dataclass(slots=True, eq=False, kw_only=True)
class Pending:
    """One item's effects waiting for durability: the store change, then what to publish and whom to tell."""

    owner: Owner
    epoch: int  # the owner's epoch when the effects were built
    change: Change | None  # None: nothing to write (a dedup hit, an answer with nothing to fence)
    sends: list[tuple[str, bytes]] = field(default_factory=list)  # (session, payload), in order
    notes: int = 0  # notifications among ``sends``
    future: asyncio.Future[Any] | None = None  # told ``outcome`` once delivered (the Harness)
    outcome: bytes | BaseException | None = None  # the reply payload, or the AppError raised
    # the request to run again from the start if its effects were built on a copy of the CA that turned out stale
    # (a failed earlier commit, or, in a cluster, a CA another bridge owns now): it never ran as far as anyone
    # knows. If it is never committed, it is answered through the one rejection path (bridge.admission).
    request: Inbound | None = None
    result: str = ""  # a call's outcome for the metrics: ok, app or internal ("" for anything that is no call)
    started: float = 0.0  # a call's stage times (time.perf_counter, bridge.metrics.STAGES): its CA started it ...
    submitted: float = 0.0  # ... and handed it here


class Committer:
    """Owns the commit loop; feed it with :meth:`submit`."""

    def __init__(
        self,
        store: Store,
        deliver: Callable[[Pending], None],
        *,
        retry: Retry,
        reject: Reject,
        max_batch: int = 4096,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._deliver = deliver
        self._resubmit = retry
        self._reject = reject
        self._max_batch = max_batch
        self._metrics = metrics or Metrics()
        self._queue: list[Pending] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.durable_at = 0.0  # time.perf_counter when the batch being delivered became durable (the stage metrics)

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
            if pending.epoch == pending.owner.epoch:
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
                    pending.owner.invalidate()
                    self._fail(pending)
                return
            self.durable_at = time.perf_counter()
            self._metrics.commit_seconds.observe(self.durable_at - started)
            self._metrics.commit_batch.observe(len(changes))
            faults.hit("after_commit")
        else:
            refused = frozenset()
        for pending in live:
            if refused and pending.owner.name in refused:  # another bridge owns this CA now (bridge.cluster)
                pending.owner.invalidate()
                self._retry(pending)
                continue
            try:
                self._deliver(pending)
            except Exception:  # a delivery bug must never stop the commit loop
                log.exception("delivering the effects of CA %s failed", pending.owner.name)
        faults.hit("after_publish")

    def _fail(self, pending: Pending) -> None:
        if pending.request is not None:
            self._reject(pending.owner.name, pending.request, pending.future, UNDURABLE)

    def _retry(self, pending: Pending) -> None:
        if pending.request is not None:
            self._resubmit(pending.owner.name, pending.request, pending.future)
