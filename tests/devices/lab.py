"""The CA of the device end-to-end tests: the test drives it on session "ctl" with the firmware client, the device
under test talks to it on session "iot" (firmware_client.Device)."""

from bridge import CA, method


class Lab(CA):
    async def on_init(self):
        self.state["resumes"] = 0
        self.state["changes"] = []  # the `changed` sets on_device_sync got, as sorted lists, last 50

    async def on_device_resume(self):
        self.state["resumes"] += 1

    async def on_device_sync(self, changed):
        self.state["changes"] = [*self.state["changes"], sorted(changed)][-50:]

    @method
    async def set_fc(self, key, value):
        self.device.from_cloud[key] = value

    @method
    async def del_fc(self, key):
        del self.device.from_cloud[key]

    @method
    async def send(self, cmds, at_ms=None, offset_ms=None, margin_ms=None):
        """``cmds``: [[after_ms, method, arg...], ...]; returns the bundle index."""
        b = self.device.bundle(margin_ms)
        for after, name, *args in cmds:
            b.cmd(after, name, *args)
        return self.device.send(b, offset_ms=offset_ms, at_ms=at_ms)

    @method
    async def apply(self, name, args, safe=False):
        return self.device.apply(name, *args, safe=safe)

    @method
    async def now(self):
        return self.device.now_ms()

    @method
    async def info(self):
        d = self.device
        return {"tc": dict(d.to_cloud), "fc": dict(d.from_cloud), "results": dict(d.results), "pending": d.pending,
                "online": d.online, "resumes": self.state["resumes"], "changes": self.state["changes"]}
