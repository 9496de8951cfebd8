# lab_device.py's maps and marks, lean enough for a 64 KB MicroPython heap (test_e2e.py, 64k): precompiled with
# mpy-cross and run as `micropython -X heapsize=64k -m heap_device` (env: CA_PORT CA_NAME RUNS); bufsize 1024.
# ruff: noqa: UP031, RUF012
import gc
import os
import time

import firmware_client  # no gc tuning here: the runtime collects at its quiet points by itself

Device = firmware_client.Device
RUNS = os.getenv("RUNS")


class Lab(Device):
    commands = {"mark": 1}

    def setup(self):
        self.to_cloud["hello"] = "world"
        self.to_cloud["gone"] = 1

    def loop(self):
        if "echo" in self.from_cloud:
            self.to_cloud["echo"] = self.from_cloud["echo"]
        if self.from_cloud.get("stop"):
            self.stop()

    def mark(self, tag):
        with open(RUNS, "a") as f:
            f.write("%s %d 0\n" % (tag, int(time.time() * 1000)))


Lab(os.getenv("CA_NAME"), port=int(os.getenv("CA_PORT")), bufsize=1024).run(interval_ms=100)
gc.collect()
print("free", gc.mem_free())
print("DONE")
