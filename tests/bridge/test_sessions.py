"""caf_session's reference scenarios (sessions, limits, resume, persist, max sessions) and the gaps we close."""

from __future__ import annotations

import re

import pytest

from bridge.errors import AppError, CallError


async def test_sessions_scenario(harness, script):
    """notify/outq/get_all_session_ids across two sessions (caf_session test 'sessions', 0.4.1 semantics)."""
    seen = {}

    def op1(ca):
        seen["op1"] = (ca.session.get_session_id(), ca.session.outq(), ca.session.get_all_session_ids())
        ca.session.notify(["hello", "world"])

    def op2(ca):
        seen["op2"] = (ca.session.get_session_id(), ca.session.outq("foo"), ca.session.outq(),
                       ca.session.get_all_session_ids())
        ca.session.notify(["bye", "planet"])
        ca.session.notify(["hello2", "world2"], "foo")

    def op3(ca):
        seen["op3"] = (ca.session.outq("bar"), ca.session.outq("foo"), ca.session.get_all_session_ids())

    await harness.call("ca1", "foo", "run", script("op1", op1))
    await harness.call("ca1", "bar", "run", script("op2", op2))
    await harness.call("ca1", "foo", "run", script("op3", op3))
    # The current session exists as soon as a call runs in it (Caf.js >= 0.4.1 instantiates it in begin).
    assert seen["op1"] == ("foo", [], ["foo"])
    assert seen["op2"] == ("bar", [["hello", "world"]], [], ["foo", "bar"])
    assert seen["op3"] == ([["bye", "planet"]], [["hello", "world"], ["hello2", "world2"]], ["foo", "bar"])
    notes = [m for m in harness.sent("ca1", "foo") if m["t"] == "note"]
    assert [(m["seq"], m["args"]) for m in notes] == [(1, ["hello", "world"]), (2, ["hello2", "world2"])]


async def test_limits_scenario(harness, script):
    """limit_queue drops the oldest; <= 0 is unlimited (caf_session test 'limits')."""
    seen = {}

    def op1(ca):
        for i in range(1, 6):
            ca.session.notify([f"hello{i}"])
        ca.session.limit_queue(3)

    def op2(ca):
        seen["op2"] = ca.session.outq("foo")
        for i in range(6, 11):
            ca.session.notify([f"hello{i}"])

    def op3(ca):
        seen["op3"] = ca.session.outq("foo")
        ca.session.limit_queue(-1)
        ca.session.notify(["hello11"])

    for name, fn in (("op1", op1), ("op2", op2), ("op3", op3)):
        await harness.call("ca1", "foo", "run", script(name, fn))
    assert seen["op2"] == [["hello3"], ["hello4"], ["hello5"]]
    assert seen["op3"] == [["hello8"], ["hello9"], ["hello10"]]
    assert harness.outq("ca1", "foo") == [["hello8"], ["hello9"], ["hello10"], ["hello11"]]


async def test_limit_zero_is_unlimited_but_hard_cap_holds(tmp_path, script):
    from bridge.session import SessionLimits
    from bridge.testing import Harness
    from tests.bridge.conftest import Scripted

    def flood(ca):
        ca.session.limit_queue(0)
        for i in range(50):
            ca.session.notify([i])

    async with Harness(Scripted, limits=SessionLimits(hard_queue_cap=20)) as h:
        await h.call("ca1", "s", "run", script("flood", flood))
        assert h.outq("ca1", "s") == [[i] for i in range(30, 50)]


async def test_resume_keeps_queues_nonces_and_mementos(tmp_path, script):
    """Everything in a session survives a restart from SQLite (caf_session test 'resumeSession')."""
    from bridge.testing import Harness
    from tests.bridge.conftest import Scripted

    state = {}

    def op1(ca):
        ca.session.notify(["hello", "world"])
        state["nonce"] = ca.session.begin()["nonce"]
        assert ca.session.remember(state["nonce"], {"step": 3})

    def op2(ca):
        return [ca.session.outq("foo"), ca.session.memento(), ca.session.begin()["memento"]]

    async with Harness(Scripted, db=tmp_path / "r.db") as h:
        await h.call("ca1", "foo", "run", script("op1", op1))
        await h.restart()
        assert await h.call("ca1", "foo", "run", script("op2", op2)) == [
            [["hello", "world"]], {"step": 3}, {"step": 3}]


