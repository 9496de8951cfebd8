"""The runtime's guarantees, through the Harness: transactions, dedup, admission, failures, pulses."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ClassVar

import pytest

from bridge import CA, method
from bridge.actor import PULSE
from bridge.errors import AppError, CallError, StoreError
from bridge.protocol import Call
from bridge.store import MemoryStore
from bridge.testing import Harness
from tests.apps import Counter, Pulsing


async def until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait (polling) until ``pred()`` holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


@pytest.fixture(params=["memory", "sqlite"])
async def h(request, tmp_path):
    async with Harness(Counter, db=None if request.param == "memory" else tmp_path / "c.db") as harness:
        yield harness


async def test_state_commits_and_survives_restart(tmp_path):
    async with Harness(Counter, db=tmp_path / "c.db") as h:
        assert [await h.call("c1", "s", "incr") for _ in range(3)] == [1, 2, 3]
        await h.restart()
        assert h.state("c1")["n"] == 3
        assert h.state("c1")["resumes"] == 1  # on_resume ran once, in a committed transaction
        assert await h.call("c1", "s", "incr") == 4


async def test_app_error_rolls_back_and_reports_name_message_data(h):
    await h.call("c1", "s", "incr")
    with pytest.raises(AppError) as err:
        await h.call("c1", "s", "fail_after_write", "app")
    assert (err.value.name, err.value.message, err.value.data) == ("AppError", "refused", {"reason": "test", "n": 1})
    assert "dirty" not in h.state("c1")
    assert h.outq("c1", "s") == []
    reply = h.sent("c1", "s")[-1]
    assert reply["err"] == {"kind": "app", "name": "AppError", "message": "refused", "data": {"reason": "test", "n": 1}}
    assert await h.call("c1", "s", "incr") == 2


async def test_internal_error_rolls_back_without_leaking(h, caplog):
    with pytest.raises(CallError) as err:
        await h.call("c1", "s", "fail_after_write", "boom")
    assert err.value.kind == "internal"
    assert "secret" not in err.value.message and "secret" not in str(h.sent("c1", "s"))
    assert "secret internal detail" in caplog.text  # logged with its traceback for the operator
    assert "dirty" not in h.state("c1")


async def test_unserializable_result_or_state_is_an_internal_error(h):
    for name in ("bad_result", "bad_state"):
        with pytest.raises(CallError) as err:
            await h.call("c1", "s", name)
        assert err.value.kind == "internal" and err.value.name == "NotSerializable"
    assert "x" not in h.state("c1")


async def test_same_request_id_runs_once_and_replays_the_reply(h):
    first = await h.call("c1", "s", "record", "tok", request_id="req-1")
    again = await h.call("c1", "s", "record", "tok", request_id="req-1")
    assert first == again == 1
    assert h.state("c1")["seen"]["tok"] == 1
    replies = [m for m in h.sent("c1", "s") if m["t"] == "reply"]
    assert replies[0] == replies[1]
    assert await h.call("c1", "other", "record", "tok", request_id="req-1") == 2  # ids are per session


async def test_dedup_survives_restart_and_covers_errors(tmp_path):
    async with Harness(Counter, db=tmp_path / "d.db") as h:
        await h.call("c1", "s", "record", "a", request_id="r1")
        with pytest.raises(CallError):
            await h.call("c1", "s", "fail_after_write", "boom", request_id="r2")
        await h.restart()
        assert await h.call("c1", "s", "record", "a", request_id="r1") == 1
        with pytest.raises(CallError) as err:
            await h.call("c1", "s", "fail_after_write", "boom", request_id="r2")
        assert err.value.kind == "internal"
        assert h.state("c1")["seen"] == {"a": 1}


async def test_dedup_records_outlive_a_collected_session(tmp_path):
    """Regression (found by the load test): the max-sessions rule collected a session with pending notifications,
    its dedup records went with it, and a retry of one of its calls ran a second time."""
    from bridge.session import SessionLimits

    async with Harness(Counter, db=tmp_path / "g.db", limits=SessionLimits(max_sessions=2)) as h:
        assert await h.call("c1", "victim", "record_notify", "tok", request_id="r1") == 1
        await h.call("c1", "victim", "notify_to", "victim", "pending")  # collectable: pending, default limit
        for sid in ("a", "b", "c"):
            await h.call("c1", sid, "incr")
        assert "victim" not in h.sessions("c1")
        assert await h.call("c1", "victim", "record_notify", "tok", request_id="r1") == 1  # replayed, not rerun
        await h.restart()
        assert await h.call("c1", "victim", "record_notify", "tok", request_id="r1") == 1
        assert h.state("c1")["seen"] == {"tok": 1}


async def test_dedup_window_is_bounded(tmp_path):
    """A record is kept while it is among its session's last ``dedup_window`` or the CA's last 8 x that."""
    from bridge.actor import CA_WINDOW
    from bridge.session import SessionLimits

    ca_window = CA_WINDOW * 3

    async with Harness(Counter, db=tmp_path / "w.db", limits=SessionLimits(dedup_window=3)) as h:
        for i in range(70):
            await h.call("c1", "s", "record", f"t{i}", request_id=f"r{i}")
        actor = h.runtime.actors["c1"]
        assert list(actor.dedup) == [("s", f"r{i}") for i in range(70 - ca_window, 70)]
        assert await h.call("c1", "s", "record", "t69", request_id="r69") == 1  # inside the window: replayed
        assert await h.call("c1", "s", "record", "t0", request_id="r0") == 2  # outside: runs again (documented)
        for i in range(ca_window):  # another session's calls push s out of the CA's window, but not its own last 3
            await h.call("c1", "t", "incr", request_id=f"t{i}")
        assert [k for k in actor.dedup if k[0] == "s"] == [("s", "r68"), ("s", "r69"), ("s", "r0")]
        await h.restart()
        assert list(h.runtime.actors["c1"].dedup) == list(actor.dedup)
        assert len((await h.store.load("c1")).dedup) == 3 + ca_window


@pytest.mark.parametrize("name", ["on_init", "on_resume", "_private", "not_a_method", "state", "__class__",
                                  "__init__", "methods", "session"])
async def test_only_decorated_methods_are_callable(h, name):
    with pytest.raises(CallError) as err:
        await h.call("c1", "s", name)
    assert (err.value.kind, err.value.name) == ("bad_request", "NoSuchMethod")
    assert "c1" not in h.runtime.actors  # rejected input creates nothing


async def test_wrong_argument_count_is_a_bad_request(h):
    with pytest.raises(CallError) as err:
        await h.call("c1", "s", "record")
    assert err.value.kind == "bad_request"
    with pytest.raises(CallError):
        await h.call("c1", "s", "record", 1, 2)
    assert await h.call("c1", "s", "notify_to", "s2", 1, 2, 3) == 1  # *args accepted


async def test_sync_methods_work(h):
    assert await h.call("c1", "s", "incr") == 1


class Overlap(CA):
    """``hold(tag)`` records which calls are running at once; it returns only once ``Overlap.wanted`` calls (of any
    CAs) have been inside together, so calls that never overlap make it wait until the test's timeout."""

    inside: ClassVar[dict[str, int]] = {}
    peak: ClassVar[dict[str, int]] = {}
    order: ClassVar[list[object]] = []
    wanted: ClassVar[int] = 1
    together: ClassVar[asyncio.Event] = asyncio.Event()

    @method
    async def hold(self, tag):
        cls = Overlap
        cls.inside[self.name] = cls.inside.get(self.name, 0) + 1
        cls.peak[self.name] = max(cls.peak.get(self.name, 0), cls.inside[self.name])
        cls.order.append(tag)
        try:
            if sum(cls.inside.values()) >= cls.wanted:
                cls.together.set()
            await cls.together.wait()
            for _ in range(5):  # yield: a second call of this CA, if the runtime let one in, would overlap here
                await asyncio.sleep(0)
        finally:
            cls.inside[self.name] -= 1
        return tag


