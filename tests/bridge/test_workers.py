"""A CA's worker parks when its mailbox runs empty and the next request wakes it (no new Task per call); parked
workers count as idle, stop after one or two linger intervals, and closing ends them all (bridge.workers)."""

from __future__ import annotations

import asyncio

from bridge import CA, method
from bridge.testing import Harness


class Worker(CA):
    async def on_init(self) -> None:
        self.state["n"] = 0

    @method
    async def incr(self) -> int:
        self.state["n"] += 1
        return self.state["n"]

    @method
    async def task_name(self) -> str:
        task = asyncio.current_task()
        return task.get_name() if task is not None else ""



def _workers(h: Harness) -> set[asyncio.Task]:
    assert h.runtime is not None
    return {t for t in h.runtime.workers.tasks if not t.done()}


async def test_consecutive_calls_reuse_the_parked_worker():
    async with Harness(Worker) as h:
        await h.call("w", "s", "incr")
        assert h.runtime.workers.busy == 0  # parked: idle, so wait_idle and settle do not wait for it
        (task,) = _workers(h)
        for n in range(2, 7):
            assert await h.call("w", "s", "incr") == n
        assert _workers(h) == {task}
        assert await h.call("w", "s", "task_name") == "ca[w]" == task.get_name()
        await h.settle()  # returns although a worker is parked


async def test_a_parked_worker_stops_after_the_linger_and_a_new_one_starts():
    async with Harness(Worker) as h:
        h.runtime.workers.linger = 0.05
        await h.call("w", "s", "incr")
        (task,) = _workers(h)
        await asyncio.wait_for(asyncio.shield(task), 2.0)  # stopped by the sweep after one or two intervals
        assert _workers(h) == set()
        assert h.runtime.workers.busy == 0
        assert await h.call("w", "s", "incr") == 2
        (fresh,) = _workers(h)
        assert fresh is not task
        assert h.runtime.workers.busy == 0


async def test_a_request_racing_the_sweep_is_not_lost():
    """The sweep resolves a parked worker's future while a request arrives before that worker runs again: the
    request starts a new worker and the stopped one ends without touching the actor."""
    async with Harness(Worker) as h:
        workers = h.runtime.workers
        await h.call("w", "s", "incr")
        actor = h.runtime.actors["w"]
        assert actor.wake is not None and not actor.wake.done()
        workers.linger = 0.01
        workers._sweep()  # young -> old
        workers._sweep()  # old: stopped now, but the worker has not resumed yet
        assert actor.wake.done()
        assert await h.call("w", "s", "incr") == 2
        assert await h.call("w", "s", "incr") == 3
        assert workers.busy == 0


async def test_closing_ends_parked_workers_and_nothing_is_left_running():
    h = Harness(Worker)
    await h.start()
    for ca in ("a", "b", "c"):
        await h.call(ca, "s", "incr")
    tasks = _workers(h)
    assert len(tasks) == 3
    await h.stop()
    assert all(t.done() for t in tasks)


async def test_an_evicted_ca_with_a_parked_worker_reloads_and_keeps_counting(tmp_path):
    async with Harness(Worker, tmp_path / "w.db", preload=False, max_resident=2) as h:
        h.runtime.workers.linger = 0.05
        for ca in ("a", "b", "c", "d"):
            assert await h.call(ca, "s", "incr") == 1
        h.runtime.evict_idle()
        assert len(h.runtime.actors) <= 2
        for ca in ("a", "b", "c", "d"):
            assert await h.call(ca, "s", "incr") == 2
