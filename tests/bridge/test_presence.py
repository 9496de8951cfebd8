"""Presence: the per-session online flag, the on_presence hook, and old session rows without the flag."""

from __future__ import annotations

import asyncio

import pytest

from bridge import CA, codec, method
from bridge.errors import BadRequest, CallError
from bridge.protocol import Call, Presence, parse_request
from bridge.session import SessionData, SessionLimits
from bridge.store.sqlite import SQLiteStore
from bridge.store import Change, SessionWrite
from bridge.testing import Harness


class Watcher(CA):
    """Records every presence transition in its state and tells the session about it."""

    fail = False  # class-level switch: the hook raises after making its effects

    async def on_init(self):
        self.state["seen"] = []

    async def on_presence(self, session_id, online):
        self.state["seen"].append([session_id, online, self.session.get_session_id(), self.session.is_online()])
        self.session.notify(["presence", online])
        if Watcher.fail:
            raise RuntimeError("hook failed on purpose")

    @method
    def online(self, session_id):
        return self.session.is_online(session_id)

    @method
    def sessions(self):
        return self.session.get_all_session_ids()


class PlainHook(CA):
    """A plain (not async) on_presence, and an async one for session "slow" that runs past the deadline."""

    def on_presence(self, session_id, online):
        if session_id == "slow":
            return asyncio.sleep(5)
        self.state[session_id] = online
        return None

    @method
    def get(self):
        return self.state


@pytest.fixture(params=["memory", "sqlite"])
async def h(request, tmp_path):
    db = None if request.param == "memory" else tmp_path / "p.db"
    Watcher.fail = False
    async with Harness(Watcher, db=db) as harness:
        yield harness
    Watcher.fail = False


def notes(h, ca, sid):
    return [m["args"] for m in h.sent(ca, sid) if m["t"] == "note"]


async def test_presence_sets_the_flag_and_calls_the_hook_once_per_transition(h):
    """online, online, offline, offline, online: three transitions, three hook runs, each in its own session."""
    await h.call("w", "default", "sessions")  # create the CA
    for online in (True, True, False, False, True):
        await h.presence("w", "dev1", online)
    assert h.state("w")["seen"] == [["dev1", True, "dev1", True], ["dev1", False, "dev1", False],
                                    ["dev1", True, "dev1", True]]
    assert notes(h, "w", "dev1") == [["presence", True], ["presence", False], ["presence", True]]
    assert h.is_online("w", "dev1")
    assert await h.call("w", "default", "online", "dev1") is True
    await h.presence("w", "dev1", False)
    assert await h.call("w", "default", "online", "dev1") is False
    assert len(h.state("w")["seen"]) == 4
    assert h.runtime.metrics.presence_changes == 4  # repeats are not transitions


async def test_presence_of_a_new_session_creates_it_and_offline_first_runs_no_hook(h):
    await h.call("w", "default", "sessions")
    await h.presence("w", "fresh", False)  # no change from "does not exist" (offline): no hook
    assert h.state("w")["seen"] == []
    assert await h.call("w", "default", "sessions") == ["default", "fresh"]
    await h.presence("w", "new", True)
    assert await h.call("w", "default", "sessions") == ["default", "fresh", "new"]
    assert h.state("w")["seen"] == [["new", True, "new", True]]


async def test_failing_hook_rolls_back_its_effects_but_keeps_the_presence(h):
    await h.call("w", "default", "sessions")
    Watcher.fail = True
    await h.presence("w", "dev1", True)
    assert h.state("w")["seen"] == []  # the hook's state change was rolled back ...
    assert notes(h, "w", "dev1") == [] and h.outq("w", "dev1") == []  # ... and so was its notification
    assert h.is_online("w", "dev1")  # the flag committed anyway
    await h.presence("w", "dev1", True)  # no transition: the hook is not retried
    Watcher.fail = False
    await h.presence("w", "dev1", False)
    assert h.state("w")["seen"] == [["dev1", False, "dev1", False]]


async def test_failing_hook_keeps_the_presence_in_the_store(tmp_path):
    Watcher.fail = True
    try:
        async with Harness(Watcher, db=tmp_path / "p.db") as h:
            await h.call("w", "default", "sessions")
            await h.presence("w", "dev1", True)
            await h.restart()
            assert h.is_online("w", "dev1")
            assert h.state("w")["seen"] == []
    finally:
        Watcher.fail = False


