# A device under load for the cluster test: calls incr on its CA in a loop until STOPFILE exists.
# usage: counter_device.py PORT CA STOPFILE CALL_TIMEOUT
# Prints "A <n>" after each acknowledged call, then "R <json>" lines (acked, resent, wrong, error) and "DONE".
# Runs unchanged under CPython and MicroPython; only the client's own retries are used (no retry here).
import sys

from firmware_client import CAError, Client
from firmware_client.jsoncodec import dumps

PORT, CA, STOPFILE, TIMEOUT = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])


def out(key, value):
    print("R " + dumps([key, value]).decode())


def stopped():
    try:
        open(STOPFILE).close()
        return True
    except OSError:
        return False


c = Client(CA, "default", port=PORT, keepalive=5, timeout=TIMEOUT)
c.connect(timeout=20)
acked = 0
wrong = []  # [acked, returned] where incr did not return the number of calls acknowledged so far
error = None
while not stopped():
    try:
        n = c.call("incr")
    except (CAError, OSError) as e:  # no answer within the timeout (or a CA error): the test fails on it
        error = "%s: %s" % (type(e).__name__, e)
        break
    acked += 1
    if n != acked and len(wrong) < 10:
        wrong.append([acked, n])
    print("A %d" % acked)
out("acked", acked)
out("resent", c.resent)
out("wrong", wrong)
out("error", error)
c.close()
print("DONE")
