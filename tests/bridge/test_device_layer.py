"""The device layer, bridge side (issue 18, docs/DEVICES.md): dstart / dsync through the real ingress and runtime
(the Harness acting as the device), ``self.device`` in CA methods and hooks, versions, bundles, results, time
stamps, pokes, rollback, and the device record in the stores."""

from __future__ import annotations

import pytest

import bridge.device.api as device_api
from bridge import CA, AppError, Bundle, method
from bridge.device import DeviceLimits, DeviceRecord
from bridge.device.model import MAX_TOMBSTONES
from bridge.errors import BadRequest, CallError
from bridge.protocol import IOT_SESSION, encode_poke, parse_request
from bridge.testing import Harness

NOW = 1_800_000_000_000
CMDS = {"heater": 1, "beep": 0, "set": 2}


class Greenhouse(CA):
    hook_fails = False

    async def on_init(self):
        self.state["resumes"] = 0
        self.state["synced"] = []

    async def on_device_resume(self):
        self.state["resumes"] += 1

    async def on_device_sync(self, changed):
        self.state["synced"].append(sorted(changed))
        t = self.device.to_cloud.get("temp")
        if t is not None and t < 15 and self.device.pending is None:
            self.device.send(self.device.bundle().cmd(0, "heater", True).cmd(5000, "heater", False))
        if Greenhouse.hook_fails:
            self.device.from_cloud["hook"] = True
            raise RuntimeError("hook fails on purpose")

    @method
    def put(self, key, value):
        self.device.from_cloud[key] = value

    @method
    def drop(self, key):
        del self.device.from_cloud[key]

    @method
    def put_then_fail(self, key, value):
        self.device.from_cloud[key] = value
        self.device.send(self.device.bundle().cmd(0, "beep"))
        raise AppError("fails on purpose")

    @method
    def put_bad(self):
        self.device.from_cloud["bad"] = {1, 2}

    @method
    def send(self, cmds, offset_ms=None, at_ms=None, margin_ms=None):
        b = self.device.bundle(margin_ms)
        for after, name, args in cmds:
            b.cmd(after, name, *args)
        return self.device.send(b, offset_ms=offset_ms, at_ms=at_ms)

    @method
    def apply(self, name, args, safe=False):
        return self.device.apply(name, *args, safe=safe)

    @method
    def empty(self):
        return self.device.send(self.device.bundle())

    @method
    def view(self):
        d = self.device
        return {"tc": dict(d.to_cloud), "fc": dict(d.from_cloud), "results": dict(d.results), "pending": d.pending,
                "online": d.online, "now": d.now_ms()}

    @method
    def plain(self):
        self.state["n"] = self.state.get("n", 0) + 1
        return self.state["n"]


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    now = [NOW]
    monkeypatch.setattr(device_api, "wall_ms", lambda: now[0])
    Greenhouse.hook_fails = False
    return now


@pytest.fixture(params=["memory", "sqlite"])
async def h(request, tmp_path):
    db = None if request.param == "memory" else tmp_path / "d.db"
    async with Harness(Greenhouse, db=db, device=DeviceLimits(max_bundles=3)) as harness:
        yield harness


def ok(reply):
    assert "ok" in reply, reply
    return reply["ok"]


def err(reply):
    assert "err" in reply, reply
    return reply["err"]


async def call_err(h, *args):
    with pytest.raises((CallError, AppError)) as info:
        await h.call("gh", "default", *args)
    return info.value


# -- dstart ---------------------------------------------------------------------------------------------------


async def test_dstart_counts_boots_runs_the_hook_once_per_start_and_answers_both_maps(h):
    await h.call("gh", "default", "put", "target", 21)
    first = ok(await h.device_start("gh", CMDS, request_id="s1"))
    assert first["boot"] == 1 and first["tc"] == {} and first["tv"] == 0
    assert first["fc"] == {"target": 21} and first["fv"] == 1 and first["b"] == []
    assert h.state("gh")["resumes"] == 1
    again = ok(await h.device_start("gh", CMDS, request_id="s1"))  # re-sent: same start
    assert again["boot"] == 1 and h.state("gh")["resumes"] == 1
    assert ok(await h.device_start("gh", CMDS, request_id="s2"))["boot"] == 2
    assert h.state("gh")["resumes"] == 2
    assert h.device("gh").cmds == CMDS


