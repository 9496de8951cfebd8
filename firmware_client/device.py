"""The device runtime: synced maps, timed command bundles and time sync on one serial queue.

See firmware_client/README.md (Device) and DEVICE_SPEC.md. The application subclasses ``Device``
and defines ``setup()``, ``loop()``, ``commands`` and the command methods; ``run()`` (blocking) or
``arun()`` (asyncio) drive everything. Nothing runs concurrently: setup, loop, commands and
notifications are called one at a time, and ``from_cloud`` changes only between those calls.
"""

import gc
import sys
import time

from firmware_client.bundles import Scheduler
from firmware_client.client import CAError, Client, valid_name
from firmware_client.compat import deadline_in, remaining, ticks_add, ticks_diff, ticks_ms
from firmware_client.maps import FromCloud, ToCloud
from firmware_client.timesync import Offset

_MICRO = sys.implementation.name == "micropython"
_Y2024 = 1704067200000  # 2024-01-01 in Unix epoch ms: a wall clock below this is taken as not set
_EPOCH = 946684800000 if time.gmtime(0)[0] == 2000 else 0  # MicroPython ports counting from 2000
_MAX_NOTES = 16  # notifications waiting for the serial queue
_MAX_WAIT = 1000  # ms: the longest single wait (re-sends and stop() are checked at least this often)
_START, _RUN, _STOPPED = 0, 1, 2
if _MICRO:
    gc.collect()  # the garbage of loading the modules above, before the application allocates
_LOW = (gc.mem_free() + gc.mem_alloc()) // 4 if _MICRO else 0  # Device._tidy(): collect when less is free


def wall_ms():
    """The wall clock in Unix epoch ms, or None when it does not look set (no RTC, not synced)."""
    try:
        ms = time.time_ns() // 1000000
    except AttributeError:
        ms = int(time.time() * 1000)
    ms += _EPOCH
    return ms if ms >= _Y2024 else None


class _Full(Exception):
    """The notification queue is full: the client keeps the notification and delivers it again."""