async def test_presence_survives_a_restart_without_running_the_hook_again(tmp_path):
    async with Harness(Watcher, db=tmp_path / "p.db") as h:
        await h.call("w", "default", "sessions")
        await h.presence("w", "dev1", True)
        await h.restart()
        assert await h.call("w", "default", "online", "dev1") is True
        await h.presence("w", "dev1", True)  # the device reconnecting after the restart: same state
        assert h.state("w")["seen"] == [["dev1", True, "dev1", True]]
        await h.presence("w", "dev1", False)
        assert len(h.state("w")["seen"]) == 2


async def test_is_online_is_false_for_unknown_sessions_and_cas(h):
    assert await h.call("w", "default", "online", "nobody") is False
    assert not h.is_online("w", "nobody") and not h.is_online("nosuchca", "default")
    await h.presence("ghost", "dev1", True)  # a presence for a CA that does not exist is dropped
    assert "ghost" not in h.runtime.actors
    assert await h.store.load("ghost") is None


async def test_plain_def_hook_and_hook_deadline(tmp_path):
    async with Harness(PlainHook, call_timeout=0.2) as h:
        assert await h.call("p", "default", "get") == {}
        await h.presence("p", "dev1", True)
        assert h.state("p") == {"dev1": True}
        await h.presence("p", "slow", True)  # the hook sleeps past the deadline: rolled back, flag kept
        assert h.state("p") == {"dev1": True}
        assert h.is_online("p", "slow")


async def test_online_sessions_are_not_collected(tmp_path):
    """Beyond max_sessions, an online session with pending notifications stays; an offline one goes."""
    async with Harness(Watcher, limits=SessionLimits(max_sessions=3)) as h:
        await h.call("w", "default", "sessions")
        for online in (True, False, True):
            await h.presence("w", "on", online)  # online, with the fullest queue (3 notifications, never acked)
        await h.presence("w", "off", True)
        await h.presence("w", "off", False)  # two notifications queued, offline: collectable
        await h.presence("w", "new", False)  # a fourth session: one must go
        assert await h.call("w", "default", "sessions") == ["default", "on", "new"]
        assert h.is_online("w", "on")


async def test_old_six_field_session_rows_load_offline(tmp_path):
    """A store written before presence existed: its session rows have six fields and load as offline."""
    path = tmp_path / "old.db"
    store = SQLiteStore(path)
    await store.open()
    old_meta = codec.dumps([5, False, None, None, 1, "cbor"])
    await store.commit([Change("w", codec.dumps({"seen": []}), {"dev1": SessionWrite(meta=old_meta)})])
    await store.close()
    async with Harness(Watcher, db=path) as h:
        assert await h.call("w", "default", "sessions") == ["dev1", "default"]
        assert await h.call("w", "default", "online", "dev1") is False
        await h.presence("w", "dev1", True)
        assert h.state("w")["seen"] == [["dev1", True, "dev1", True]]
        await h.restart()
        assert h.is_online("w", "dev1")
        record = await h.store.load("w")
        # now seven fields; next_seq is 2 because the hook notified once
        assert codec.loads(record.sessions["dev1"].meta) == [5, False, None, None, 2, "cbor", True]


def test_session_meta_round_trip_with_and_without_the_flag():
    data = SessionData(7, True, "n", {"m": 1}, 3, "json", online=True)
    assert SessionData.from_meta(data.meta()).meta() == data.meta()
    assert SessionData.from_meta(codec.loads(codec.dumps(data.meta()))).online is True
    old = SessionData.from_meta([5, False, None, None, 1, "cbor"])
    assert (old.limit, old.online, old.codec) == (5, False, "cbor")
    assert data.copy().online is True


@pytest.mark.parametrize("payload", [
    codec.dumps({"t": "presence", "session": "dev1", "online": True}),
    b'{"t": "presence", "session": "dev1", "online": true}',
])
def test_parse_presence(payload):
    req = parse_request(payload, 1024)
    assert (req.kind, req.session, req.online) == ("presence", "dev1", True)