async def test_one_call_at_a_time_per_ca_many_cas_concurrently():
    Overlap.inside, Overlap.peak, Overlap.order = {}, {}, []
    async with Harness(Overlap) as h:
        # ten CAs: every call waits until all ten are running at once, which only concurrent CAs can reach
        Overlap.wanted, Overlap.together = 10, asyncio.Event()
        async with asyncio.timeout(20):
            assert await asyncio.gather(*(h.call(f"c{i}", "s", "hold", i) for i in range(10))) == list(range(10))
        assert all(Overlap.peak[f"c{i}"] == 1 for i in range(10))
        # one CA: its six calls run one after another, in the order they arrived
        Overlap.wanted, Overlap.together, Overlap.order = 1, asyncio.Event(), []
        assert await asyncio.gather(*(h.call("one", "s", "hold", i) for i in range(6))) == list(range(6))
        assert Overlap.peak["one"] == 1
        assert Overlap.order == list(range(6))


async def test_full_mailbox_answers_busy_and_others_keep_working():
    async with Harness(Counter, mailbox=3) as h:
        calls = [asyncio.create_task(h.call("flooded", "s", "sleep", 0.1)) for _ in range(8)]
        other = await h.call("calm", "s", "incr")
        results = await asyncio.gather(*calls, return_exceptions=True)
        busy = [r for r in results if isinstance(r, CallError) and r.kind == "busy"]
        assert other == 1
        # all eight arrive before the worker's first step: three fit the mailbox, five are refused
        assert len(busy) == 5
        assert [r for r in results if r == 0.1] == [0.1] * 3
        assert h.runtime.metrics.rejected["Busy"] == 5


