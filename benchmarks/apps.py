"""The CA app the benchmark runs (loaded by the bridge as benchmarks/apps.py:Bench)."""

from bridge import CA, method


class Bench(CA):
    """A trivial durable counter, plus a fan-out method that notifies many sessions in one call."""

    async def on_init(self):
        self.state["n"] = 0

    @method
    def incr(self):
        """Increment the durable counter and return it (the same work as tests/apps.py:Counter.incr)."""
        self.state["n"] = self.state.get("n", 0) + 1
        return self.state["n"]

    @method
    def fanout(self, count, stamp):
        """Notify sessions d0 .. d<count-1> with ``[stamp, i]`` (stamp: the caller's clock, for latency)."""
        self.state["n"] = self.state.get("n", 0) + 1
        for i in range(count):
            self.session.notify([stamp, i], f"d{i}")
        return count


class Sensors(CA):
    """The device benchmark's CA (benchmarks/devices.py): each device's synced value is read by the sync hook, as an
    app reacting to a reading would (it writes nothing: the sync's own record is what is measured)."""

    async def on_device_sync(self, changed):
        v = self.device.to_cloud.get("v")
        if v is not None and v < 0:
            self.log.warning("negative reading %s", v)
