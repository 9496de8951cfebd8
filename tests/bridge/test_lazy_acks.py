"""An ack publishes nothing and nobody waits for it, so its change rides with the next batch instead of paying a
durable commit of its own; alone, it is committed within LAZY_S (bridge.committer)."""

from __future__ import annotations

import asyncio
import time

from bridge.committer import LAZY_S
from bridge.protocol import Ack, Call
from bridge.store import MemoryStore
from bridge.testing import Harness
from tests.apps import Teller


async def _stored_notes(store: MemoryStore, ca: str, sid: str) -> list[int]:
    record = await store.load(ca)
    assert record is not None
    return [seq for seq, _ in record.sessions[sid].notes]


async def test_an_ack_alone_is_committed_within_its_delay():
    async with Harness(Teller) as h:
        store = h.store
        assert isinstance(store, MemoryStore)
        await h.call("c", "dev", "hello")
        await h.call("c", "x", "tell", 3)
        before = store.commits
        started = time.monotonic()
        await h.ack("c", "dev", 2)  # returns once settled: the ack's own commit came after its delay
        waited = time.monotonic() - started
        assert store.commits == before + 1
        assert await _stored_notes(store, "c", "dev") == [3]
        assert waited >= LAZY_S * 0.9


async def test_an_ack_rides_with_the_next_call_in_one_commit():
    async with Harness(Teller) as h:
        store = h.store
        assert isinstance(store, MemoryStore)
        assert h.ingress is not None
        await h.call("c", "dev", "hello")
        await h.call("c", "x", "tell", 3)
        before = store.commits
        reply = asyncio.get_running_loop().create_future()
        h.ingress.receive("c", Ack("dev", "cbor", 3).encode(), None)
        h.ingress.receive("c", Call("x", "cbor", "r-9", "tell", [1]).encode(), reply)
        assert (await asyncio.wait_for(reply, 5))["ok"] == 4
        assert store.commits == before + 1  # the ack and the call: one commit
        assert await _stored_notes(store, "c", "dev") == [4]
        await asyncio.wait_for(h.settle(), 5)
        assert store.commits == before + 1


async def test_acks_survive_a_restart_once_settled(tmp_path):
    async with Harness(Teller, db=tmp_path / "a.db") as h:
        await h.call("c", "dev", "hello")
        await h.call("c", "x", "tell", 4)
        await h.ack("c", "dev", 3)
        await h.restart()
        assert h.outq("c", "dev") == [[4]]
