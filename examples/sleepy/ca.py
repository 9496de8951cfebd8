"""sleepy: a device that deep-sleeps between short wakes; its CA schedules what it does at its next wake.

    .venv/bin/ca-bridge run examples/sleepy/ca.py:Sleepy --db sleepy.db
    .venv/bin/python examples/sleepy/wake.py     # its device (CA sleepy1), woken again after each deep sleep

At each wake the device reports when it will wake next (`next_wake`, cloud time). The CA answers with a bundle
that blinks BLINK_MS into that next wake: the bundle waits on the bridge, or on the device across its reboot,
and runs once, on time, while the device is awake.
"""

from bridge import CA, method

BLINK_MS = 1200  # into the next wake


class Sleepy(CA):
    async def on_init(self):
        self.state["starts"] = 0

    async def on_device_resume(self):  # every wake is a start of the device
        self.state["starts"] += 1

    async def on_device_sync(self, changed):
        if "next_wake" in changed:
            wakes = self.device.to_cloud.get("wakes", 0)
            b = self.device.bundle().cmd(0, "blink", wakes + 1)
            index = self.device.send(b, at_ms=self.device.to_cloud["next_wake"] + BLINK_MS)
            self.log.info("wake %s: bundle %d blinks at the next wake; results so far %s", wakes, index,
                          dict(self.device.results))

    @method
    async def status(self):
        return {"starts": self.state["starts"], "to_cloud": dict(self.device.to_cloud),
                "pending": self.device.pending, "results": dict(self.device.results)}
