# firmware_client/README.md's sleepy pattern: one cycle with run(once=True), then "deep sleep" for the ms it
# returns (here: print "sleep <ms>" and exit; the test starts the program again after that long).
# env: CA_PORT CA_NAME RUNS (as lab_device.py) INSTANCE
# ruff: noqa: UP031, RUF012
import os
import sys
import time

sys.path.append(sys.path[0] + "/../../..")

from firmware_client import Device

getenv = getattr(os, "getenv", lambda k, d=None: d)


class Lab(Device):
    commands = {"mark": 1}

    def setup(self):
        self.to_cloud["hello"] = "world"

    def mark(self, tag):
        with open(getenv("RUNS"), "a") as f:
            f.write("%s %d %s\n" % (tag, int(time.time() * 1000), getenv("INSTANCE", "0")))


ms = Lab(getenv("CA_NAME"), port=int(getenv("CA_PORT"))).run(interval_ms=100, once=True)
print("sleep %s" % ms)