async def test_persist_scenario(harness, script):
    """begin/remember/end (caf_session test 'persist'), including last-remember-wins and idempotent end."""
    st = {}

    def begin(ca):
        res = ca.session.begin()
        st["nonce"] = res["nonce"]
        return res["memento"]

    def remember(value):
        return lambda ca: ca.session.remember(st["nonce"], value)

    def end(ca):
        return ca.session.end(st["nonce"])

    def op7(ca):
        assert ca.session.remember("bad nonce", "eeee") is False
        ca.session.remember(st["nonce"], "one")
        return ca.session.remember(st["nonce"], "two")

    call = harness.call
    assert await call("c", "foo", "run", script("b", begin)) is None
    assert isinstance(st["nonce"], str) and len(st["nonce"]) == 20
    assert await call("c", "foo", "run", script("r1", remember("hello"))) is True
    assert await call("c", "foo", "run", "b") == "hello"  # begin without a proper end returns the memento
    assert await call("c", "foo", "run", script("r2", remember("goodbye"))) is True
    assert await call("c", "foo", "run", script("e", end)) is True
    assert await call("c", "foo", "run", "e") is True  # second end is idempotent
    assert await call("c", "foo", "run", "b") is None  # begin after a proper end: no memento
    assert await call("c", "foo", "run", script("op7", op7)) is True
    assert await call("c", "foo", "run", "b") == "two"


async def test_last_begin_wins(harness, script):
    st = {}

    def begin(ca):
        return ca.session.begin()["nonce"]

    first = await harness.call("c", "s", "run", script("b", begin))
    second = await harness.call("c", "s", "run", "b")
    st["first"], st["second"] = first, second
    assert await harness.call("c", "s", "run", script("old", lambda ca: ca.session.remember(st["first"], 1))) is False
    assert await harness.call("c", "s", "run", script("new", lambda ca: ca.session.remember(st["second"], 1))) is True
    assert await harness.call("c", "s", "run", script("endold", lambda ca: ca.session.end(st["first"]))) is False


async def test_nonce_types_are_validated(harness, script):
    """Caf.js lets remember(null) succeed on a never-begun session; here a non-string nonce never matches."""

    def probe(ca):
        return [ca.session.remember(None, 1), ca.session.remember(7, 1), ca.session.end(None), ca.session.memento()]

    assert await harness.call("c", "s", "run", script("p", probe)) == [False, False, False, None]


async def test_read_your_writes_within_a_call(harness, script):
    def op(ca):
        nonce = ca.session.begin()["nonce"]
        ok = ca.session.remember(nonce, "m")
        ca.session.notify(["x"], "other")
        return [ok, ca.session.memento(), ca.session.outq("other"), ca.session.get_all_session_ids()]

    assert await harness.call("c", "s", "run", script("op", op)) == [True, "m", [["x"]], ["s", "other"]]


async def test_failed_call_rolls_back_every_session_effect(harness, script):
    st = {}

    def setup(ca):
        st["nonce"] = ca.session.begin()["nonce"]
        ca.session.remember(st["nonce"], "before")

    def effects(ca):
        ca.session.notify(["lost"])
        ca.session.notify(["lost"], "elsewhere")
        ca.session.limit_queue(1)
        ca.session.remember(st["nonce"], "after")
        ca.state["touched"] = True

    await harness.call("c", "s", "run", script("setup", setup))
    with pytest.raises(AppError):
        await harness.call("c", "s", "run_then_fail", script("effects", effects))
    assert harness.outq("c", "s") == []
    assert harness.sessions("c") == ["s"]
    assert "touched" not in harness.state("c")
    assert not [m for m in harness.sent("c", "s") if m["t"] == "note"]
    assert await harness.call("c", "s", "run", script("m", lambda ca: ca.session.memento())) == "before"