async def test_a_dstart_may_create_the_ca_and_a_dsync_before_any_start_is_a_stale_boot(h):
    assert err(await h.device_sync("fresh", {"a": 1}, boot=0))["name"] == "NoSuchCA"  # a dsync creates no CA
    assert ok(await h.device_start("fresh", {}))["boot"] == 1
    assert h.state("fresh")["resumes"] == 1


# -- to_cloud deltas ------------------------------------------------------------------------------------------


async def test_deltas_apply_in_order_old_ones_are_ignored_and_a_gap_asks_for_the_whole_map(h):
    await h.device_start("gh", CMDS)
    a = ok(await h.device_sync("gh", {"temp": 20, "hum": 50}))
    assert a["tv"] == 1 and not a.get("resync")
    assert h.state("gh")["synced"] == [["hum", "temp"]]
    ok(await h.device_sync("gh", {"temp": 20, "hum": 51}, ["nothing"]))  # only hum changed; x of a missing key
    assert h.state("gh")["synced"][-1] == ["hum"]
    old = ok(await h.device_sync("gh", {"temp": 99}, tb=0, tv=1))  # an old delta: ignored
    assert old["tv"] == 2 and h.device("gh").to_cloud == {"temp": 20, "hum": 51}
    gap = ok(await h.device_sync("gh", {"temp": 1}, tb=5, tv=6))
    assert gap["resync"] is True and gap["tv"] == 2 and h.device("gh").to_cloud["temp"] == 20
    full = ok(await h.device_sync("gh", {"temp": 19}, full=True, tv=6))
    assert full["tv"] == 6 and h.device("gh").to_cloud == {"temp": 19}
    assert h.state("gh")["synced"][-1] == ["hum", "temp"]
    ok(await h.device_sync("gh", x=["temp"]))
    assert h.device("gh").to_cloud == {} and h.state("gh")["synced"][-1] == ["temp"]
    m = h.runtime.metrics
    assert (m.device_deltas, m.device_resyncs) == (4, 1)


async def test_a_sync_of_an_earlier_boot_is_refused_as_stale(h):
    await h.device_start("gh", CMDS)
    await h.device_start("gh", CMDS)
    e = err(await h.device_sync("gh", {"temp": 3}, boot=1))
    assert (e["kind"], e["name"]) == ("bad_request", "StaleBoot")
    assert h.device("gh").to_cloud == {}


async def test_a_to_cloud_over_the_limit_is_refused_and_changes_nothing(tmp_path):
    async with Harness(Greenhouse, device=DeviceLimits(map_max=100)) as h:
        await h.device_start("gh", CMDS)
        e = err(await h.device_sync("gh", {"blob": "x" * 200}))
        assert (e["kind"], e["name"]) == ("bad_request", "DeviceMapTooBig")
        assert h.device("gh").to_cloud == {} and h.device("gh").tv == 0


# -- from_cloud versions --------------------------------------------------------------------------------------


async def test_from_cloud_changes_are_versioned_and_a_device_gets_only_what_it_lacks(h):
    await h.device_start("gh", CMDS)
    await h.call("gh", "default", "put", "a", 1)
    await h.call("gh", "default", "put", "b", 2)
    await h.call("gh", "default", "put", "a", 1)  # the same value: no new version
    assert h.device("gh").fv == 2
    since1 = ok(await h.device_sync("gh", fv=1))
    assert since1["fc"] == {"b": 2} and since1["fv"] == 2 and "fx" not in since1 and "ffull" not in since1
    await h.call("gh", "default", "drop", "a")
    since2 = ok(await h.device_sync("gh", fv=2))
    assert since2.get("fc", {}) == {} and since2["fx"] == ["a"] and since2["fv"] == 3
    assert ok(await h.device_sync("gh", fv=3)).get("fc") is None
    ahead = ok(await h.device_sync("gh", fv=9))  # newer than anything here: replace the copy
    assert ahead["ffull"] is True and ahead["fc"] == {"b": 2}


