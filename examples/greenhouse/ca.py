"""greenhouse: a heater kept above a minimum temperature by timed command bundles (docs/DEVICES.md).

    .venv/bin/ca-bridge run examples/greenhouse/ca.py:Greenhouse --db greenhouse.db
    .venv/bin/python examples/greenhouse/device.py     # its device (CA gh1): the heater goes on below the minimum

Each bundle is "heater on now, heater off HEAT_MS later". The "off" is the recovery tail: it is on the device
before it is due, so it runs even if the network (or this bridge) is gone by then, and the heater is never left
on. `set_target` moves the minimum and shows it on the device through `from_cloud`.
"""

from bridge import CA, AppError, method

HEAT_MS = 5000  # how long one bundle heats


class Greenhouse(CA):
    async def on_init(self):
        self.state["min"] = 15

    async def on_device_resume(self):
        self.log.info("device started; it resumes with temp %s", self.device.to_cloud.get("temp"))

    async def on_device_sync(self, changed):
        t = self.device.to_cloud.get("temp")
        if t is not None and t < self.state.get("min", 15) and self.device.pending is None:
            b = self.device.bundle()  # starts --bundle-margin (2 s) from now: time for it to reach the device
            b.cmd(0, "heater", True).cmd(HEAT_MS, "heater", False)
            index = self.device.send(b)
            self.log.info("temp %s below %s: bundle %d heats for %d ms", t, self.state["min"], index, HEAT_MS)

    @method
    async def set_target(self, t):
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise AppError("the target is a number of degrees", target=t)
        self.state["min"] = t
        self.device.from_cloud["target"] = t  # committed with this call, then delivered to the device

    @method
    async def status(self):
        return {"min": self.state["min"], "online": self.device.online, "to_cloud": dict(self.device.to_cloud),
                "from_cloud": dict(self.device.from_cloud), "pending": self.device.pending,
                "results": dict(self.device.results)}
