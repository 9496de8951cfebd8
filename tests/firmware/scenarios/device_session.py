"""A Device against the fake device bridge (tests/firmware/test_device_session.py), on both interpreters.

argv: port skew_ms mode [bufsize]   (mode: run | arun | once)
The device's clock is skewed by ``skew_ms``; it runs until from_cloud["stop"] is set, then prints
"R <json [key, value]>" lines describing what happened.
"""

import json
import sys

from firmware_client import Device

PORT = int(sys.argv[1])
SKEW = int(sys.argv[2])
MODE = sys.argv[3]


class Dev(Device):
    commands = {"heater": 1, "boom": 0, "mark": 1}  # noqa: RUF012

    def setup(self):
        self.setups = getattr(self, "setups", 0) + 1
        self.ran = getattr(self, "ran", [])
        self.to_cloud["setups"] = self.setups
        self.seen_target = self.from_cloud.get("target")

    def loop(self):
        self.to_cloud["n"] = self.to_cloud.get("n", 0) + 1
        if self.from_cloud.get("stop"):
            self.stop()

    def heater(self, on):
        self.ran.append(["heater", on, self.now_ms()])
        self.to_cloud["heater"] = on

    def mark(self, x):
        self.ran.append(["mark", x, self.now_ms()])

    def boom(self):
        self.ran.append(["boom", 0, self.now_ms()])
        raise ValueError("boom")

    def error(self, err):
        self.errors = getattr(self, "errors", 0) + 1
        return err if str(err) == "boom" else None  # a boom restarts the runtime

    def local_ms(self):
        return Device.local_ms(self) - SKEW

    def log(self, text):
        print("LOG " + text)


def out(k, v):
    print("R " + json.dumps([k, v]))


BUF = int(sys.argv[4]) if len(sys.argv) > 4 else None
d = Dev("dev", host="127.0.0.1", port=PORT, heartbeat=30, bufsize=BUF)
if MODE == "arun":
    import asyncio

    ticks = [0]

    async def other():
        while not d._stop:
            ticks[0] += 1
            await asyncio.sleep(0.005)

    async def main():
        t = asyncio.create_task(other())
        await d.arun(interval_ms=50)
        await t

    asyncio.run(main())
    out("other_ticks", ticks[0])
elif MODE == "once":
    nxt = d.run(interval_ms=50, once=True)
    out("next", nxt)
else:
    d.run(interval_ms=50)
out("setups", d.setups)
out("ran", d.ran)
out("target", d.seen_target)
out("offset", d.clock.offset)
out("samples", d.clock.samples)
out("errors", getattr(d, "errors", 0))
out("to_cloud", dict(d.to_cloud.items()))
out("from_cloud", dict(d.from_cloud.items()))
out("starts", d.starts)
print("DONE")
