# The Device in a small heap (test_device_session.py::test_device_in_64k_heap_with_mpy), precompiled with
# mpy-cross and run with `micropython -X heapsize=64k -m device_heap PORT BUFSIZE`; prints "R <json>" lines.
import gc
import sys

from firmware_client import Device  # no gc.threshold(), no collections here: the runtime collects by itself


class Heater(Device):
    commands = {"heater": 1}  # noqa: RUF012

    def setup(self):
        self.ran = []

    def loop(self):
        self.to_cloud["n"] = self.to_cloud.get("n", 0) + 1
        if self.from_cloud.get("stop"):
            self.stop()

    def heater(self, on):
        self.ran.append(on)
        self.to_cloud["heater"] = on


d = Heater("dev", port=int(sys.argv[1]), bufsize=int(sys.argv[2]))
d.run(interval_ms=50)
gc.collect()
print('R ["ran", [%s]]' % ", ".join(["true" if x else "false" for x in d.ran]))
print('R ["target", %d]' % d.from_cloud.get("target"))
print('R ["free", %d]' % gc.mem_free())
print("DONE")