async def test_call_deadline_is_an_internal_error():
    async with Harness(Counter, call_timeout=0.1) as h:
        with pytest.raises(CallError) as err:
            await h.call("c", "s", "sleep", 5)
        assert err.value.name == "Timeout"
        assert await h.call("c", "s", "incr") == 1


class FlakyInit(CA):
    """on_init fails ``FlakyInit.failures`` times, then works."""

    failures = 0

    async def on_init(self):
        if FlakyInit.failures > 0:
            FlakyInit.failures -= 1
            raise RuntimeError("cannot init yet")
        self.state["ready"] = True

    @method
    async def ping(self):
        return "pong"


async def test_failed_init_creates_nothing_and_retries_later(tmp_path):
    FlakyInit.failures = 2
    async with Harness(FlakyInit, db=tmp_path / "b.db") as h:
        for _ in range(2):
            with pytest.raises(CallError) as err:
                await h.call("c", "s", "ping")
            assert err.value.name == "NotReady"
            assert await h.store.names() == []
        assert await h.call("c", "s", "ping") == "pong"  # the next call tries on_init again, and it works now
        assert await h.store.names() == ["c"]
        assert h.state("c") == {"ready": True}
        await h.restart()
        assert await h.call("c", "s", "ping") == "pong"


class GatedStore(MemoryStore):
    """Holds every commit until released, to watch what leaves before durability."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0  # commits that reached the store and wait at the gate

    async def commit(self, changes):
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        await super().commit(changes)


@pytest.fixture
async def gated():
    """A Harness whose store holds commits until its gate opens; CA "c" already exists and the gate is shut."""
    h = Harness(Counter)
    h.store = GatedStore()
    async with h:
        h.store.gate.set()
        await h.call("c", "s", "incr")
        h.store.gate.clear()
        yield h, h.store


async def test_nothing_is_published_before_its_commit_is_durable(gated):
    h, store = gated
    before = len(h.sent("c", "s"))
    task = asyncio.create_task(h.call("c", "s", "notify_to", "s", "hello"))
    await until(lambda: store.waiting == 1, "the call's commit to reach the store")
    assert len(h.sent("c", "s")) == before  # ran, but neither reply nor notification left
    assert not task.done()
    store.gate.set()
    assert await task == 1
    kinds = [m["t"] for m in h.sent("c", "s")[before:]]
    assert kinds == ["reply", "note"]


async def test_pipelined_calls_commit_in_batches_and_reply_in_order(gated):
    h, store = gated
    tasks = [asyncio.create_task(h.call("c", "s", "incr")) for _ in range(20)]
    actor = h.runtime.actors["c"]
    # every call has run (pipelined behind the first commit, which waits at the gate) before anything is durable
    await until(lambda: actor.ca.state["n"] == 21 and store.waiting == 1, "all twenty calls to run")
    assert not any(t.done() for t in tasks)
    store.gate.set()
    assert await asyncio.gather(*tasks) == list(range(2, 22))
    assert store.commits <= 4  # group commit: far fewer transactions than calls


async def test_failed_commit_answers_unavailable_and_reloads_committed_state():
    async with Harness(Counter) as h:
        assert await h.call("c", "s", "incr") == 1
        h.store.fail_next = StoreError("disk full")
        with pytest.raises(CallError) as err:
            await h.call("c", "s", "incr")
        assert err.value.kind == "unavailable"
        assert await h.call("c", "s", "incr") == 2  # the lost increment was never visible
        assert h.state("c")["n"] == 2


class HeldPulsing(Pulsing):
    """Pulsing, with a call that runs until the test opens ``HeldPulsing.release``."""

    release: ClassVar[asyncio.Event] = asyncio.Event()

    @method
    async def held(self):
        await HeldPulsing.release.wait()
        return self.state["pulses"]


async def test_pulses_run_commit_and_never_pile_up():
    HeldPulsing.release = asyncio.Event()
    async with Harness(HeldPulsing, pulse=0.02) as h:
        await h.call("p", "s", "pulses")
        await h.call("clock", "s", "pulses")  # an idle CA: its pulses count the pulse ticks
        actor = h.runtime.actors["p"]
        held = asyncio.create_task(h.call("p", "s", "held"))
        await until(lambda: PULSE in actor.mailbox, "a pulse to queue behind the running call")
        ticks = await h.call("clock", "s", "pulses")
        while await h.call("clock", "s", "pulses") < ticks + 5:  # five more ticks pass while "p" is busy
            assert list(actor.mailbox) == [PULSE]  # ... and at most one pulse ever waits for it
            await asyncio.sleep(0.01)
        assert list(actor.mailbox) == [PULSE]
        HeldPulsing.release.set()
        during = await held
        # the one queued pulse runs after the call, and later ticks keep pulsing (each committed)
        deadline = asyncio.get_running_loop().time() + 10
        while await h.call("p", "s", "pulses") < during + 6:
            assert asyncio.get_running_loop().time() < deadline, "pulses stopped"
            await asyncio.sleep(0.01)
        await h.restart()  # what counted was committed
        n = h.state("p")["pulses"]
        assert n >= during + 6
        assert h.outq("p", "watch") == [[i] for i in range(n - 4, n + 1)]  # default queue limit, oldest dropped


async def test_pulse_notifications_go_to_sessions_and_ack_clears_them():
    async with Harness(Pulsing) as h:
        await h.call("p", "s", "pulses")
        for _ in range(3):
            await h.pulse("p")
        assert h.outq("p", "watch") == [[1], [2], [3]]
        await h.ack("p", "watch", 2)
        assert h.outq("p", "watch") == [[3]]
        answer = await h.sync("p", "watch", 2)
        assert answer == [{"t": "sync", "first": 3, "next": 4}, {"t": "note", "seq": 3, "args": [3]}]


async def test_sync_on_unknown_ca_answers_without_creating_it():
    async with Harness(Counter) as h:
        assert await h.sync("ghost", "s", 0) == [{"t": "sync", "first": 1, "next": 1}]
        assert "ghost" not in h.runtime.actors


async def test_raw_requests_are_validated_before_admission():
    async with Harness(Counter) as h:
        reply = await h.send("c", Call("s", "cbor", "r1", "record", ["a", "b"]))
        assert reply["err"]["kind"] == "bad_request"


async def test_without_autocreate_only_registered_cas_exist(tmp_path):
    async with Harness(Counter, db=tmp_path / "a.db", autocreate=False) as h:
        with pytest.raises(CallError) as err:
            await h.call("stranger", "s", "incr")
        assert err.value.kind == "not_found"
        assert await h.store.register("member") is True  # as `ca-bridge create` does, while the bridge runs
        assert await h.store.register("member") is False
        assert await h.call("member", "s", "incr") == 1
        assert h.state("member")["resumes"] == 0  # on_init ran (not on_resume) for a created CA
        with pytest.raises(CallError):
            await h.call("stranger", "s", "incr")  # misses are remembered: no store lookup per hostile name
        assert "stranger" not in h.runtime.actors


async def test_rate_limit_per_ca():
    async with Harness(Counter, rate=5.0, burst=3) as h:
        results = await asyncio.gather(*(h.call("c", "s", "incr") for _ in range(6)), return_exceptions=True)
        limited = [r for r in results if isinstance(r, CallError) and r.name == "RateLimited"]
        assert len(limited) == 3 and sorted(r for r in results if isinstance(r, int)) == [1, 2, 3]
        assert await h.call("other", "s", "incr") == 1  # limits are per CA
        await asyncio.sleep(0.25)  # a token comes back every 0.2 s
        assert await h.call("c", "s", "incr") == 4


async def test_a_late_retry_is_answered_whatever_the_other_sessions_of_the_ca_did(tmp_path):
    """Issue 14 item 17: the dedup window was the CA's last 64 requests, so four busy devices on one CA pushed a
    quiet device's record out before its retry came, and the retry ran again. The records are kept per session
    now (its last ``dedup_window`` = 8): the other sessions' load cannot evict them."""
    async with Harness(Counter, db=tmp_path / "d.db") as h:
        assert await h.call("c1", "quiet", "record", "once", request_id="early") == 1

        async def busy(sid):
            for i in range(50):
                assert await h.call("c1", sid, "record", f"{sid}-{i}", request_id=f"{sid}-{i}") == 1

        await asyncio.gather(*(busy(f"dev{k}") for k in range(4)))  # 200 calls: three times the old window
        hits = h.runtime.metrics.dedup_hits
        assert await h.call("c1", "quiet", "record", "once", request_id="early") == 1  # the recorded reply ...
        assert h.state("c1")["seen"]["once"] == 1  # ... and nothing ran again
        assert h.runtime.metrics.dedup_hits == hits + 1
        for k in range(4):  # every busy session's last 8 calls are still covered too
            assert await h.call("c1", f"dev{k}", "record", "x", request_id=f"dev{k}-42") == 1
        actor = h.runtime.actors["c1"]
        kept = {sid: len(records) for sid, records in actor.dedup_sessions.items()}
        assert kept["quiet"] == 1 and all(kept[f"dev{k}"] >= 8 for k in range(4))
        assert sum(kept.values()) <= 64 + 8 * 5  # bounded: the CA's last 64, and each session's last 8
        await h.restart()  # the store kept exactly the same records
        assert sorted(h.runtime.actors["c1"].dedup) == sorted(actor.dedup)
        assert await h.call("c1", "quiet", "record", "once", request_id="early") == 1
        assert await h.call("c1", "dev2", "record", "dev2-0", request_id="dev2-0") == 2  # long gone: ran again
        assert h.state("c1")["seen"]["once"] == 1


