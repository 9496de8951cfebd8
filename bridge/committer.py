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
from bridge.store import Change, CommitSoon, Store

__all__ = ["UNDURABLE", "Committer", "Owner", "Pending", "Reject", "Retry"]

log = logging.getLogger("bridge.commit")

UNDURABLE: Final = error_body("unavailable", "Unavailable", "the call could not be made durable; retry")
# seconds a lazy change (an ack: it publishes nothing and nobody waits for it) may wait for a batch to ride with
# before it is committed on its own; losing it in a crash only means the acked notifications are sent again
LAZY_S: Final = 0.05
# Gathering: while callers are concurrent (the last batch held more than one change), a batch starts two turns of
# the event loop later than it could, so that the requests the loop's next polls read from the broker's socket run
# first and join it. At 16 devices on uvloop this took batches from 4.0 to 6.6 calls (one fdatasync and one broker
# write each) and the server's CPU per call from 85-89 to 74-77 us on 16 CAs and from 81-85 to 68-70 on one shared
# CA, the calls/s within noise and the p50 up by about 0.1 ms (yardstick runs in docs/BENCHMARKS.md; one turn: 5.7
# calls, 71-79 us). A lone caller's batch never waits. (A timer cannot do this: uvloop's timers count whole
# milliseconds.)
GATHER_TURNS: Final = 2

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
    rx: int = 0  # a reply on the device's session (iot): the wall clock (epoch ms) at admission; the first send is
    # stamped with it and the send time when delivered (bridge.protocol.stamp_reply); 0: no stamp (dedup replays)
    lazy: bool = False  # nothing waits for it (an ack): it rides with the next batch, or commits within LAZY_S


