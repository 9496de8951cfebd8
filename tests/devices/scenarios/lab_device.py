# The device of the end-to-end tests (CPython and MicroPython): firmware_client.Device against the real bridge.
#   lab_device.py            env: CA_PORT CA_NAME SKEW_MS (added to the device's clock) RUNS (a file: one line per
#                            command run: "tag real_epoch_ms INSTANCE") STEP (1: count to_cloud["n"] up every loop until
#                            from_cloud["hold"]) INTERVAL_MS (100) SECONDS (60: stop by itself after that)
#                            KEEPALIVE (30 s)
# The device stops when from_cloud["stop"] is true; it prints "R <json>" lines (READY, its final maps) and exits 0.
# ruff: noqa: UP031, RUF012
import os
import sys
import time

sys.path.append(sys.path[0] + "/../../..")

from firmware_client import Device
from firmware_client.jsoncodec import dumps

getenv = getattr(os, "getenv", lambda k, d=None: d)
PORT = int(getenv("CA_PORT", "1883"))
CA = getenv("CA_NAME", "lab1")
SKEW = int(getenv("SKEW_MS", "0"))
RUNS = getenv("RUNS", "")
STEP = int(getenv("STEP", "0"))
INTERVAL = int(getenv("INTERVAL_MS", "100"))
SECONDS = float(getenv("SECONDS", "60"))
KEEPALIVE = int(getenv("KEEPALIVE", "30"))
PID = int(getenv("INSTANCE", "0"))  # which device process of the test ran a command


def out(key, value):
    print("R " + dumps([key, value]).decode())


def real_ms():
    return int(time.time() * 1000)


class Lab(Device):
    commands = {"mark": 1, "boom": 0}

    def local_ms(self):
        return real_ms() + SKEW

    def setup(self):
        self.began = real_ms()
        self.to_cloud["hello"] = "world"
        if "gone" not in self.to_cloud and not self.from_cloud.get("drop"):
            self.to_cloud["gone"] = 1
        out("ready", dict(self.from_cloud.items()))

    def loop(self):
        fc = self.from_cloud
        if "echo" in fc:
            self.to_cloud["echo"] = fc["echo"]
        if fc.get("drop") and "gone" in self.to_cloud:
            del self.to_cloud["gone"]
        for key in ("mark1",):
            if key in fc:
                self.to_cloud[key + "_seen"] = fc[key]
        if STEP:
            if fc.get("hold"):
                if "held" not in self.to_cloud:
                    self.to_cloud["held"] = self.to_cloud.get("n", 0)
            else:
                self.to_cloud["n"] = self.to_cloud.get("n", 0) + 1
        if fc.get("stop") or real_ms() - self.began > SECONDS * 1000:
            self.stop()

    def mark(self, tag):
        if RUNS:
            with open(RUNS, "a") as f:
                f.write("%s %d %d\n" % (tag, real_ms(), PID))

    def boom(self):
        raise ValueError("boom")


d = Lab(CA, port=PORT, keepalive=KEEPALIVE)
d.run(interval_ms=INTERVAL)
out("fc", dict(d.from_cloud.items()))
out("tc", dict(d.to_cloud.items()))
print("DONE")