async def test_dedup_records_of_collected_sessions_are_bounded(tmp_path):
    """Records outlive a collected session (see above), but sessions come and go: those of sessions that no longer
    exist stay while they are among the CA's last 8 x ``dedup_window``."""
    from bridge.actor import CA_WINDOW
    from bridge.session import SessionLimits

    async with Harness(Counter, db=tmp_path / "o.db", limits=SessionLimits(max_sessions=2, dedup_window=2)) as h:
        for i in range(50):  # each session: two calls, and a pending notification that makes it collectable
            await h.call("c1", f"s{i}", "record", f"a{i}", request_id="r1")
            await h.call("c1", f"s{i}", "notify_to", f"s{i}", "pending", request_id="r2")
        actor = h.runtime.actors["c1"]
        gone = [sid for sid in actor.dedup_sessions if sid not in actor.sessions]
        assert len(actor.dedup) == CA_WINDOW * 2  # 100 calls: the last 16 (the live sessions' last two among them)
        assert "s0" not in actor.dedup_sessions and "s45" in gone and "s41" not in gone
        assert await h.call("c1", "s45", "record", "a45", request_id="r1") == 1  # collected, still covered
        await h.restart()
        assert sorted(h.runtime.actors["c1"].dedup) == sorted(actor.dedup)
        assert len((await h.store.load("c1")).dedup) == len(actor.dedup)
