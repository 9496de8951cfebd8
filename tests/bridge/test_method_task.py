"""A CA method runs in a Task of its own from its first line: asyncio.timeout, TaskGroup and current_task() work
there, and a timeout inside a method never reaches whoever delivered the request (a faster 'inline' start of the
method on the caller's stack was tried and reverted for this)."""

from __future__ import annotations

import asyncio

from bridge import CA, method
from bridge.testing import Harness


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