async def test_notify_pattern_and_customizer(harness, script):
    for sid in ("dev-1", "dev-2", "phone"):
        await harness.call("c", sid, "run", script("noop", lambda ca: None))

    def op(ca):
        ca.session.notify(["hi"], re.compile(r"^dev-"), lambda sid, args: [sid, *args])

    await harness.call("c", "phone", "run", script("op", op))
    assert harness.outq("c", "dev-1") == [["dev-1", "hi"]]
    assert harness.outq("c", "dev-2") == [["dev-2", "hi"]]
    assert harness.outq("c", "phone") == []


async def test_notify_copies_args(harness, script):
    def op(ca):
        payload = {"n": 1}
        ca.session.notify([payload])
        payload["n"] = 2  # must not leak into the queued notification
        return ca.session.outq()

    assert await harness.call("c", "s", "run", script("op", op)) == [[{"n": 1}]]


async def test_bad_notify_arguments_fail_the_call(harness, script):
    with pytest.raises(CallError) as err:
        await harness.call("c", "s", "run", script("op", lambda ca: ca.session.notify("not a list")))
    assert err.value.kind == "internal"
    with pytest.raises(CallError):
        await harness.call("c", "s", "run", script("op2", lambda ca: ca.session.notify([1], "bad/name")))
    with pytest.raises(CallError) as err:
        await harness.call("c", "s", "run", script("op3", lambda ca: ca.session.notify([object()])))
    assert err.value.name == "NotSerializable"


async def test_max_sessions_collects_unpinned_sessions_with_most_pending(tmp_path, script):
    from bridge.session import SessionLimits
    from bridge.testing import Harness
    from tests.bridge.conftest import Scripted

    async with Harness(Scripted, limits=SessionLimits(max_sessions=4)) as h:
        await h.call("c", "keep", "run", script("begin", lambda ca: ca.session.begin()))  # holds a nonce
        await h.call("c", "pinned", "run", script("pin", lambda ca: ca.session.limit_queue(5)))

        def fill(count):
            return lambda ca: [ca.session.notify([i]) for i in range(count)]

        await h.call("c", "one", "run", script("fill1", fill(1)))
        await h.call("c", "three", "run", script("fill3", fill(3)))
        for sid in ("keep", "pinned"):
            await h.call("c", sid, "run", script(f"fill-{sid}", fill(4)))
        assert h.sessions("c") == ["keep", "pinned", "one", "three"]
        await h.call("c", "new", "run", script("noop", lambda ca: None))
        # over the limit by one: the collectable session with the most pending goes; nonce/pinned never do
        assert h.sessions("c") == ["keep", "pinned", "one", "new"]
        await h.call("c", "newer", "run", "noop")
        assert h.sessions("c") == ["keep", "pinned", "new", "newer"]
        await h.call("c", "newest", "run", "noop")  # nothing collectable left: max_sessions is only a target
        assert set(h.sessions("c")) == {"keep", "pinned", "new", "newer", "newest"}


async def test_memento_pins_against_collection(tmp_path, script):
    from bridge.session import SessionLimits
    from bridge.testing import Harness
    from tests.bridge.conftest import Scripted

    async with Harness(Scripted, db=tmp_path / "m.db", limits=SessionLimits(max_sessions=2)) as h:
        st = {}

        def op(ca):
            st["nonce"] = ca.session.begin()["nonce"]
            ca.session.remember(st["nonce"], 5)
            ca.session.notify(["pending"])

        await h.call("c", "persistent", "run", script("op", op))
        for sid in ("a", "b", "c"):
            await h.call("c", sid, "run", script("n", lambda ca: ca.session.notify([1])))
        assert "persistent" in h.sessions("c")
        await h.restart()
        assert "persistent" in h.sessions("c")
