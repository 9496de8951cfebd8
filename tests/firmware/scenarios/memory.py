# Heap use of the firmware client (run under MicroPython, e.g. -X heapsize=64k).
# usage: memory.py PORT ; prints "R <json>" lines.
import gc
import sys

gc.collect()
base = gc.mem_alloc()
from firmware_client import Client  # noqa: E402

gc.collect()
after_import = gc.mem_alloc() - base
c = Client("dev", "s1", port=int(sys.argv[1]), bufsize=int(sys.argv[2]) if len(sys.argv) > 2 else 1024)
c.connect()
gc.collect()
after_connect = gc.mem_alloc() - base
got = []
c.on_notify = got.append
for i in range(50):
    r = c.call("echo", i, "x" * 20, b"\x01" * 10, {"k": [1.5, None]})
    assert r[0] == i
c.call("notify", "a", "b", "c")
c.poll(0.3)
gc.collect()
after_calls = gc.mem_alloc() - base
c.close()
print("R [\"import\", %d]" % after_import)
print("R [\"connect\", %d]" % after_connect)
print("R [\"calls\", %d]" % after_calls)
print("R [\"notes\", %d]" % len(got))
print("R [\"free\", %d]" % gc.mem_free())
print("DONE")