@pytest.mark.parametrize("msg", [
    {"t": "presence", "session": "dev1"},
    {"t": "presence", "session": "dev1", "online": 1},
    {"t": "presence", "session": "dev1", "online": "true"},
    {"t": "presence", "session": "a/b", "online": True},
])
def test_parse_presence_rejects_bad_fields(msg):
    with pytest.raises(BadRequest):
        parse_request(codec.dumps(msg), 1024)


class Gate(Watcher):
    """A Watcher with a call that holds the CA until the test opens the gate (so its mailbox fills up)."""

    entered: asyncio.Event
    gate: asyncio.Event

    @method
    async def hold(self):
        Gate.entered.set()
        await Gate.gate.wait()
        return True


@pytest.mark.parametrize("db", ["memory", "sqlite"])
async def test_presence_reaching_a_full_mailbox_is_coalesced_not_lost(tmp_path, db):
    """Issue 14 item 3: a presence message for a CA whose mailbox was full was dropped, so the CA went on believing
    a gone device online. Now it never takes a mailbox slot: one waiting message per session, updated in place by
    later ones, so the CA ends with each session's latest state and runs on_presence once per real change."""
    Gate.entered, Gate.gate = asyncio.Event(), asyncio.Event()
    async with Harness(Gate, db=None if db == "memory" else tmp_path / "p.db", mailbox=2) as h:
        await h.presence("w", "dev1", True)  # nothing for a CA that does not exist yet
        await h.call("w", "default", "sessions")
        await h.presence("w", "dev1", True)
        await h.presence("w", "dev2", True)
        held = asyncio.ensure_future(h.call("w", "default", "hold"))
        await asyncio.wait_for(Gate.entered.wait(), 10)
        rt = h.runtime
        queued = [asyncio.get_running_loop().create_future() for _ in range(2)]
        for i, future in enumerate(queued):
            rt.submit("w", Call("default", "cbor", f"q{i}", "online", ["dev1"]), future)
        with pytest.raises(CallError) as err:  # the mailbox is full now
            await h.call("w", "default", "sessions")
        assert err.value.kind == "busy"
        for online in (False, True, False):  # dev1 flaps: one waiting message ends as its latest state, offline
            rt.submit("w", Presence("dev1", "cbor", online))
        rt.submit("w", Presence("dev2", "cbor", False))
        rt.submit("w", Presence("dev3", "cbor", True))  # a new session
        Gate.gate.set()
        assert await held is True
        assert [(await q)["ok"] for q in queued] == [True, True]  # queued before the presence came: ran first
        await h.settle()
        assert (h.is_online("w", "dev1"), h.is_online("w", "dev2"), h.is_online("w", "dev3")) == (False, False, True)
        assert h.state("w")["seen"] == [["dev1", True, "dev1", True], ["dev2", True, "dev2", True],
                                        ["dev1", False, "dev1", False], ["dev2", False, "dev2", False],
                                        ["dev3", True, "dev3", True]]
        assert rt.actors["w"].presence == {} and rt.metrics.presence_changes == 5
        await h.presence("w", "dev1", True)  # afterwards, each message waits on its own again
        assert h.state("w")["seen"][-1] == ["dev1", True, "dev1", True]
        if db == "sqlite":
            await h.restart()
            assert (h.is_online("w", "dev1"), h.is_online("w", "dev2"), h.is_online("w", "dev3")) == (True, False, True)


async def test_waiting_presence_of_new_sessions_is_bounded(tmp_path):
    """Coalescing needs one waiting message per session: for sessions that do not exist yet (any device may name
    new ones), at most ``mailbox`` wait; those of existing sessions always get in."""
    Gate.entered, Gate.gate = asyncio.Event(), asyncio.Event()
    async with Harness(Gate, mailbox=2) as h:
        await h.presence("w", "known", False)  # no CA yet: dropped
        await h.call("w", "known", "sessions")
        held = asyncio.ensure_future(h.call("w", "default", "hold"))
        await asyncio.wait_for(Gate.entered.wait(), 10)
        rt = h.runtime
        for i in range(5):
            rt.submit("w", Presence(f"new{i}", "cbor", True))
        rt.submit("w", Presence("known", "cbor", True))
        assert sorted(rt.actors["w"].presence) == ["known", "new0", "new1"]
        assert rt.presence_dropped == 3
        Gate.gate.set()
        await held
        await h.settle()
        assert h.is_online("w", "known") and h.is_online("w", "new1") and not h.is_online("w", "new2")