async def test_past_the_tombstone_bound_an_old_device_gets_the_whole_map(h):
    await h.device_start("gh", CMDS)
    for i in range(MAX_TOMBSTONES + 1):
        await h.call("gh", "default", "put", f"k{i}", i)
    fv = h.device("gh").fv
    for i in range(MAX_TOMBSTONES + 1):
        await h.call("gh", "default", "drop", f"k{i}")
    await h.call("gh", "default", "put", "keep", 1)
    record = h.device("gh")
    assert len(record.tombs) == MAX_TOMBSTONES and record.floor == fv + 1
    stale = ok(await h.device_sync("gh", fv=fv))
    assert stale["ffull"] is True and stale["fc"] == {"keep": 1} and "fx" not in stale
    recent = ok(await h.device_sync("gh", fv=fv + 1))
    assert "ffull" not in recent and len(recent["fx"]) == MAX_TOMBSTONES and recent["fc"] == {"keep": 1}


async def test_a_failing_method_leaves_from_cloud_and_bundles_as_they_were(h):
    await h.device_start("gh", CMDS)
    await h.call("gh", "default", "put", "a", 1)
    before = h.device("gh").encode()
    e = await call_err(h, "put_then_fail", "a", 2)
    assert e.name == "AppError"
    assert h.device("gh").encode() == before
    view = await h.call("gh", "default", "view")
    assert view["fc"] == {"a": 1} and view["pending"] is None


async def test_a_value_outside_the_wire_subset_or_a_map_over_the_limit_fails_the_call(tmp_path):
    async with Harness(Greenhouse, device=DeviceLimits(map_max=64)) as h:
        await h.device_start("gh", CMDS)
        e = await call_err(h, "put_bad")
        assert e.name == "NotSerializable"
        e = await call_err(h, "put", "big", "x" * 100)
        assert e.name == "AppError" and "--device-map-max" in e.message
        assert h.device("gh").from_cloud == {} and h.device("gh").fv == 0


# -- bundles --------------------------------------------------------------------------------------------------


async def test_cmd_checks_names_arity_and_times_and_an_empty_bundle_is_refused(h):
    e = await call_err(h, "send", [[0, "heater", [True]]])
    assert e.name == "AppError" and "never started" in e.message and e.data["command"] == "heater"
    await h.device_start("gh", CMDS)
    e = await call_err(h, "send", [[0, "fan", [1]]])
    assert "'fan'" in e.message and e.data["command"] == "fan"
    e = await call_err(h, "send", [[0, "heater", [1, 2]]])
    assert "'heater'" in e.message and "takes 1" in e.message
    e = await call_err(h, "send", [[-1, "heater", [1]]])
    assert "'heater'" in e.message and "non-negative int" in e.message
    e = await call_err(h, "send", [[1.5, "heater", [1]]])
    assert "non-negative int" in e.message
    e = await call_err(h, "empty")
    assert "empty bundle" in e.message
    e = await call_err(h, "apply", "nope", [])
    assert e.data["command"] == "nope"
    assert h.device("gh").bundles == []


async def test_the_start_is_now_plus_offset_plus_margin_or_exactly_at_ms(h, clock):
    await h.device_start("gh", CMDS)
    i1 = await h.call("gh", "default", "send", [[0, "beep", []]])
    i2 = await h.call("gh", "default", "send", [[0, "beep", []]], 500)
    i3 = await h.call("gh", "default", "send", [[0, "beep", []]], 500, None, 10)
    i4 = await h.call("gh", "default", "send", [[0, "beep", []], [250, "heater", [False]]], 7, NOW + 42)
    starts = {b.index: (b.start, b.mode, b.cmds) for b in h.device("gh").bundles}
    assert [starts[i][0] for i in (i2, i3, i4)] == [NOW + 2500, NOW + 510, NOW + 42]
    assert i1 not in starts  # three unfinished bundles at most here: the oldest went, reported False
    assert starts[i4][2] == [[0, "beep", []], [250, "heater", [False]]] and starts[i4][1] == "at"
    assert h.device("gh").results == {i1: False}


async def test_identical_bundles_collapse_into_one_index(h):
    await h.device_start("gh", CMDS)
    a = await h.call("gh", "default", "send", [[0, "heater", [True]]])
    b = await h.call("gh", "default", "send", [[0, "heater", [True]]])
    c = await h.call("gh", "default", "send", [[0, "heater", [False]]])
    assert a == b != c and len(h.device("gh").bundles) == 2
    assert h.runtime.metrics.bundles_sent == 2


