"""An idle CA runs a call on the caller's stack; a Task (with the call's deadline) only once something suspends."""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge import CA, AppError, method
from bridge.logs import CURRENT
from bridge.protocol import Call
from bridge.testing import CallError, Harness


class Nope(AppError):
    pass


class Later(AppError):
    pass


class Inline(CA):
    async def on_init(self):
        self.state["n"] = 0

    @method
    async def incr(self):
        self.state["n"] += 1
        return self.state["n"]

    @method
    async def fail(self):
        self.state["n"] += 100
        raise Nope("refused")

    @method
    async def busy_then_wait(self, busy, wait):
        time.sleep(busy)  # noqa: ASYNC251 (a synchronous stretch: it cannot be interrupted, yet counts)
        await asyncio.sleep(wait)
        return "late"

    @method
    async def wait_then_fail(self):
        self.state["n"] += 100
        await asyncio.sleep(0)
        raise Later("refused after a suspension")

    @method
    async def deadline_inside(self):
        await asyncio.sleep(0)
        async with asyncio.timeout(5):  # needs a current task: it has one once it has suspended
            await asyncio.sleep(0)
        return asyncio.current_task() is not None


async def test_a_call_that_never_suspends_has_run_when_submit_returns():
    async with Harness(Inline) as h:
        await h.call("c", "s", "incr")
        assert h.ingress is not None and h.runtime is not None
        future = asyncio.get_running_loop().create_future()
        h.ingress.receive("c", Call("s", "cbor", "r2", "incr", []).encode(), future)
        actor = h.runtime.actors["c"]
        assert actor.ca.state["n"] == 2 and not actor.running and not actor.mailbox  # ran, no worker left behind
        assert CURRENT.get() is None  # the CA's log context did not leak into the caller's
        assert (await future)["ok"] == 2


async def test_errors_roll_back_inline_and_after_a_suspension():
    async with Harness(Inline) as h:
        assert await h.call("c", "s", "incr") == 1
        with pytest.raises(AppError) as err:
            await h.call("c", "s", "fail")
        assert err.value.name == "Nope"
        with pytest.raises(AppError) as err:
            await h.call("c", "s", "wait_then_fail")
        assert err.value.name == "Later"
        assert await h.call("c", "s", "incr") == 2
        assert h.state("c")["n"] == 2


async def test_the_deadline_counts_from_the_start_of_the_call():
    async with Harness(Inline, call_timeout=0.3) as h:
        with pytest.raises(CallError) as err:
            await h.call("c", "s", "busy_then_wait", 0.4, 10)
        assert err.value.name == "Timeout"
        assert await h.call("c", "s", "busy_then_wait", 0, 0) == "late"
        assert await h.call("c", "s", "deadline_inside") is True
        assert await h.call("c", "s", "incr") == 1
