# Heap use of the Device (firmware_client/README.md, Device memory table), under MicroPython from .mpy files:
#   micropython -X heapsize=64k -m device_memory PORT BUFSIZE KEYS  (no gc.threshold: the runtime's own collections)
# Maps: setup() writes KEYS to_cloud keys (ints), the bridge holds KEYS short strings and lists of ints in from_cloud
# (the driver decides), which loop() echoes to to_cloud; a bundle of commands runs. Prints "R <json>" lines: heap
# in use (after gc.collect()) at each stage, the lowest free heap seen inside handlers (no collection first), and the
# free heap at the end.
import gc
import sys

gc.collect()
base = gc.mem_alloc()
import firmware_client  # noqa: E402

Device = firmware_client.Device
gc.collect()
stages = [["import", gc.mem_alloc() - base]]
low = [1 << 30]


def note(name):
    gc.collect()
    stages.append([name, gc.mem_alloc() - base])


class Probe(Device):
    commands = {"heater": 1}  # noqa: RUF012

    def setup(self):
        low[0] = min(low[0], gc.mem_free())
        note("started")
        for k in range(int(sys.argv[3]) if len(sys.argv) > 3 else 12):
            self.to_cloud["k%d" % k] = k * 3
        self.ran = 0

    def loop(self):
        low[0] = min(low[0], gc.mem_free())
        self.to_cloud["n"] = self.to_cloud.get("n", 0) + 1
        if self.to_cloud["n"] == 3:
            note("synced")
        fc = self.from_cloud
        if "hours" in fc:
            self.to_cloud["hours"] = fc["hours"]
        if fc.get("stop"):
            self.stop()

    def heater(self, on):
        low[0] = min(low[0], gc.mem_free())
        self.ran += 1
        self.to_cloud["heater"] = on


d = Probe("dev", port=int(sys.argv[1]), bufsize=int(sys.argv[2]) if len(sys.argv) > 2 else None)
note("constructed")
d.run(interval_ms=50)
note("end")
print('R ["ran", %d]' % d.ran)
print('R ["hours", %d]' % len(d.from_cloud.get("hours", [])))
for s in stages:
    print('R ["%s", %d]' % (s[0], s[1]))
print('R ["low", %d]' % low[0])
gc.collect()
print('R ["free", %d]' % gc.mem_free())
print("DONE")
