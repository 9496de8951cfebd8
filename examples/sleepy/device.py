# sleepy device: wake, resume, sync, run the commands due while awake, deep-sleep; again.
# Runs unchanged under CPython and MicroPython; on a board (ESP32) machine.deepsleep() resets it and main.py runs
# this again. Elsewhere it prints "sleepy: sleeping N ms" and exits 0: wake.py starts it again N ms later.
# env: CA_HOST (127.0.0.1) CA_PORT (1883) CA_NAME (sleepy1) AWAKE_MS (2500) SLEEP_MS (3000)
# ruff: noqa: UP031, RUF012 (MicroPython: no f-strings; commands is a plain class dict)
import os
import sys

# Find firmware_client in this checkout (two folders up from this script) when it is not installed.
sys.path.append(sys.path[0] + "/../..")

from firmware_client import Device

getenv = getattr(os, "getenv", lambda k, d=None: d)
HOST = getenv("CA_HOST", "127.0.0.1")
PORT = int(getenv("CA_PORT", "1883"))
CA = getenv("CA_NAME", "sleepy1")
AWAKE_MS = int(getenv("AWAKE_MS", "2500"))
SLEEP_MS = int(getenv("SLEEP_MS", "3000"))


class Sleepy(Device):
    commands = {"blink": 1}

    def setup(self):  # the maps are the CA's copies: "wakes" survives the deep sleep there
        self.woke = self.local_ms()
        self.to_cloud["wakes"] = self.to_cloud.get("wakes", 0) + 1
        self.next_wake = self.now_ms() + AWAKE_MS + SLEEP_MS
        self.to_cloud["next_wake"] = self.next_wake  # the CA schedules the next wake's commands from it
        print("sleepy: wake %d" % self.to_cloud["wakes"])

    def loop(self):
        if self.local_ms() - self.woke >= AWAKE_MS:
            self.stop()

    def blink(self, n):
        print("sleepy: blink %d" % n)  # a board: flash a LED


def deep_sleep(ms):
    try:
        import machine

        machine.deepsleep(ms)  # does not return: the board resets when it wakes
    except (ImportError, AttributeError):
        pass
    print("sleepy: sleeping %d ms" % ms)
    sys.exit(0)


try:
    d = Sleepy(CA, host=HOST, port=PORT)
    d.run(interval_ms=200)
    deep_sleep(max(0, d.next_wake - d.now_ms()))
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
