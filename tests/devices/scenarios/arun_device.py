# Device.arun() inside an asyncio program (CPython asyncio, MicroPython asyncio): a ticker task runs beside it.
#   arun_device.py           env: CA_PORT CA_NAME RUNS (as lab_device.py) SECONDS (60)
# The device writes the ticker's count into to_cloud["ticks"]; from_cloud["stop"] stops it; prints R lines.
# ruff: noqa: UP031, RUF012
import os
import sys
import time

sys.path.append(sys.path[0] + "/../../..")

import asyncio

from firmware_client import Device
from firmware_client.jsoncodec import dumps

getenv = getattr(os, "getenv", lambda k, d=None: d)
PORT = int(getenv("CA_PORT", "1883"))
CA = getenv("CA_NAME", "lab1")
RUNS = getenv("RUNS", "")
SECONDS = float(getenv("SECONDS", "60"))
ticks = [0]


def out(key, value):
    print("R " + dumps([key, value]).decode())


class Lab(Device):
    commands = {"mark": 1}

    def setup(self):
        self.began = time.time()

    def loop(self):
        self.to_cloud["ticks"] = ticks[0]
        if self.from_cloud.get("stop") or time.time() - self.began > SECONDS:
            self.stop()

    def mark(self, tag):
        with open(RUNS, "a") as f:
            f.write("%s %d 0\n" % (tag, int(time.time() * 1000)))


async def ticker(done):
    while not done[0]:
        ticks[0] += 1
        await asyncio.sleep(0.05)


async def main():
    done = [False]
    task = asyncio.create_task(ticker(done))
    d = Lab(CA, port=PORT)
    await d.arun(interval_ms=100)
    done[0] = True
    await task
    out("ticks", ticks[0])
    out("tc", dict(d.to_cloud.items()))


asyncio.run(main())
print("DONE")
