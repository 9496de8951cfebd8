"""Unit tests of the device layer's pure parts, runnable under CPython and MicroPython.

Prints "OK <name>" per test and "DONE" at the end; any failure raises (exit status != 0).
Times are plain numbers (cloud ms): the scheduler and the estimator take them as arguments.
"""

from firmware_client.bundles import Scheduler
from firmware_client.maps import FromCloud, ToCloud
from firmware_client.timesync import Offset

T0 = 1700000000000


def ok(name):
    print("OK " + name)


def eq(a, b):
    if a != b:
        raise AssertionError("%r != %r" % (a, b))


def run_all(s, now):
    """Run every command due at ``now``; returns [(index, pos, method)]."""
    out = []
    while True:
        c = s.due(now)
        if c is None:
            return out
        out.append((c[1], c[2], c[3]))
        s.finished(c, True)


# ---------------------------------------------------------------- time offset


def t_offset_min_rtt():
    o = Offset()
    # device clock 37 s behind: rx/tx = local + 37000 (+ half the rtt)
    o.add(1000, 1400, 1000 + 37000 + 200, 1000 + 37000 + 200)  # rtt 400, offset 37000
    eq(o.offset, 37000)
    o.add(2000, 2020, 2000 + 37010 + 5, 2000 + 37010 + 15)  # rtt 10: offset 37010
    eq(o.offset, 37010)
    o.add(3000, 3300, 3000 + 36000, 3000 + 36000)  # rtt 300, worse: ignored for the estimate
    eq(o.offset, 37010)
    ok("offset_min_rtt")


def t_offset_window_of_8():
    o = Offset()
    o.add(0, 2, 101, 101)  # rtt 2, offset 100
    for _ in range(7):
        o.add(0, 50, 1025, 1025)  # rtt 50, offset 1000
    eq(o.offset, 100)
    o.add(0, 50, 1025, 1025)  # the rtt-2 sample leaves the window of 8
    eq(o.offset, 1000)
    eq(len(o.samples), 8)
    ok("offset_window_of_8")


def t_offset_threshold_and_return_to_zero():
    o = Offset()
    o.add(0, 10, 45, 45)  # offset 40: under 50 -> 0
    eq(o.estimate, 40)
    eq(o.offset, 0)
    o2 = Offset()
    o2.add(0, 10, 305, 305)  # 300
    eq(o2.offset, 300)
    o2.add(0, 2, 21, 21)  # better sample, 20: back to 0
    eq(o2.offset, 0)
    o3 = Offset(absolute=False)  # no wall clock: no threshold
    o3.add(0, 10, 25, 25)
    eq(o3.offset, 20)
    ok("offset_threshold_and_return_to_zero")


def t_offset_drops_slow_and_bad():
    o = Offset()
    eq(o.add(0, 2500, 1000, 1000), False)  # rtt 2500 > 2000
    eq(o.add(0, 10, 5, None), False)
    eq(o.add(10, 0, 5, 5), False)
    eq(o.samples, [])
    ok("offset_drops_slow_and_bad")


# ---------------------------------------------------------------- scheduler


def b(i, start, cmds, mode="at", **kw):
    d = {"i": i, "start": start, "c": cmds, "mode": mode}
    d.update(kw)
    return d


def t_bundle_runs_at_times_and_reports():
    s = Scheduler()
    s.add_all([b(1, T0 + 100, [[0, "heater", [True]], [5000, "heater", [False]]])], T0)
    eq(s.ba, [1])
    eq(s.next_at(), T0 + 100)
    eq(run_all(s, T0 + 99), [])
    eq(run_all(s, T0 + 100), [(1, 0, "heater")])
    eq(s.next_at(), T0 + 5100)
    eq(run_all(s, T0 + 5100), [(1, 1, "heater")])
    eq(s.bd, [[1, 0], [1, 1]])
    eq(s.br, [[1, True]])
    m = {}
    counts = s.taken(m)
    eq(m, {"ba": [1], "bd": [[1, 0], [1, 1]], "br": [[1, True]]})
    s.confirm(counts)
    eq(s.pending(), False)
    ok("bundle_runs_at_times_and_reports")


def t_late_first_arrival_whole():
    s = Scheduler()
    s.add(b(1, T0 - 1, [[0, "a", []], [10000, "b", []]]), T0)  # start past: nothing runs, tail included
    eq(s.next_at(), None)
    eq(s.br, [[1, False]])
    eq(s.bd, [])
    ok("late_first_arrival_whole")


