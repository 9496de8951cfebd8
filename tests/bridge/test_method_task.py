"""A CA method runs in a Task of its own from its first line: asyncio.timeout, TaskGroup and current_task() work
there, and a timeout inside a method never reaches whoever delivered the request (a faster 'inline' start of the
method on the caller's stack was tried and reverted for this)."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge import CA, AppError, method
from bridge.testing import CallError, Harness


class TaskUser(CA):
    async def on_init(self) -> None:
        self.state["n"] = 0

    @method
    async def bounded(self) -> bool:
        async with asyncio.timeout(5):  # needs a current task, and must be this call's own
            self.state["n"] += 1
            await asyncio.sleep(0)
        return asyncio.current_task() is not None

    @method
    async def group(self) -> int:
        async with asyncio.TaskGroup() as tg:
            a = tg.create_task(asyncio.sleep(0, 1))
            b = tg.create_task(asyncio.sleep(0, 2))
        return a.result() + b.result()

    @method
    async def own_task(self) -> str:
        task = asyncio.current_task()
        return task.get_name() if task is not None else ""


async def test_asyncio_timeout_and_taskgroup_work_from_a_methods_first_line():
    async with Harness(TaskUser) as h:
        assert await h.call("t", "s", "bounded") is True
        assert await h.call("t", "s", "group") == 3
        assert h.state("t")["n"] == 1


async def test_a_method_never_runs_on_the_callers_task():
    async with Harness(TaskUser) as h:
        caller = asyncio.current_task()
        assert caller is not None
        name = await h.call("t", "s", "own_task")
        assert name and name != caller.get_name()


class Deadlines(CA):
    """Async methods that finish, fail or run late in their first stretch (before any await), or after one."""

    async def on_init(self) -> None:
        self.state["n"] = 0

    @method
    async def at_once(self) -> int:
        self.state["n"] += 1
        return self.state["n"]

    @method
    async def fails_at_once(self) -> None:
        self.state["n"] += 100
        raise AppError("refused before any await")

    @method
    async def late_then_await(self, seconds: float) -> int:
        self.state["n"] += 1000
        end = time.monotonic() + seconds
        while time.monotonic() < end:  # the first stretch alone runs past the deadline (CPU-bound)
            pass
        await asyncio.sleep(0)
        return self.state["n"]

    @method
    async def steps(self, count: int) -> list[str]:
        seen = []
        for _ in range(count):
            await asyncio.sleep(0)
            task = asyncio.current_task()
            seen.append(task.get_name() if task is not None else "")
        return seen

    @method
    async def catches_own_timeout(self) -> str:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)
        except TimeoutError:
            return "inner timeout"
        return "no timeout"


async def test_a_method_that_never_awaits_commits_and_one_that_raises_rolls_back():
    async with Harness(Deadlines) as h:
        assert await h.call("d", "s", "at_once") == 1
        with pytest.raises(AppError, match="refused before any await"):
            await h.call("d", "s", "fails_at_once")
        assert h.state("d")["n"] == 1


async def test_the_deadline_counts_the_first_stretch_too():
    """The deadline is armed only when a method first suspends, but it is measured from the method's start: a
    method that spends its whole budget before its first await times out there, and is rolled back."""
    async with Harness(Deadlines, call_timeout=0.2) as h:
        with pytest.raises(CallError) as err:
            await h.call("d", "s", "late_then_await", 0.3)
        assert err.value.name == "Timeout"
        assert h.state("d")["n"] == 0
        assert await h.call("d", "s", "late_then_await", 0.0) == 1000


async def test_a_method_resumed_after_its_first_stretch_stays_in_one_task():
    async with Harness(Deadlines, call_timeout=5) as h:
        names = await h.call("d", "s", "steps", 5)
        assert len(names) == 5 and len(set(names)) == 1 and names[0]
        assert await h.call("d", "s", "catches_own_timeout") == "inner timeout"