async def test_apply_runs_on_arrival_or_safe_within_ten_minutes(h):
    await h.device_start("gh", CMDS)
    now = await h.call("gh", "default", "apply", "heater", [True])
    safe = await h.call("gh", "default", "apply", "heater", [False], True)
    bundles = {b.index: b for b in h.device("gh").bundles}
    assert (bundles[now].mode, bundles[now].start) == ("now", NOW)
    assert (bundles[safe].mode, bundles[safe].start) == ("safe", NOW + 600_000)
    assert (await h.call("gh", "default", "view"))["pending"] == safe


async def test_bundles_are_delivered_until_acked_and_again_after_a_restart_with_their_done_commands(h):
    await h.device_start("gh", CMDS, request_id="boot1")
    i = await h.call("gh", "default", "send", [[0, "heater", [True]], [5000, "heater", [False]]])
    a = ok(await h.device_sync("gh"))
    assert [b["i"] for b in a["b"]] == [i] and a["b"][0]["mode"] == "at" and "re" not in a["b"][0]
    assert a["b"][0]["c"] == [[0, "heater", [True]], [5000, "heater", [False]]]
    acked = ok(await h.device_sync("gh", ba=[i], bd=[(i, 0)]))
    assert "b" not in acked
    assert "b" not in ok(await h.device_sync("gh"))
    restarted = ok(await h.device_start("gh", CMDS, request_id="boot2"))
    assert restarted["b"] == [{"i": i, "start": NOW + 2000, "c": a["b"][0]["c"], "mode": "at", "done": [0],
                               "re": True}]
    done = ok(await h.device_sync("gh", ba=[i], bd=[(i, 1)], br=[(i, True), (999, False)]))
    assert "b" not in done
    view = await h.call("gh", "default", "view")
    assert view["results"] == {i: True} and view["pending"] is None
    m = h.runtime.metrics
    assert (m.bundles_run, m.bundles_late) == (1, 0)


async def test_results_keep_the_last_32(h):
    await h.device_start("gh", CMDS)
    indices = []
    for n in range(34):
        indices.append(await h.call("gh", "default", "apply", "heater", [n]))
        ok(await h.device_sync("gh", br=[(indices[-1], n % 2 == 0)]))
    results = h.device("gh").results
    assert list(results) == indices[2:] and results[indices[-1]] is False and results[indices[-2]] is True


async def test_the_sync_hook_sees_the_new_map_and_may_send_a_bundle(h):
    await h.device_start("gh", CMDS)
    answer = ok(await h.device_sync("gh", {"temp": 10}))
    assert [b["c"] for b in answer["b"]] == [[[0, "heater", [True]], [5000, "heater", [False]]]]
    assert h.device("gh").pending() == answer["b"][0]["i"]


async def test_a_failing_sync_hook_keeps_the_map_change_and_rolls_back_only_its_own_effects(h):
    await h.device_start("gh", CMDS)
    Greenhouse.hook_fails = True
    answer = ok(await h.device_sync("gh", {"temp": 10}))
    record = h.device("gh")
    assert record.to_cloud == {"temp": 10} and record.tv == 1 and answer["tv"] == 1
    assert record.bundles == [] and "hook" not in record.from_cloud and "b" not in answer
    assert h.state("gh")["synced"] == []
    assert h.runtime.metrics.device_hook_errors == 1
    Greenhouse.hook_fails = False
    assert ok(await h.device_sync("gh", {"temp": 10}))["tv"] == 2  # the same value: no key changed, no hook
    assert h.state("gh")["synced"] == []


# -- time stamps and pokes ------------------------------------------------------------------------------------


async def test_fresh_replies_on_session_iot_carry_rx_and_tx_and_dedup_replays_do_not(h):
    start = await h.device_start("gh", CMDS)
    assert start["rx"] <= start["tx"] and abs(start["rx"] - __import__("time").time() * 1000) < 60_000
    assert {"rx", "tx"} <= set(await h.device_sync("gh"))
    fresh = await h.send("gh", _call(IOT_SESSION, "r1", "plain"))
    assert {"rx", "tx"} <= set(fresh) and fresh["ok"] == 1
    replay = await h.send("gh", _call(IOT_SESSION, "r1", "plain"))
    assert replay["ok"] == 1 and "rx" not in replay and "tx" not in replay
    other = await h.send("gh", _call("phone", "r2", "plain"))
    assert other["ok"] == 2 and "rx" not in other