class Device:
    """Subclass it: see the module doc and the package README.

    ``Device(name, host=..., port=None, user=None, password=None, ssl=None)`` plus tuning keywords:
    ``heartbeat`` (s, 30: a sync at least this often), ``prefix``, ``timeout`` and
    ``connect_timeout`` (s, 3: one connection attempt blocks at most this long), ``resend``,
    ``keepalive``, ``codec``, ``bufsize``; override ``log(text)`` to redirect messages.
    """

    commands = {}  # noqa: RUF012 - the fixed API (issue 18). name -> number of arguments: what a bundle may call (announced at start)

    def __init__(
        self,
        name,
        host="127.0.0.1",
        port=None,
        user=None,
        password=None,
        ssl=None,
        *,
        heartbeat=30,
        prefix="ca",
        timeout=10.0,
        connect_timeout=3.0,
        resend=3.0,
        keepalive=30,
        codec="cbor",
        bufsize=None,
    ):
        for k in self.commands:
            n = self.commands[k]
            if not valid_name(k) or not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 16 \
                    or not hasattr(self, k):
                raise ValueError("commands: %r needs a method and an argument count 0..16" % (k,))
        if len(self.commands) > 64:
            raise ValueError("commands: at most 64")
        self.name = name
        self.client = Client(
            name,
            "iot",
            host=host,
            port=port,
            user=user,
            password=password,
            ssl=ssl,
            prefix=prefix,
            timeout=timeout,
            connect_timeout=connect_timeout,
            resend=resend,
            keepalive=keepalive,
            codec=codec,
            bufsize=(2048 if _MICRO else None) if bufsize is None else bufsize,
        )
        self.client.clock = self.local_ms
        self.client.on_notify = self._note
        self.client.on_other = self._other
        self.to_cloud = ToCloud()
        self.from_cloud = FromCloud()
        self.boot = None  # the bridge's start number of this device (from dstart)
        self.heartbeat = heartbeat
        self.clock = Offset(absolute=wall_ms() is not None or type(self).local_ms is not Device.local_ms)
        self.sched = Scheduler()
        # None once a cloud time is known, else the bundles received meanwhile (run after the first sample)
        self._held = None if self.clock.absolute else []
        self._tb = [0, ticks_ms()]  # local_ms() without a wall clock: [ms counted from ticks, last ticks]
        self._phase = _START
        self._stop = False
        self._rid = None  # the request in flight: (id, kind, report counts)
        self._notes = []
        self._poke = False
        self._wake = False
        self._hb_at = ticks_ms()
        self._loop_at = ticks_ms()
        self._loops = 0
        self._interval = 1000
        self._sync_after = None  # ticks: no sync before this (after an error answer)
        self._backoff = 0
        self._restart = False
        self.starts = 0  # dstart answers taken

    # ------------------------------------------------------------------ overridable

    def setup(self):
        """Every (re)start, after both maps were loaded from the CA."""

    def loop(self):
        """Every interval; to_cloud changes are synced after it returns."""

    def on_notify(self, args):
        """A notification for session iot (``args``: the list the CA sent)."""

    def error(self, err):
        """A handler raised ``err``: return it to restart the runtime (maps reloaded, setup() again),
        None to go on. The default logs it and goes on."""
        self.log("error: %s: %s" % (type(err).__name__, err))
        return None

    def local_ms(self):
        """The device's own clock in ms (Unix epoch when the wall clock is set, else ticks since start)."""
        w = wall_ms()
        if w is not None:
            return w
        now = ticks_ms()
        tb = self._tb
        tb[0] += ticks_diff(now, tb[1])
        tb[1] = now
        return tb[0]

    def log(self, text):
        """Where the runtime's messages go (override to redirect)."""
        print("device %s: %s" % (self.name, text))

    # ------------------------------------------------------------------ public

    def now_ms(self):
        """Cloud time (Unix epoch ms): local_ms() plus the estimated offset."""
        return self.local_ms() + self.clock.offset

    def stop(self):
        """End run() / arun() after the current handler."""
        self._stop = True

    def run(self, interval_ms=1000, once=False, wake_ms=1000):
        """Run until stop() (blocking). ``once=True``, for sleepy devices: return after one cycle
        (started, setup() and loop() ran once, everything synced; at the latest after ``timeout``
        seconds, e.g. without network), staying awake for the commands due within 2 x ``wake_ms``;
        returns how long the device may sleep (ms) to wake ``wake_ms`` before its next command, or
        None when nothing is scheduled. ``wake_ms``: the time from the end of a sleep to a started
        runtime (boot, network, connect, dstart)."""
        self._begin(interval_ms)
        give_up = deadline_in(self.client.timeout * 1000)
        try:
            while not self._stop:
                w = self._step()
                if once and self._once_done(give_up, wake_ms):
                    break
                self._tidy()
                self._pump(w)
        finally:
            self.client.close()
        return self._sleep_ms(wake_ms) if once else self._next_ms()

    def arun(self, interval_ms=1000, once=False, wake_ms=1000):
        """run() for asyncio (a coroutine): yields to other tasks while waiting (in steps of at most 10 ms)."""
        from firmware_client.aio import arun

        return arun(self, interval_ms, once, wake_ms)

    # ------------------------------------------------------------------ the cycle

    def _begin(self, interval_ms):
        self._interval = max(1, int(interval_ms))
        self._stop = False
        self.client.mqtt.room = self._room
        self._tidy()
        try:
            self.client.connect(retry=False)
        except OSError as e:
            if getattr(e, "code", None) in (2, 4, 5):
                raise  # refused login: retrying cannot help
            self.log("connect: %s (retrying)" % (e,))

    def _quiet(self):
        return (
            self._phase == _RUN
            and self._loops > 0
            and self._rid is None
            and not self._notes
            and not self._sync_wanted(False)
            and (self.sched.next_at() is None or self.sched.next_at() > self.now_ms())
        )

    def _once_done(self, give_up, wake_ms):
        """run(once=True) may return: quiet (or out of time) and no command due soon enough that
        sleeping would save less than a wake costs."""
        n = self._next_ms()
        if n is not None and n < 2 * wake_ms:
            return False
        return self._quiet() or remaining(give_up) <= 0

    def _sleep_ms(self, wake_ms):
        n = self._next_ms()
        return None if n is None else max(0, n - wake_ms)

    def _tidy(self):
        """MicroPython: collect at a quiet point when under a quarter of the heap is free (a small heap then
        never fills with garbage between long-lived objects: no gc.threshold needed in the application)."""
        if _MICRO and gc.mem_free() < _LOW:
            gc.collect()

    def _room(self):
        """ms a connection attempt may take now: until the next command (None: nothing scheduled)."""
        n = self.sched.next_at()
        return None if n is None or self._held is not None else n - self.now_ms()

    def _next_ms(self):
        n = self.sched.next_at()
        return None if n is None else max(0, n - self.now_ms())

    def _pump(self, ms):
        self._wake = False
        try:
            self.client.poll(ms / 1000, self._woken)
        except _Full:
            self._wake = True

    def _woken(self):
        if self._wake:
            return True
        if self._rid is not None:
            e = self.client._calls.get(self._rid[0])
            return e is not None and e[1] is not None
        return False

    def _step(self):
        """Do what is due now; returns how long to wait (ms) for the next thing."""
        if self._rid is not None:
            r = self.client.collect(self._rid[0])
            if r is not None:
                rid = self._rid
                self._rid = None
                self._answer(rid, r)
                self._tidy()  # an answer leaves the most garbage (payload, decoded maps)
        if self._restart:
            self._restart = False
            self._start_again()
        if self._phase == _START:
            if self._rid is None and (self._sync_after is None or remaining(self._sync_after) <= 0):
                self._send_start()
            return _MAX_WAIT
        while self._notes and not self._stop and not self._restart:
            self._call(self.on_notify, self._notes.pop(0))
        while not self._stop and not self._restart:
            cmd = self.sched.due(self.now_ms())
            if cmd is None:
                break
            self._run_cmd(cmd)
        if not self._stop and not self._restart and remaining(self._loop_at) <= 0:
            self._loop_at = ticks_add(self._loop_at, self._interval)
            if remaining(self._loop_at) <= 0:
                self._loop_at = deadline_in(self._interval)  # fell behind: no burst of loops
            self._loops += 1
            self._call(self.loop)
        if self._restart:
            return 0
        if self._rid is None and self._sync_wanted(True):
            self._send_sync()
        w = remaining(self._loop_at)
        n = self.sched.next_at()
        if n is not None:
            w = min(w, n - self.now_ms())
        if self._rid is None:
            w = min(w, remaining(self._hb_at))
            if self._sync_after is not None:
                w = min(w, remaining(self._sync_after))
        return max(0, min(w, _MAX_WAIT))

    def _sync_wanted(self, beat):
        if self._sync_after is not None:
            if remaining(self._sync_after) > 0:
                return False
            self._sync_after = None
        if self._held is not None:  # no cloud time yet
            return not beat or remaining(self._hb_at) <= 0  # ask for a time sample every second
        if self._poke or self.sched.pending():
            return True
        if self.to_cloud.changed() and self.to_cloud.inflight is None:
            return True
        return beat and remaining(self._hb_at) <= 0

    def _call(self, fn, *args):
        """One handler call on the serial queue; an exception goes to error()."""
        try:
            fn(*args)
            return True
        except Exception as e:
            if self.error(e) is not None:
                self._restart = True
            return False

    def _run_cmd(self, cmd):
        n = self.commands.get(cmd[3])
        if n is None or not isinstance(cmd[4], list) or len(cmd[4]) != n:
            self.log("bundle %s: %r is not a command with %s arguments" % (cmd[1], cmd[3], n))
            ok = False  # only the announced commands are callable
        else:
            ok = self._call(getattr(self, cmd[3]), *cmd[4])
        self.sched.finished(cmd, ok)

    # ------------------------------------------------------------------ requests

    def _send_start(self):
        rid = self.client.send({"t": "dstart", "cmds": dict(self.commands)})
        self._rid = (rid, "dstart", None)

    def _send_sync(self):
        msg = {"t": "dsync", "boot": self.boot, "fv": self.from_cloud.version}
        if self.to_cloud.inflight is None:
            self.to_cloud.delta(msg)
        counts = self.sched.taken(msg)
        self._poke = False
        self._hb_at = deadline_in(self.heartbeat * 1000 if self._held is None else 1000)
        rid = self.client.send(msg)
        self._rid = (rid, "dsync", counts)

    def _start_again(self):
        if self._rid is not None:
            self.client.forget(self._rid[0])
            self._rid = None
        self._phase = _START

    def _answer(self, req, r):
        reply, t1, t4 = r
        rx = reply.get("rx")
        tx = reply.get("tx")
        sample = t1 is not None and t4 is not None and rx is not None and tx is not None
        if sample and self.clock.add(t1, t4, rx, tx) and self._held is not None:
            held = self._held
            self._held = None  # the cloud time is known from now on
            self.sched.add_all(held, self.now_ms())
        err = reply.get("err")
        ok = reply.get("ok")
        if err is not None or not isinstance(ok, dict):
            if not isinstance(err, dict):
                err = {}
            e = CAError(err.get("kind"), err.get("name"), err.get("message"), err.get("data"))
            if req[1] == "dsync" and e.name == "StaleBoot":
                self.log("stale boot: restarting")
                self._start_again()
                return
            if req[1] == "dsync" and self.to_cloud.inflight is not None:
                self.to_cloud.answered(None)
            self._backoff = min(max(self._backoff * 2, 1000), self.heartbeat * 1000)
            self._sync_after = deadline_in(self._backoff)  # dstart is re-sent after this too
            if self.error(e) is not None:
                self._restart = True
            return
        self._backoff = 0
        if req[1] == "dstart":
            self._started(ok)
            return
        if self.to_cloud.inflight is not None:
            self.to_cloud.answered(ok)
        elif ok.get("resync"):
            self.to_cloud.full = True
        self.sched.confirm(req[2])
        self.from_cloud.apply(ok)
        self._bundles(ok.get("b"))

    def _started(self, ok):
        boot = ok.get("boot")
        tc = ok.get("tc")
        fc = ok.get("fc")
        if not isinstance(boot, int) or not isinstance(tc, dict) or not isinstance(fc, dict):
            self.log("malformed dstart answer")
            self._sync_after = deadline_in(1000)
            return
        self.boot = boot
        self.starts += 1
        self.to_cloud.load(tc, ok.get("tv", 0))
        self.from_cloud.load(fc, ok.get("fv", 0))
        self.sched.reset()
        if self._held is not None:
            self._held = []
        self._bundles(ok.get("b"))
        self._phase = _RUN
        self._loop_at = ticks_ms()  # the first loop right after setup
        self._hb_at = ticks_ms()
        self._call(self.setup)

    def _bundles(self, bs):
        if not isinstance(bs, list) or not bs:
            return
        if self._held is None:
            self.sched.add_all(bs, self.now_ms())
        else:
            self._held.extend(bs[: 8 - len(self._held)])  # bounded until the cloud time is known

    # ------------------------------------------------------------------ client callbacks

    def _note(self, args):
        if len(self._notes) >= _MAX_NOTES:
            raise _Full()  # kept by the client, delivered again on a later poll
        self._notes.append(args)
        self._wake = True

    def _other(self, msg):
        if msg.get("t") == "poke":
            self._poke = True
            self._wake = True
