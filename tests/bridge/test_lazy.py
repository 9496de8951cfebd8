"""Lazy loading and eviction (bridge.runtime): a CA evicted between two calls keeps its state, sessions, queued
notifications, presence, dedup records and pulses; the LRU bound holds; busy CAs are never evicted."""

from __future__ import annotations

import asyncio
from typing import ClassVar

import pytest

from bridge import CA, codec, method
from bridge.errors import CallError, StoreError
from bridge.protocol import Presence
from bridge.store import MemoryStore
from bridge.testing import Harness


class Keeper(CA):
    """A counter that queues a notification for session "watch" per call and records its hooks."""

    gate: asyncio.Event | None = None  # held() waits on it
    entered: asyncio.Event | None = None  # set when held() starts

    async def on_init(self):
        self.state.update(n=0, resumes=0, presence=[])

    async def on_resume(self):
        self.state["resumes"] += 1

    async def on_presence(self, session_id, online):
        self.state["presence"].append([session_id, online])

    @method
    async def incr(self):
        self.state["n"] += 1
        self.session.limit_queue(0, "watch")
        self.session.notify([self.state["n"]], "watch")
        return self.state["n"]

    @method
    async def get(self):
        return self.state

    @method
    async def online(self, session_id):
        return self.session.is_online(session_id)

    @method
    async def held(self):
        assert Keeper.gate is not None and Keeper.entered is not None
        Keeper.entered.set()
        await Keeper.gate.wait()
        return "released"


class Pulser(CA):
    """Counts its pulses; sets the event of its name at each one."""

    pulsed: ClassVar[dict[str, asyncio.Event]] = {}

    async def on_init(self):
        self.state["pulses"] = 0

    async def on_pulse(self):
        self.state["pulses"] += 1
        event = Pulser.pulsed.get(self.name)
        if event is not None:
            event.set()

    @method
    async def pulses(self):
        return self.state["pulses"]


@pytest.fixture(params=["memory", "sqlite"])
def db(request, tmp_path):
    return None if request.param == "memory" else tmp_path / "lazy.db"


def resident(h: Harness) -> set[str]:
    assert h.runtime is not None
    return set(h.runtime.actors)


async def stored(h: Harness, ca: str):
    record = await h.store.load(ca)
    assert record is not None
    return record


async def test_evicted_ca_keeps_state_sessions_queue_presence_and_dedup(db):
    async with Harness(Keeper, db=db, preload=False, max_resident=1) as h:
        assert await h.call("a", "s1", "incr", request_id="r1") == 1
        await h.presence("a", "dev", True)
        assert await h.call("b", "s1", "incr") == 1  # a third CA never fits: "a" goes
        assert resident(h) == {"b"}
        assert h.runtime is not None and h.runtime.metrics.cas_evicted == 1
        # reloaded on demand: the retry of r1 is answered from its dedup record (not run again) ...
        assert await h.call("a", "s1", "incr", request_id="r1") == 1
        assert resident(h) == {"a"}
        state = await h.call("a", "s1", "get")
        assert state["n"] == 1 and state["resumes"] == 1  # ... on_resume ran at the reload
        assert state["presence"] == [["dev", True]]
        assert await h.call("a", "s1", "online", "dev") is True  # presence kept across the eviction
        assert h.outq("a", "watch") == [[1]]  # the queued notification too
        assert await h.call("a", "s1", "incr") == 2
        assert h.outq("a", "watch") == [[1], [2]]
        assert sorted(h.sessions("a")) == ["dev", "s1", "watch"]
        assert h.runtime.metrics.cas_loaded == 1  # "a" once; "b" was new (on_init, nothing loaded)


async def test_sync_of_an_evicted_ca_loads_it(db):
    async with Harness(Keeper, db=db, preload=False, max_resident=1) as h:
        for _ in range(3):
            await h.call("a", "s1", "incr")
        await h.call("b", "s1", "incr")
        assert "a" not in resident(h)
        got = await h.sync("a", "watch", 1)
        assert got[0]["t"] == "sync" and (got[0]["first"], got[0]["next"]) == (2, 4)  # not the (1,1) of a new CA
        assert [note["args"] for note in got[1:]] == [[2], [3]]
        assert "a" in resident(h)
        # a CA the store does not have is still answered as such, and not created
        missing = await h.sync("nobody", "watch", 0)
        assert (missing[0]["first"], missing[0]["next"]) == (1, 1)
        assert "nobody" not in resident(h)
        assert await h.store.load("nobody") is None


async def test_presence_for_an_evicted_ca_is_recorded(db):
    async with Harness(Keeper, db=db, preload=False, max_resident=1) as h:
        await h.call("a", "dev", "incr")
        await h.presence("a", "dev", True)
        await h.call("b", "s1", "incr")
        assert "a" not in resident(h)
        await h.presence("a", "dev", False)  # loads "a": the change and on_presence are not lost
        await h.call("b", "s1", "incr")
        record = await stored(h, "a")
        assert codec.loads(record.state)["presence"] == [["dev", True], ["dev", False]]
        assert codec.loads(record.sessions["dev"].meta)[6] is False


async def test_presence_flood_while_loading_keeps_the_last_one():
    class GatedStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.gate = asyncio.Event()
            self.gate.set()

        async def load(self, name):
            await self.gate.wait()
            return await super().load(name)

    store = GatedStore()
    h = Harness(Keeper, preload=False, max_resident=1, mailbox=8)
    h.store = store
    async with h:
        await h.call("a", "dev", "incr")
        await h.call("b", "s", "incr")  # evicts "a"
        store.gate.clear()
        assert h.ingress is not None
        for i in range(21):  # more than a mailbox of presence for one session while "a" loads: the last one wins
            h.ingress.receive("a", Presence("dev", "cbor", i % 2 == 0).encode())
        store.gate.set()
        await h.settle()
        assert await h.call("a", "s", "online", "dev") is True
        assert (await h.call("a", "s", "get"))["presence"] == [["dev", True]]


