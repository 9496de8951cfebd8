# The Device in a small heap (test_device_session.py::test_device_in_64k_heap_with_mpy), precompiled with
# mpy-cross and run with `micropython -X heapsize=64k -m device_heap PORT BUFSIZE`; prints "R <json>" lines.
import gc
import sys

gc.threshold(4096)  # collect often: garbage then does not interleave with long-lived objects (less fragmentation)
gc.collect()
import firmware_client  # noqa: E402

gc.collect()  # between the imports: loading leaves garbage, and a fragmented heap fails larger allocations
Device = firmware_client.Device
gc.collect()


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