def t_resent_judged_per_command():
    s = Scheduler()
    # re-sent after a reboot: pos 0 done, pos 1 passed (T0+1000 < now), pos 2 in the future
    s.add(b(4, T0, [[0, "a", []], [1000, "b", []], [5000, "c", []]], re=True, done=[0]), T0 + 2000)
    eq(run_all(s, T0 + 2000), [])
    eq(run_all(s, T0 + 6000), [(4, 2, "c")])
    eq(s.br, [[4, False]])  # b was skipped
    s2 = Scheduler()
    s2.add(b(5, T0, [[0, "a", []], [5000, "c", []]], re=True, done=[0]), T0 + 2000)
    run_all(s2, T0 + 5000)
    eq(s2.br, [[5, True]])  # the done command counts as run
    ok("resent_judged_per_command")


def t_resent_now_never_twice():
    s = Scheduler()
    s.add(b(6, T0, [[0, "a", []]], mode="now", re=True), T0)
    eq(run_all(s, T0), [])
    eq(s.br, [[6, False]])
    ok("resent_now_never_twice")


def t_superseding_at_new_start():
    s = Scheduler()
    s.add(b(1, T0, [[0, "on", []], [1000, "t1", []], [1000, "t2", []], [1000, "t3", []]]), T0)
    s.add(b(2, T0 + 1500, [[0, "x", []], [1000, "y", []]]), T0)
    # the old tail keeps running until bundle 2 starts (partition recovery tail)
    eq(run_all(s, T0 + 1000), [(1, 0, "on"), (1, 1, "t1")])
    # at T0+1500 bundle 2 starts: t2 (T0+2000) and t3 (T0+3000) are cancelled
    eq(run_all(s, T0 + 5000), [(2, 0, "x"), (2, 1, "y")])
    eq(s.br, [[1, False], [2, True]])
    ok("superseding_at_new_start")


def t_offset0_neither_cancels_nor_cancelled():
    s = Scheduler()
    s.add(b(1, T0, [[0, "a", []], [3000, "tail", []]]), T0)
    s.add(b(2, T0 + 1000, [[0, "only0", []]]), T0)  # only offset-0: does not cancel bundle 1's tail
    s.add(b(3, T0, [[0, "x0", []]], mode="now"), T0)  # apply(): neither
    eq(run_all(s, T0 + 3000), [(1, 0, "a"), (3, 0, "x0"), (2, 0, "only0"), (1, 1, "tail")])
    # bundle 5 starts later with a tail: cancels bundle 4's tail but not its own offset-0, nor 4's offset 0
    s.add(b(4, T0 + 4000, [[0, "p0", []], [2000, "ptail", []]]), T0 + 3000)
    s.add(b(5, T0 + 5000, [[0, "q0", []], [500, "qtail", []]]), T0 + 3000)
    eq(run_all(s, T0 + 9000), [(4, 0, "p0"), (5, 0, "q0"), (5, 1, "qtail")])
    eq(dict((r[0], r[1]) for r in s.br), {1: True, 2: True, 3: True, 4: False, 5: True})
    ok("offset0_neither_cancels_nor_cancelled")


def t_index_once_per_boot():
    s = Scheduler()
    bun = b(3, T0 + 100, [[0, "a", []]])
    s.add_all([bun, b(2, T0 + 50, [[0, "z", []]])], T0)  # first answer: several, in index order
    eq(s.add(bun, T0), False)  # the same index again: ignored (acked again)
    eq(s.add(b(1, T0 + 50, [[0, "old", []]]), T0), False)
    eq(run_all(s, T0 + 100), [(2, 0, "z"), (3, 0, "a")])
    eq(s.ba, [2, 3, 1])
    s.reset()  # a new boot: the index may come again (re-sent), done ones never run twice
    s.add(b(3, T0 + 100, [[0, "a", []], [100, "b", []]], re=True), T0 + 150)
    eq(run_all(s, T0 + 300), [(3, 1, "b")])
    ok("index_once_per_boot")


def t_now_safe_expiry():
    s = Scheduler()
    sent = T0
    s.add(b(1, sent + 600000, [[0, "a", []]], mode="safe"), sent + 600001)  # 10 min + 1 ms late: dropped
    eq(run_all(s, sent + 600001), [])
    eq(s.br, [[1, False]])
    s.add(b(2, sent + 600000, [[0, "b", []]], mode="safe"), sent + 599000)  # in time: runs on arrival
    eq(run_all(s, sent + 599000), [(2, 0, "b")])
    s.add(b(3, T0 + 99999999, [[0, "c", []]], mode="now"), T0 + 5)  # now: start ignored
    eq(run_all(s, T0 + 5), [(3, 0, "c")])
    ok("now_safe_expiry")


