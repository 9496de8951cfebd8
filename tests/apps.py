"""CA classes used by the tests (loaded as tests/apps.py:Name by bridge processes)."""

import asyncio
import os
import re
import time

from bridge import CA, AppError, method


class Counter(CA):
    """Counts every token it is given: the crash tests check each count is exactly 1."""

    async def on_init(self):
        self.state["seen"] = {}
        self.state["resumes"] = 0

    async def on_resume(self):
        self.state["resumes"] = self.state.get("resumes", 0) + 1

    @method
    async def record(self, token):
        self.state["seen"][token] = self.state["seen"].get(token, 0) + 1
        return self.state["seen"][token]

    @method
    async def record_notify(self, token):
        """Record a token and notify session "watch" (unbounded queue) with it."""
        self.state["seen"][token] = self.state["seen"].get(token, 0) + 1
        self.session.limit_queue(0, "watch")
        self.session.notify([token], "watch")
        return self.state["seen"][token]

    @method
    async def tick(self, token):
        """Count a token and notify the calling session with it (the load test's call)."""
        seen = self.state.setdefault("ticks", {})
        seen[token] = seen.get(token, 0) + 1
        self.session.notify([token])
        return seen[token]

    @method
    async def spam(self, session_id, count, size, unlimited):
        """Queue ``count`` notifications of ``size`` bytes for a session (the overload tests' deaf device)."""
        if unlimited:
            self.session.limit_queue(0, session_id)
        for i in range(count):
            self.session.notify([i, "x" * size], session_id)
        return len(self.session.outq(session_id))

    @method
    async def step(self, n):
        """Bounded-state exactly-once check: the calling session's calls must arrive as 1, 2, 3...

        Returns 1 for the expected next step, 2 if this step already ran (a duplicate execution), 3 for a gap.
        Notifies the caller with ``[n]``. State: one int per session, so memory must stay flat under load.
        """
        last = self.state.setdefault("last", {})
        sid = self.session.get_session_id()
        prev = last.get(sid, 0)
        if n <= prev:
            return 2
        if n != prev + 1:
            return 3
        last[sid] = n
        self.session.notify([n])
        return 1

    @method
    async def outq_len(self, session_id):
        return len(self.session.outq(session_id))

    @method
    def incr(self):
        self.state["n"] = self.state.get("n", 0) + 1
        return self.state["n"]

    @method
    async def get(self):
        return self.state

    @method
    async def fail_after_write(self, kind):
        self.state["dirty"] = True
        self.session.notify(["should not be sent"])
        self.session.limit_queue(1)
        if kind == "app":
            raise AppError("refused", reason="test", n=1)
        raise RuntimeError("secret internal detail")

    @method
    async def notify_to(self, session_id, *args):
        self.session.notify(list(args), session_id)
        return len(self.session.outq(session_id))

    @method
    async def notify_pattern(self, pattern, msg):
        self.session.notify([msg], re.compile(pattern), lambda sid, args: [sid, *args])
        return sorted(self.session.get_all_session_ids())

    @method
    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    @method
    async def bad_result(self):
        return {1, 2}

    @method
    async def bad_state(self):
        self.state["x"] = object()

    @method
    async def big(self, size):
        return "x" * size

    def not_a_method(self):
        return "never callable"

    async def _private(self):
        return "never callable"


class Pulsing(CA):
    async def on_init(self):
        self.state["pulses"] = 0

    async def on_pulse(self):
        self.state["pulses"] += 1
        self.session.notify([self.state["pulses"]], "watch")

    @method
    async def pulses(self):
        return self.state["pulses"]

    @method
    async def slow(self, seconds):
        await asyncio.sleep(seconds)
        return self.state["pulses"]


class BrokenInit(CA):
    async def on_init(self):
        raise RuntimeError("cannot init")

    @method
    async def ping(self):
        return "pong"


class PulseClock(CA):
    """Records the wall time of every pulse, for the cluster-wide once-per-interval check."""

    async def on_init(self):
        self.state["times"] = []
        self.state["calls"] = 0

    async def on_pulse(self):
        self.state["times"] = [*self.state["times"][-499:], time.time()]

    @method
    async def times(self):
        return self.state["times"]

    @method
    async def touch(self):
        self.state["calls"] += 1
        return self.state["calls"]


class Presence(CA):
    """Records every presence transition ``[session, online]`` its on_presence hook sees."""

    async def on_init(self):
        self.state["transitions"] = []

    async def on_presence(self, session_id, online):
        self.state["transitions"].append([session_id, online])

    @method
    async def transitions(self):
        return self.state["transitions"]

    @method
    async def online(self, session_id):
        return self.session.is_online(session_id)


class Gated(CA):
    """Calls the test holds at a gate (a file), to produce work at a chosen moment: during a broker outage, or
    while the bridge is stopping. Every call records its token in ``done`` and notifies the caller with it."""

    async def on_init(self):
        self.state["done"] = []

    def _finish(self, token):
        self.state["done"].append(token)
        self.session.notify([token])
        return token

    @method
    async def hold(self, gate, token):
        """Create ``gate + ".started"``, wait (up to 60 s) until the file ``gate`` exists, then finish."""
        open(gate + ".started", "w").close()  # noqa: ASYNC230 - a test gate: tiny local files
        deadline = time.monotonic() + 60
        while not os.path.exists(gate):  # noqa: ASYNC240
            if time.monotonic() > deadline:
                raise AppError("the gate never opened", gate=gate)
            await asyncio.sleep(0.02)
        return self._finish(token)

    @method
    async def record(self, token):
        return self._finish(token)

    @method
    async def done(self):
        return self.state["done"]


class Teller(CA):
    """Notifies session "dev" with a running count (tests of notes and acks on the store)."""

    async def on_init(self):
        self.state["n"] = 0

    @method
    async def tell(self, count):
        for _ in range(count):
            self.state["n"] += 1
            self.session.notify([self.state["n"]], "dev")
        return self.state["n"]

    @method
    async def hello(self):
        return self.session.get_session_id()

    @method
    async def unbounded(self):
        self.session.limit_queue(0, "dev")
