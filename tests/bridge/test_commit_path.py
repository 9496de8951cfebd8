"""The commit path of issue 17: one hand-off to the store's thread and one back per batch, delivered from the
store's callback (bridge.store.CommitSoon), with the same guarantees as the awaited path."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from bridge.committer import UNDURABLE, Committer, Pending
from bridge.errors import StoreError
from bridge.store import Change, CommitSoon, MemoryStore, SessionWrite
from bridge.store.redo import read_records
from bridge.store.sqlite import SQLiteStore


class Owner:
    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch = 0

    def invalidate(self) -> None:
        self.epoch += 1


class HandStore(MemoryStore):
    """A store whose batches wait in a list until the test answers them (as the store's thread would)."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[list[Change], Any]] = []
        self.arrived = asyncio.Event()

    def commit_soon(self, changes, done, loop) -> None:
        assert loop is asyncio.get_running_loop()
        self.batches.append((list(changes), done))
        self.arrived.set()

    async def commit(self, changes):
        raise AssertionError("a store with commit_soon is never awaited")


@pytest.fixture
async def committed():
    """A running Committer over a HandStore; yields (committer, store, delivered, rejected, retried)."""
    store = HandStore()
    delivered: list[Pending] = []
    rejected: list[tuple[str, Any, dict[str, Any]]] = []
    retried: list[str] = []
    committer = Committer(store, delivered.append, retry=lambda ca, req, fut: retried.append(ca),
                          reject=lambda ca, req, fut, body: rejected.append((ca, req, body)))
    task = asyncio.create_task(committer.run())
    yield committer, store, delivered, rejected, retried
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def pending(owner: Owner, state: bytes, request: Any = None) -> Pending:
    return Pending(owner=owner, epoch=owner.epoch, change=Change(owner.name, state), request=request)


async def test_a_turns_calls_go_to_the_store_thread_as_one_batch_and_are_delivered_from_its_callback(committed):
    committer, store, delivered, _, _ = committed
    assert isinstance(store, CommitSoon)
    a, b = Owner("a"), Owner("b")
    first, second = pending(a, b"1"), pending(b, b"2")
    committer.submit(first)
    committer.submit(second)
    await asyncio.wait_for(store.arrived.wait(), 10)
    assert len(store.batches) == 1 and [c.state for c in store.batches[0][0]] == [b"1", b"2"]
    assert delivered == []  # nothing leaves before the store says it is durable
    third = pending(a, b"3")
    committer.submit(third)  # arrives while the first batch is in flight: waits for it
    store.arrived.clear()
    store.batches[0][1](frozenset())  # the store's answer, as its thread's call_soon_threadsafe would call it
    assert delivered == [first, second]  # delivered straight from the callback, in order
    assert len(store.batches) == 2 and [c.state for c in store.batches[1][0]] == [b"3"]  # next batch at once
    store.batches[1][1](frozenset())
    assert delivered == [first, second, third]
    await asyncio.wait_for(committer.wait_idle(), 10)


async def test_concurrent_callers_gather_some_turns_later_and_a_lone_caller_never_waits(committed):
    """After a batch of more than one change, the next one starts GATHER_TURNS turns of the loop later, so what the
    loop reads meanwhile joins it; after a batch of one, the next starts on the very next turn."""
    committer, store, delivered, _, _ = committed
    a, b = Owner("a"), Owner("b")
    committer.submit(pending(a, b"1"))
    committer.submit(pending(b, b"2"))
    await asyncio.wait_for(store.arrived.wait(), 10)
    store.batches[0][1](frozenset())  # a batch of two: callers are concurrent
    committer.submit(pending(a, b"3"))
    await asyncio.sleep(0)  # a turn of the loop: as if the next poll read another device's request
    assert len(store.batches) == 1  # still gathering
    committer.submit(pending(b, b"4"))
    store.arrived.clear()
    await asyncio.wait_for(store.arrived.wait(), 10)
    assert [c.state for c in store.batches[1][0]] == [b"3", b"4"]  # one batch, one fdatasync
    store.batches[1][1](frozenset())
    store.arrived.clear()
    committer.submit(pending(a, b"5"))
    await asyncio.wait_for(store.arrived.wait(), 10)
    store.batches[2][1](frozenset())  # a batch of one: a lone caller
    committer.submit(pending(a, b"6"))
    await asyncio.sleep(0)
    assert [c.state for c in store.batches[3][0]] == [b"6"]  # went to the store on the next turn
    store.batches[3][1](frozenset())
    assert [p.change.state for p in delivered if p.change] == [b"1", b"2", b"3", b"4", b"5", b"6"]


async def test_the_sink_hears_the_end_of_each_delivered_batch_after_its_last_delivery():
    store = HandStore()
    events: list[Any] = []
    committer = Committer(store, lambda p: events.append(p.change and p.change.state), retry=lambda *a: None,
                          reject=lambda *a: None, end_batch=lambda: events.append("end"))
    task = asyncio.create_task(committer.run())
    try:
        a, b = Owner("a"), Owner("b")
        committer.submit(pending(a, b"1"))
        committer.submit(pending(b, b"2"))
        await asyncio.wait_for(store.arrived.wait(), 10)
        assert events == []
        store.batches[0][1](frozenset())
        assert events == [b"1", b"2", "end"]  # once per batch, after its deliveries
        committer.submit(Pending(owner=a, epoch=a.epoch, change=None))  # nothing to write: delivered at once
        await asyncio.wait_for(committer.wait_idle(), 10)
        assert events[3:] == [None, "end"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_lone_change_committed_inline_is_delivered_and_sent_within_the_same_turn(tmp_path):
    """SQLite commits a lone change on the loop and answers ``done`` on the spot: the committer delivers it and
    ends the batch before the flush that started it returns, and goes on with the next batch from there."""
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    events: list[Any] = []
    committer = Committer(store, lambda p: events.append(p.change and p.change.state), retry=lambda *a: None,
                          reject=lambda *a: None, end_batch=lambda: events.append("end"))
    task = asyncio.create_task(committer.run())
    try:
        await asyncio.sleep(0)
        a = Owner("a")
        committer.submit(pending(a, b"\xa0"))
        committer._flush()  # what the loop runs next
        assert events == [b"\xa0", "end"]
        for state in (b"\xa1", b"\xa2"):
            committer.submit(pending(a, state))
        await asyncio.wait_for(committer.wait_idle(), 10)
        assert events[2:] == [b"\xa1", b"\xa2", "end"]  # the two of one turn: one batch
        assert (await store.load("a")).state == b"\xa2"  # type: ignore[union-attr]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_a_failed_batch_invalidates_answers_unavailable_and_runs_stale_items_again(committed):
    committer, store, delivered, rejected, retried = committed
    a = Owner("a")
    committer.submit(pending(a, b"1", request="r1"))
    await asyncio.wait_for(store.arrived.wait(), 10)
    committer.submit(pending(a, b"2", request="r2"))  # built on the state of the batch that will fail
    store.batches[0][1](StoreError("disk gone"))
    assert a.epoch == 1  # the CA reloads before its next item
    assert rejected == [("a", "r1", UNDURABLE)]
    assert retried == ["a"] and delivered == []  # the stale item runs again instead of being committed
    assert len(store.batches) == 1
    await asyncio.wait_for(committer.wait_idle(), 10)


async def test_sqlite_commit_soon_answers_once_on_the_loop_thread_after_the_batch_is_durable(tmp_path):
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        loop = asyncio.get_running_loop()
        answers: list[tuple[Any, threading.Thread]] = []
        answered = asyncio.Event()

        def done(outcome: Any) -> None:
            answers.append((outcome, threading.current_thread()))
            answered.set()

        store.commit_soon([Change("a", b"\xa0", {"s": SessionWrite(b"m")}, [(1, "s", "r1", b"p")]),
                           Change("b", b"\xa1")], done, loop)
        await asyncio.wait_for(answered.wait(), 10)
        assert answers == [(frozenset(), threading.main_thread())]
        [(_, batch)] = read_records(tmp_path / "s.db", 0)[0]  # durable: in the redo log, as it was handed over
        assert [(c.ca, c.state, c.dedup) for c in batch] == [("a", b"\xa0", [(1, "s", "r1", b"p")]),
                                                             ("b", b"\xa1", [])]
        viewer = SQLiteStore(tmp_path / "s.db", read_only=True)  # what `ca-bridge inspect` sees beside the bridge
        await viewer.open()
        try:
            assert [(r.name, r.state, r.dedup) for r in await viewer.load_all()] == [
                ("a", b"\xa0", [(1, "s", "r1", b"p")]), ("b", b"\xa1", [])]
        finally:
            await viewer.close()
        answered.clear()
        store.commit_soon([Change("a", b"\xa2"), Change("c", b"\xa0", {"s": SessionWrite(b"m", [(1, object())])})],
                          done, loop)
        await asyncio.wait_for(answered.wait(), 10)
        assert len(answers) == 2 and isinstance(answers[1][0], StoreError)
        assert (await store.load("a")).state == b"\xa0"  # the failed batch changed nothing
        assert await store.names() == ["a", "b"]
    finally:
        await store.close()
    answered.clear()
    store.commit_soon([Change("a", b"\xa3")], done, loop)  # closed: refused, still answered once, on the loop
    await asyncio.wait_for(answered.wait(), 10)
    assert isinstance(answers[2][0], StoreError)


async def test_one_pass_rows_fold_a_batch_like_merge(tmp_path):
    """Several changes of one CA and session in a batch: the last state wins, a purge drops what came before it
    in the batch, floors take the maximum (the rows SQLiteStore builds in one pass, checked against MemoryStore)."""
    batch = [
        Change("a", b"1", {"s": SessionWrite(b"m1", [(1, b"x"), (2, b"y")])}, [(1, "s", "r1", b"p1")]),
        Change("a", b"2", {"s": SessionWrite(None, [(3, b"z")], note_floor=2)}, [(2, "s", "r2", b"p2")], {"s": 2}),
        Change("b", b"3", {"t": SessionWrite(b"mt")}),
        Change("b", None, {"t": SessionWrite(purge=True)}),
        Change("b", None, {"u": SessionWrite(b"mu", [(1, b"n")])}, [(1, "u", "q", b"r")], {"u": 1}),
        Change("a", None, {}, [(3, "s", "r3", b"p3")], {"s": 1}),
    ]
    sqlite_store = SQLiteStore(tmp_path / "m.db")
    memory = MemoryStore()
    for store in (sqlite_store, memory):
        await store.open()
        await store.commit([Change("a", b"0", {"s": SessionWrite(b"m0")}, [(0, "s", "r0", b"p0")])])
        await store.commit(batch)
    try:
        got = {r.name: r for r in await sqlite_store.load_all()}
        want = {r.name: r for r in await memory.load_all()}
        assert got == want
        assert got["a"].state == b"2" and got["a"].sessions["s"].notes == [(2, b"y"), (3, b"z")]
        assert [d[0] for d in got["a"].dedup] == [2, 3] and set(got["b"].sessions) == {"u"}
    finally:
        await sqlite_store.close()
        await memory.close()


async def test_sqlite_appends_a_batch_inline_when_its_thread_is_idle(tmp_path: Any) -> None:
    """A batch (a lone device's call, or many) is appended to the redo log on the caller's thread when the log's
    thread is idle: no hand-off there and back. Its outcome reaches ``done`` before commit_soon returns."""
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        loop = asyncio.get_running_loop()
        outcomes: list[Any] = []
        got = asyncio.Event()

        def done(outcome: Any) -> None:
            outcomes.append(outcome)
            got.set()

        durable: list[Any] = []

        def done_inline(outcome: Any) -> None:  # called from inside commit_soon: the change is durable by then
            durable.extend((c.ca, c.state) for _, batch in read_records(tmp_path / "s.db", 0)[0] for c in batch)
            done(outcome)

        store.commit_soon([Change("a", state=b"\xa0")], done_inline, loop)
        assert outcomes == [frozenset()]  # answered before commit_soon returned
        assert durable == [("a", b"\xa0")]
        durable.clear()
        store.commit_soon([Change("d", state=b"\xa4"), Change("e", state=b"\xa5")], done_inline, loop)
        assert outcomes == [frozenset()] * 2 and durable == [("a", b"\xa0"), ("d", b"\xa4"), ("e", b"\xa5")]
        outcomes.clear()

        # the log's thread busy with another batch: this one waits in its queue, appended there, in order
        got.clear()
        with store._busy:
            store.commit_soon([Change("b", state=b"\xa1")], done, loop)
            assert [c.ca for _, batch in read_records(tmp_path / "s.db", 0)[0] for c in batch] == ["a", "d", "e"]
        await asyncio.wait_for(got.wait(), 10)
        assert outcomes == [frozenset()]
        assert (await store.load("b")) is not None

        # a slow disk (the last append took longer than INLINE_MAX_S): the loop never waits for it
        got.clear()
        store._append_s = 1.0
        threads: list[int] = []
        assert store._redo is not None
        append = store._redo.append

        def traced(changes: Any) -> int:
            threads.append(threading.get_ident())
            return append(changes)

        store._redo.append = traced  # type: ignore[method-assign]
        store.commit_soon([Change("c", state=b"\xa2")], done, loop)
        await asyncio.wait_for(got.wait(), 10)
        assert len(threads) == 1 and threads[0] != threading.get_ident()
        assert outcomes == [frozenset()] * 2
        assert store._append_s < 1.0  # measured again on the thread: a disk that got fast goes inline again
    finally:
        await store.close()