def t_raising_command_reported_done_result_false():
    s = Scheduler()
    s.add(b(1, T0, [[0, "a", []]]), T0)
    c = s.due(T0)
    s.finished(c, False)
    eq(s.bd, [[1, 0]])
    eq(s.br, [[1, False]])
    ok("raising_command_reported_done_result_false")


def t_unsynced_done_survives_reset():
    s = Scheduler()
    s.add(b(1, T0, [[0, "a", []], [1000, "b", []]]), T0)
    run_all(s, T0)
    s.reset()  # runtime restart before bd [1, 0] was synced; the bridge re-sends without it in done
    s.add(b(1, T0, [[0, "a", []], [1000, "b", []]], re=True), T0 + 10)
    eq(run_all(s, T0 + 1000), [(1, 1, "b")])
    ok("unsynced_done_survives_reset")


def t_malformed_bundle():
    s = Scheduler()
    s.add_all([{"i": 1, "start": T0, "c": []}, {"x": 1}, "junk"], T0)
    eq(s.br, [[1, False]])
    ok("malformed_bundle")


# ---------------------------------------------------------------- maps


def t_to_cloud_deltas_and_versions():
    m = ToCloud()
    m.load({"a": 1}, 4)
    eq(m.changed(), False)
    m["b"] = 2
    m["a"] = 3
    del m["a"]
    msg = {}
    eq(m.delta(msg), True)
    eq(msg, {"d": {"b": 2}, "x": ["a"], "tb": 4, "tv": 5})
    eq(m.inflight, (4, 5))
    m["c"] = 7  # meanwhile: goes in the next delta
    m.answered({"tv": 5})
    msg2 = {}
    m.delta(msg2)
    eq(msg2, {"d": {"c": 7}, "tb": 5, "tv": 6})
    m.answered({"tv": 6})
    eq(m.delta({}), False)
    ok("to_cloud_deltas_and_versions")


def t_to_cloud_resync_full():
    m = ToCloud()
    m.load({"a": 1}, 9)
    m["b"] = 2
    m.delta({})
    m.answered({"tv": 7, "resync": True})  # a gap on the bridge: next is the full map
    eq(m.changed(), True)
    msg = {}
    m.delta(msg)
    eq(msg, {"full": True, "d": {"a": 1, "b": 2}, "tb": 10, "tv": 10})
    m.answered({"tv": 10})
    eq(m.changed(), False)
    m["z"] = 0
    m.delta({})
    m.answered(None)  # an error answer: not applied, the full map next
    eq(m.full, True)
    ok("to_cloud_resync_full")


def t_to_cloud_keys_are_strings():
    m = ToCloud()
    try:
        m[1] = 2
    except TypeError:
        ok("to_cloud_keys_are_strings")
        return
    raise AssertionError("int key accepted")


def t_from_cloud_apply():
    f = FromCloud()
    f.load({"a": 1, "b": 2}, 3)
    eq(sorted(f.apply({"fv": 5, "fc": {"a": 1, "c": 3}, "fx": ["b"]})), ["b", "c"])
    eq(dict(f.items()), {"a": 1, "c": 3})
    eq(f.version, 5)
    eq(sorted(f.apply({"fv": 9, "ffull": True, "fc": {"c": 4, "d": 1}})), ["a", "c", "d"])
    eq(dict(f.items()), {"c": 4, "d": 1})
    eq(f.apply({"fv": 9}), [])
    try:
        f["x"] = 1
    except TypeError:
        ok("from_cloud_apply")
        return
    raise AssertionError("from_cloud writable")


# ---------------------------------------------------------------- runtime pieces (no network)


def t_error_default_logs_and_goes_on():
    from firmware_client import Device

    logged = []

    class D(Device):
        commands = {"a": 0}  # noqa: RUF012

        def a(self):
            raise ValueError("bad")

        def log(self, text):
            logged.append(text)

    d = D("dev", port=1)
    eq(d._call(d.a), False)
    eq(d._restart, False)
    eq(logged, ["error: ValueError: bad"])

    class R(D):
        def error(self, err):
            return err

    r = R("dev", port=1)
    r._call(r.a)
    eq(r._restart, True)
    try:
        D("dev", port=1).__class__.commands = {"nope": 0}
        D("dev", port=1)
    except ValueError:
        ok("error_default_logs_and_goes_on")
        return
    raise AssertionError("a command without a method was accepted")


for name in sorted(globals()):
    if name.startswith("t_"):
        globals()[name]()
print("DONE")
