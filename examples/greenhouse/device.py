# greenhouse device: a thermometer and a heater (simulated here), driven by its CA's timed bundles.
# Runs unchanged under CPython and MicroPython (no MICROPYPATH/PYTHONPATH needed):
#     .venv/bin/python examples/greenhouse/device.py          (or .venv/bin/micropython ...)
# env: CA_HOST (127.0.0.1) CA_PORT (1883) CA_NAME (gh1) TEMP (16: the simulated start temperature, unless the
#      CA has one from an earlier run) SECONDS (0: run forever; else stop after that many seconds)
# Each loop (1 s) reports the temperature; the CA answers "heater on now, off 5 s later". On a board, heater()
# drives a pin and read_temp() a sensor. Ctrl-C exits 130.
# ruff: noqa: UP031, RUF012 (MicroPython: no f-strings; commands is a plain class dict)
import os
import sys

# Find firmware_client in this checkout (two folders up from this script) when it is not installed.
sys.path.append(sys.path[0] + "/../..")

from firmware_client import Device

getenv = getattr(os, "getenv", lambda k, d=None: d)
HOST = getenv("CA_HOST", "127.0.0.1")
PORT = int(getenv("CA_PORT", "1883"))
CA = getenv("CA_NAME", "gh1")
SECONDS = float(getenv("SECONDS", "0"))


class Heater(Device):
    commands = {"heater": 1}  # what a bundle may name, with the number of arguments

    def setup(self):  # every start: the maps are the CA's copies by now
        self.on = False  # a board: self.pin = machine.Pin(5, machine.Pin.OUT); self.pin.value(0)
        self.temp = self.to_cloud.get("temp", float(getenv("TEMP", "16")))
        self.began = self.local_ms()
        self.target = self.from_cloud.get("target")
        print("greenhouse: started at %.2f degrees, target %s" % (self.temp, self.target))

    def loop(self):
        self.temp += 0.5 if self.on else -0.25  # the simulated greenhouse: a board reads its sensor here
        self.to_cloud["temp"] = round(self.temp, 2)
        if self.from_cloud.get("target") != self.target:  # set by the CA's set_target
            self.target = self.from_cloud.get("target")
            print("greenhouse: target now %s" % self.target)
        if SECONDS and self.local_ms() - self.began >= SECONDS * 1000:
            self.stop()

    def heater(self, on):
        self.on = bool(on)  # a board: self.pin.value(1 if on else 0)
        print("greenhouse: heater %s at %.2f degrees" % ("on" if on else "off", self.temp))


try:
    Heater(CA, host=HOST, port=PORT).run(interval_ms=1000)
    code = 0
except KeyboardInterrupt:
    print("interrupted")
    code = 130
sys.exit(code)