async def test_a_poke_follows_a_commit_that_gives_the_device_something_new(h):
    await h.call("gh", "default", "put", "a", 1)  # the device never started, nor is it online: no poke
    assert encode_poke("cbor") and _pokes(h) == 0
    await h.device_start("gh", CMDS)
    await h.call("gh", "default", "put", "a", 2)
    assert _pokes(h) == 1
    await h.call("gh", "default", "put", "a", 2)  # nothing changed
    await h.call("gh", "default", "view")
    await h.call("gh", "default", "plain")
    assert _pokes(h) == 1
    await h.call("gh", "default", "send", [[0, "beep", []]])
    assert _pokes(h) == 2
    await call_err(h, "put_then_fail", "a", 3)  # rolled back: nothing to deliver
    assert _pokes(h) == 2
    ok(await h.device_sync("gh", {"temp": 10}))  # its own answer carries the hook's bundle: no poke
    assert _pokes(h) == 2


def _pokes(h):
    return sum(1 for m in h.sent("gh", IOT_SESSION) if m == {"t": "poke"})


def _call(session, rid, name, *args):
    from bridge.protocol import Call

    return Call(session, "cbor", rid, name, list(args))


# -- the wire -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("msg, problem", [
    ({"t": "dstart", "session": "default", "id": "a", "cmds": {}}, "session 'iot'"),
    ({"t": "dstart", "session": "iot", "id": "a", "cmds": {"x y": 1}}, "command names"),
    ({"t": "dstart", "session": "iot", "id": "a", "cmds": {"x": 17}}, "argument count"),
    ({"t": "dstart", "session": "iot", "id": "a", "cmds": [1]}, "'cmds'"),
    ({"t": "dstart", "session": "iot", "cmds": {}}, "'id'"),
    ({"t": "dsync", "session": "iot", "id": "a", "fv": 0}, "'boot'"),
    ({"t": "dsync", "session": "iot", "id": "a", "boot": 1, "fv": -1}, "'fv'"),
    ({"t": "dsync", "session": "iot", "id": "a", "boot": 1, "fv": 0, "d": {"a": 1}, "tb": 0, "tv": 2}, r"'tb' \+ 1"),
    ({"t": "dsync", "session": "iot", "id": "a", "boot": 1, "fv": 0, "d": {1: 1}}, "'d'"),
    ({"t": "dsync", "session": "iot", "id": "a", "boot": 1, "fv": 0, "ba": [-1]}, "'ba'"),
    ({"t": "dsync", "session": "iot", "id": "a", "boot": 1, "fv": 0, "bd": [[1]]}, "'bd'"),
    ({"t": "dsync", "session": "iot", "id": "a", "boot": 1, "fv": 0, "br": [[1, 1]]}, "'br'"),
    ({"t": "dsync", "session": "iot", "id": "a", "boot": 1, "fv": 0, "full": True, "x": ["a"]}, "'x'"),
])
def test_malformed_device_messages_are_refused_with_a_clear_message(msg, problem):
    import cbor2

    with pytest.raises(BadRequest, match=problem) as info:
        parse_request(cbor2.dumps(msg), 65536)
    assert "\n" not in str(info.value)


async def test_a_malformed_device_message_is_answered_and_changes_nothing(h):
    import cbor2

    await h.device_start("gh", CMDS)
    before = h.device("gh").encode()
    reply = await h.send("gh", cbor2.dumps({"t": "dsync", "session": "iot", "id": "q", "boot": 1, "fv": 0,
                                            "d": {"a": 1}, "tb": 0, "tv": 5}))
    assert err(reply)["kind"] == "bad_request"
    assert h.device("gh").encode() == before


# -- storage --------------------------------------------------------------------------------------------------


async def test_the_device_record_survives_a_restart(h):
    await h.device_start("gh", CMDS)
    ok(await h.device_sync("gh", {"temp": 21}))
    await h.call("gh", "default", "put", "target", 19)
    i = await h.call("gh", "default", "send", [[0, "beep", []]])
    before = h.device("gh")
    await h.restart()
    after = h.device("gh")
    assert after == before and after.to_cloud == {"temp": 21} and after.bundles[0].index == i
    assert ok(await h.device_sync("gh"))["b"][0]["i"] == i


