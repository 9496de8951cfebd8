"""A CA's worker parks when its mailbox runs empty and the next request wakes it (no new Task per call); parked
workers count as idle, stop after one or two linger intervals, and closing ends them all (bridge.workers)."""

from __future__ import annotations

import asyncio

from bridge import CA, method
from bridge.protocol import Call
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


async def test_a_stopped_worker_cancelled_after_a_newer_one_started_leaves_the_newer_alone():
    """The sweep stops a parked worker; before it runs again a request starts a new one; then the old one is
    cancelled. The new worker's CA must stay running (one worker at a time) and the busy count exact."""
    async with Harness(Worker) as h:
        workers = h.runtime.workers
        assert await h.call("w", "s", "incr") == 1
        actor = h.runtime.actors["w"]
        old = actor.worker
        workers._sweep()
        workers._sweep()  # the old worker's future is False now; it has not run since
        reply = asyncio.get_running_loop().create_future()
        h.ingress.receive("w", Call("s", "cbor", "r-2", "incr", []).encode(), reply)
        assert actor.worker is not old and actor.running
        old.cancel()
        assert (await asyncio.wait_for(reply, 5))["ok"] == 2
        await asyncio.wait_for(h.settle(), 5)
        assert workers.busy == 0
        assert await h.call("w", "s", "incr") == 3
        assert len(_workers(h)) == 1


async def test_a_worker_cancelled_before_its_first_step_gives_back_its_busy_count():
    async with Harness(Worker) as h:
        workers = h.runtime.workers
        await h.call("w", "s", "incr")
        await asyncio.wait_for(h.settle(), 5)
        actor = h.runtime.actors["w"]
        actor.worker.cancel()  # a parked worker, cancelled as at close
        await asyncio.sleep(0)
        h.ingress.receive("w", Call("s", "cbor", "r-2", "incr", []).encode(), None)
        fresh = actor.worker
        assert workers.busy == 1
        fresh.cancel()  # before it ever ran
        await asyncio.wait([fresh], timeout=5)
        assert workers.busy == 0 and workers.idle.is_set()
        assert actor.worker is None and not actor.running
        # the request stayed in the mailbox: the next request's worker runs it first
        assert await h.call("w", "s", "incr") == 3