async def test_lru_bound_holds_and_evicts_the_least_recently_used(db):
    async with Harness(Keeper, db=db, preload=False, max_resident=3) as h:
        for ca in ("c0", "c1", "c2"):
            await h.call(ca, "s", "incr")
        await h.call("c0", "s", "incr")  # c1 is now the least recently used
        await h.call("c3", "s", "incr")
        assert resident(h) == {"c0", "c2", "c3"}
        for i in range(4, 12):
            await h.call(f"c{i}", "s", "incr")
            assert len(resident(h)) <= 3
        for i in range(12):  # every one kept its count through its evictions
            assert await h.call(f"c{i}", "s", "incr") == (3 if i == 0 else 2)
            assert len(resident(h)) <= 3


async def test_busy_or_uncommitted_cas_are_not_evicted():
    class SlowStore(MemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.release = asyncio.Event()
            self.release.set()
            self.committing = asyncio.Event()  # a commit is waiting for release
            self.loaded = asyncio.Event()  # a load returned (the runtime places its CA before it yields)

        async def commit(self, changes):
            self.committing.set()
            await self.release.wait()
            return await super().commit(changes)

        async def load(self, name):
            record = await super().load(name)
            self.loaded.set()
            return record

    store = SlowStore()
    h = Harness(Keeper, preload=False, max_resident=1)
    h.store = store
    Keeper.gate, Keeper.entered = asyncio.Event(), asyncio.Event()
    async with h:
        assert h.runtime is not None
        rt = h.runtime
        await h.call("idle", "s", "incr")
        held = asyncio.ensure_future(h.call("busy", "s", "held"))  # running: its worker waits on the gate
        await asyncio.wait_for(Keeper.entered.wait(), 10)
        assert rt.actors["busy"].running
        assert resident(h) == {"busy"} and rt.metrics.cas_evicted == 1  # the load swept: only the idle one went
        store.release.clear()  # commits now wait: "busy"'s effects stay in the committer
        store.committing.clear()
        Keeper.gate.set()
        await asyncio.wait_for(store.committing.wait(), 10)
        actor = rt.actors["busy"]
        assert not actor.running and actor.in_commit >= 1 and not actor.idle()  # its reply is not durable yet
        store.loaded.clear()
        other = asyncio.ensure_future(h.call("other", "s", "get"))  # one more CA: over the bound, a sweep
        await asyncio.wait_for(store.loaded.wait(), 10)
        assert rt.evict_idle() == 0 and {"busy", "other"} <= resident(h)
        store.release.set()
        assert await held == "released"
        assert (await other)["n"] == 0
        await h.settle()
        assert actor.idle()
        assert rt.evict_idle() == 1 and len(rt.actors) == 1
        assert codec.loads((await store.load("busy")).state)["n"] == 0
    Keeper.gate = Keeper.entered = None


async def test_a_failed_lookup_creates_nothing():
    class FlakyStore(MemoryStore):
        broken = False

        async def load(self, name):
            if self.broken:
                raise StoreError("database down")
            return await super().load(name)

    store = FlakyStore()
    h = Harness(Keeper, preload=False, max_resident=1)
    h.store = store
    async with h:
        await h.call("a", "s", "incr")
        await h.call("b", "s", "incr")  # evicts "a"
        store.broken = True
        with pytest.raises(CallError) as failed:
            await h.call("a", "s", "incr")
        assert failed.value.kind == "unavailable"
        assert "a" not in resident(h)  # not created afresh over the stored one
        store.broken = False
        assert await h.call("a", "s", "incr") == 2


async def test_pulsing_cas_stay_resident_and_pulse_after_a_restart_without_requests(tmp_path):
    async with Harness(Pulser, db=tmp_path / "p.db", preload=False, pulse=0.05, max_resident=1) as h:
        for ca in ("p1", "p2", "p3"):
            await h.call(ca, "s", "pulses")
        assert resident(h) == {"p1", "p2", "p3"}  # every CA pulses: none is evicted, whatever the bound
        await h.stop()
        before = {ca: codec.loads((await _reopen(h, ca)).state)["pulses"] for ca in ("p1", "p2", "p3")}
        Pulser.pulsed = {ca: asyncio.Event() for ca in before}
        await h.start()  # lazily: no request follows
        try:
            for event in Pulser.pulsed.values():
                await asyncio.wait_for(event.wait(), 10)
            await h.settle()
            for ca, count in before.items():
                assert codec.loads((await stored(h, ca)).state)["pulses"] > count
        finally:
            Pulser.pulsed = {}


async def _reopen(h: Harness, ca: str):
    await h.store.open()
    try:
        record = await h.store.load(ca)
    finally:
        await h.store.close()
    assert record is not None
    return record


async def test_a_request_during_the_pulse_load_is_not_lost(tmp_path):
    async with Harness(Pulser, db=tmp_path / "p.db", preload=False, pulse=0.05) as h:
        for i in range(50):
            await h.call(f"p{i}", "s", "pulses")
        await h.stop()
        await h.start()
        # asked for before the background load reached it, or after: one copy either way
        counts = await asyncio.gather(*(h.call(f"p{i}", "s", "pulses") for i in range(50)))
        assert all(isinstance(n, int) for n in counts)
        await h.settle()
        assert h.runtime is not None and len(h.runtime.actors) == 50