async def test_an_evicted_ca_keeps_its_device_record(tmp_path):
    async with Harness(Greenhouse, db=tmp_path / "e.db", preload=False, max_resident=1) as h:
        await h.device_start("gh", CMDS)
        ok(await h.device_sync("gh", {"temp": 21}))
        await h.call("gh", "default", "put", "target", 19)
        await h.call("other", "default", "plain")
        await h.settle()
        h.runtime.evict_idle()
        assert "gh" not in h.runtime.actors
        answer = ok(await h.device_sync("gh", fv=0, boot=1))
        assert answer["tv"] == 1 and answer["fc"] == {"target": 19}
        assert h.device("gh").to_cloud == {"temp": 21}


def test_bundle_is_exported_and_a_record_round_trips():
    assert Bundle.__module__ == "bridge.device.api"
    r = DeviceRecord(to_cloud={"a": [1, 2]}, tv=3, cmds={"x": 1}, boot=2, start_id="s")
    assert DeviceRecord.decode(r.encode()) == r


class FailingResume(Greenhouse):
    async def on_device_resume(self):
        self.state["resumes"] += 1
        self.device.from_cloud["resumed"] = True
        raise RuntimeError("resume hook fails on purpose")


async def test_a_failing_resume_hook_keeps_the_start_and_rolls_back_its_own_effects():
    async with Harness(FailingResume) as h:
        start = ok(await h.device_start("gh", CMDS, request_id="s1"))
        assert start["boot"] == 1 and start["fc"] == {}
        record = h.device("gh")
        assert record.boot == 1 and record.cmds == CMDS and record.from_cloud == {}
        assert h.state("gh")["resumes"] == 0
        assert h.runtime.metrics.device_hook_errors == 1
        assert ok(await h.device_sync("gh", {"temp": 20}))["tv"] == 1  # the start stands: syncs work


async def test_an_online_device_is_poked_even_if_it_started_under_another_bridge_process(h):
    await h.device_start("gh", CMDS)
    await h.restart()  # no dstart in this process
    await h.call("gh", "default", "put", "a", 1)
    assert _pokes(h) == 0
    await h.presence("gh", IOT_SESSION, True)
    await h.call("gh", "default", "put", "a", 2)
    assert _pokes(h) == 1


@pytest.mark.parametrize("codec_name", ["cbor", "json"])
def test_stamped_replies_decode_with_both_times(codec_name):
    from bridge import codec
    from bridge.protocol import reply_err, reply_ok, stamp_reply

    for reply in (reply_ok("r", {"a": [1]}), reply_err("r", {"kind": "app"})):
        stamped = codec.decode(stamp_reply(codec.encode(reply, codec_name), 5, 7), codec_name)
        assert stamped == {**reply, "rx": 5, "tx": 7}


async def test_a_json_device_gets_json_answers_with_both_times(h):
    import json

    reply = await h.send("gh", json.dumps({"t": "dstart", "session": "iot", "id": "j1", "cmds": {"beep": 0}}).encode())
    assert reply["ok"]["boot"] == 1 and type(reply["rx"]) is int and reply["tx"] >= reply["rx"]
    await h.call("gh", "default", "put", "a", 1)
    assert h.sent("gh", IOT_SESSION)[-1] == {"t": "poke"}
    assert h.runtime.actors["gh"].sessions[IOT_SESSION].codec == "json"  # the poke's codec
    reply = await h.send("gh", json.dumps({"t": "dsync", "session": "iot", "id": "j2", "boot": 1, "fv": 0,
                                           "tb": 0, "tv": 1, "d": {"x": [1, 2]}}).encode())
    assert reply["ok"]["tv"] == 1 and reply["ok"]["fc"] == {"a": 1} and "rx" in reply


async def test_a_start_already_past_is_accepted_the_device_reports_it_late(h):
    await h.device_start("gh", CMDS)
    i = await h.call("gh", "default", "send", [[0, "beep", []]], None, NOW - 60_000)
    assert h.device("gh").bundles[0].start == NOW - 60_000
    ok(await h.device_sync("gh", ba=[i], br=[(i, False)]))
    assert h.device("gh").results == {i: False} and h.runtime.metrics.bundles_late == 1
