"""The tasks that do the runtime's work: CA workers, lookups and claims. One place counts the busy ones (so that
the runtime can wait until all work is done) and owns them all (so that closing cancels every one).

A CA's worker is a Task that drains its mailbox (bridge.actor). Under a closed-loop device the mailbox is empty
after every call, and a new Task per call costs more than the call's own bookkeeping. So a worker whose mailbox ran
empty *parks*: it waits on a future, counts as idle, and the next request wakes it (one future, no new Task). A
sweep every ``linger`` seconds stops the workers that stayed parked through a whole interval, so an idle CA keeps
its worker between one and two intervals and a quiet bridge holds no parked tasks at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Final

__all__ = ["LINGER", "Workers"]

LINGER: Final = 1.0  # seconds: a parked worker is stopped after between one and two of these


class Workers:
    """Owns the runtime's work tasks and counts the busy ones; :attr:`idle` is set while none is busy."""

    def __init__(self, linger: float = LINGER) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.closing = False  # no more parking: a worker whose mailbox runs empty ends
        self.linger = linger  # seconds; 0: a worker ends when its mailbox runs empty (a Task per burst)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._young: dict[object, asyncio.Future[bool]] = {}  # parked since the last sweep
        self._old: dict[object, asyncio.Future[bool]] = {}  # parked before it: stopped by the next sweep
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._busy_workers: set[asyncio.Task[Any]] = set()  # CA workers counted in ``busy`` (not parked)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a task that counts as busy for its whole life (a lookup, a claim)."""
        task = self._start(coro, name)
        task.add_done_callback(self._spawned_done)

    def _spawned_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        self.leave()

    def start_worker(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any]:
        """Run a CA's worker: busy from now until it parks (:meth:`park`) or ends, however it ends (even cancelled
        before its first step)."""
        task = self._start(coro, name)
        self._busy_workers.add(task)
        task.add_done_callback(self._worker_done)
        return task

    def _worker_done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task in self._busy_workers:  # ended while busy (cancelled): busy no more
            self._busy_workers.discard(task)
            self.leave()

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[Any]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        task = self._loop.create_task(coro, name=name)
        self.tasks.add(task)
        self.busy += 1
        self.idle.clear()
        return task

    def leave(self) -> None:
        """One busy task is no longer busy."""
        self.busy -= 1
        if not self.busy:
            self.idle.set()

    def park(self, key: object, task: asyncio.Task[Any]) -> asyncio.Future[bool] | None:
        """Worker ``task`` ran out of work: it is idle now. Returns the future to wait on (True: woken with work;
        False: stopped by a sweep, so end), or None when it must end at once (closing, or no lingering)."""
        self._busy_workers.discard(task)
        self.leave()
        loop = self._loop
        if self.closing or self.linger <= 0 or loop is None:
            return None
        wake: asyncio.Future[bool] = loop.create_future()
        self._young[key] = wake
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self.linger, self._sweep)
        return wake

    def wake(self, key: object, wake: asyncio.Future[bool], task: asyncio.Task[Any]) -> None:
        """Give parked worker ``task`` (not stopped yet: ``wake`` is not done) work again; busy from now."""
        if self._young.pop(key, None) is None:
            self._old.pop(key, None)
        self._busy_workers.add(task)
        self.busy += 1
        self.idle.clear()
        wake.set_result(True)

    def _sweep(self) -> None:
        stop, self._old, self._young = self._old, self._young, {}
        for wake in stop.values():
            if not wake.done():
                wake.set_result(False)
        loop = self._loop
        self._sweep_handle = loop.call_later(self.linger, self._sweep) if self._old and loop is not None else None

    def stop_parked(self) -> None:
        """Stop every parked worker now (closing)."""
        self.closing = True
        for parked in (self._old, self._young):
            for wake in parked.values():
                if not wake.done():
                    wake.set_result(False)
            parked.clear()
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