class Committer:
    """Owns the commit path; feed it with :meth:`submit` once :meth:`run` runs."""

    def __init__(
        self,
        store: Store,
        deliver: Callable[[Pending], None],
        *,
        retry: Retry,
        reject: Reject,
        max_batch: int = 4096,
        metrics: Metrics | None = None,
        end_batch: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._commit_soon = store.commit_soon if isinstance(store, CommitSoon) else None
        self._deliver = deliver
        self._resubmit = retry
        self._reject = reject
        self._max_batch = max_batch
        self._metrics = metrics or Metrics()
        self._end_batch = end_batch  # called once a batch is delivered (bridge.admission.Sink.end_batch)
        self._queue: list[Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # set while run() runs
        self._scheduled = False  # a flush is on the loop's ready queue
        self._eager = 0  # queued items that are not lazy
        self._lazy_timer: asyncio.TimerHandle | None = None  # commits lazy items that found nothing to ride with
        self._lazy_ready = False  # lazy items waited long enough: the next flush takes them even alone
        self._batch: list[Pending] | None = None  # the live items of the batch being committed
        self._started = 0.0  # perf_counter when that batch went to the store
        self._changes = 0  # how many changes that batch holds (the last one's: more than one, the next gathers)
        self._task: asyncio.Task[None] | None = None  # awaiting a store without commit_soon
        self._idle = asyncio.Event()
        self._idle.set()
        self.durable_at = 0.0  # time.perf_counter when the batch being delivered became durable (the stage metrics)

    def submit(self, pending: Pending) -> None:
        """Queue one call's effects for the next batch."""
        self._queue.append(pending)
        if self._idle.is_set():
            self._idle.clear()
        if pending.lazy:
            if self._lazy_timer is None and self._loop is not None:
                self._lazy_timer = self._loop.call_later(LAZY_S, self._lazy_due)
            return
        self._eager += 1
        if not self._scheduled and self._batch is None and self._loop is not None:
            self._scheduled = True
            if self._changes > 1:  # callers are concurrent: gather
                self._loop.call_soon(self._turn, GATHER_TURNS)
            else:
                self._loop.call_soon(self._flush)  # after the rest of this turn: its calls join the batch

    def _turn(self, left: int) -> None:
        """A scheduled flush that gathers: wait ``left`` more turns of the loop, then flush."""
        if left and self._loop is not None:
            self._loop.call_soon(self._turn, left - 1)
        else:
            self._flush()

    def _lazy_due(self) -> None:
        """Lazy items waited LAZY_S for a batch to ride with: commit them now (after the batch in flight, if any)."""
        self._lazy_timer = None
        self._lazy_ready = True
        if not self._scheduled and self._batch is None:
            self._flush()

    async def wait_idle(self) -> None:
        """Return once everything submitted so far is committed and delivered (or failed)."""
        await self._idle.wait()

    async def run(self) -> None:
        """Enable the commit path; runs until cancelled. Once cancelled, nothing more is committed or delivered."""
        loop = self._loop = asyncio.get_running_loop()
        self._scheduled = True
        self._lazy_ready = True  # whatever was submitted before, lazy or not
        loop.call_soon(self._flush)  # anything submitted before
        try:
            await loop.create_future()  # never resolved
        finally:
            self._loop = None
            if self._lazy_timer is not None:
                self._lazy_timer.cancel()
                self._lazy_timer = None
            if self._task is not None:
                self._task.cancel()

    def _flush(self) -> None:
        """Start the next batch, unless one is in flight (its completion starts the next). A queue holding only
        lazy items waits for an eager one or for their timer."""
        self._scheduled = False
        while self._batch is None and self._loop is not None and self._queue and (self._eager or self._lazy_ready):
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            if self._queue:
                self._eager = sum(not p.lazy for p in self._queue)
            else:  # everything rides with this batch
                self._eager = 0
                self._lazy_ready = False
                if self._lazy_timer is not None:
                    self._lazy_timer.cancel()
                    self._lazy_timer = None
            live = []
            changes = []
            for pending in batch:
                if pending.epoch != pending.owner.epoch:
                    self._retry(pending)  # built on state a failed commit threw away
                    continue
                live.append(pending)
                if pending.change is not None:
                    changes.append(pending.change)
            if changes:
                self._batch = live
                self._changes = len(changes)
                self._started = time.perf_counter()
                if self._commit_soon is not None:
                    self._commit_soon(changes, self._done, self._loop)
                else:
                    self._task = self._loop.create_task(self._await_commit(changes))
                return
            self.durable_at = time.perf_counter()
            self._release(live, frozenset())  # nothing to write: deliver at once, in order
        if self._batch is None and not self._queue:
            self._idle.set()

    async def _await_commit(self, changes: list[Change]) -> None:
        try:
            outcome: frozenset[str] | BaseException = await self._store.commit(changes)
        except Exception as exc:
            outcome = exc
        self._task = None
        self._done(outcome)

    def _done(self, outcome: frozenset[str] | BaseException) -> None:
        """The store's answer for the batch in flight (on the loop's thread): deliver it, start the next."""
        live, self._batch = self._batch, None
        if live is None or self._loop is None:  # stopped meanwhile: deliver nothing
            return
        if isinstance(outcome, BaseException):
            self._metrics.commit_failures += 1
            log.error("commit of %d calls failed; their CAs reload from the store", self._changes, exc_info=outcome)
            for pending in live:
                pending.owner.invalidate()
                self._fail(pending)
        else:
            self.durable_at = time.perf_counter()
            self._metrics.commit_seconds.observe(self.durable_at - self._started)
            self._metrics.commit_batch.observe(self._changes)
            faults.hit("after_commit")
            self._release(live, outcome)
        self._flush()

    def _release(self, live: list[Pending], refused: frozenset[str]) -> None:
        """Deliver a durable batch in submission order (items of refused CAs run again instead)."""
        deliver = self._deliver
        for pending in live:
            if refused and pending.owner.name in refused:  # another bridge owns this CA now (bridge.cluster)
                pending.owner.invalidate()
                self._retry(pending)
                continue
            try:
                deliver(pending)
            except Exception:  # a delivery bug must never stop the commit path
                log.exception("delivering the effects of CA %s failed", pending.owner.name)
        if self._end_batch is not None:
            try:
                self._end_batch()
            except Exception:
                log.exception("sending a delivered batch failed")
        faults.hit("after_publish")

    def _fail(self, pending: Pending) -> None:
        if pending.request is not None:
            self._reject(pending.owner.name, pending.request, pending.future, UNDURABLE)

    def _retry(self, pending: Pending) -> None:
        if pending.request is not None:
            self._resubmit(pending.owner.name, pending.request, pending.future)
