# Device-side scenario runner: the same file runs under CPython and MicroPython.
# usage: device.py PORT SCENARIO ; prints one "R <json>" line per observation, then "DONE".
import sys

from firmware_client import CAError, Client, Timeout
from firmware_client.jsoncodec import dumps
from firmware_client.compat import ticks_diff, ticks_ms

PORT = int(sys.argv[1])
SCENARIO = sys.argv[2]


def out(key, value):
    print("R " + dumps([key, value]).decode())


def client(**kw):
    kw.setdefault("keepalive", 30)
    return Client("dev", "s1", port=PORT, connect_timeout=2, **kw)


def timed(fn):
    t0 = ticks_ms()
    try:
        res = ["ok", fn()]
    except CAError as e:
        res = ["caerror", e.kind, e.name, e.message, e.data]
    except Timeout as e:
        res = ["timeout", str(e)]
    except OSError as e:
        res = ["oserror", str(e)]
    return res, ticks_diff(ticks_ms(), t0)


def collect(c, n, seconds):
    got = []
    c.on_notify = got.append
    t0 = ticks_ms()
    while len(got) < n and ticks_diff(ticks_ms(), t0) < seconds * 1000:
        c.poll(0.05)
    c.poll(0.2)  # let acks go out, catch any duplicate
    return got


def sc_basic():
    c = client()
    c.connect()
    out("echo", c.call("echo", 1, -2, "h\u00e9", b"\x00\xff", [1.5, None, True], {"k": False}))
    out("fail", timed(lambda: c.call("fail", "x"))[0])
    out("unknown", timed(lambda: c.call("nope"))[0])
    out("notes", collect(c, 3, 5))
    out("last_seq", c.last_seq)
    c.close()


def sc_json():
    c = client(codec="json")
    c.connect()
    out("echo", c.call("echo", 1, "a", b"\x01\x02", {"x": [None]}))
    c.close()


def sc_call():  # one call; the broker misbehaves around it
    c = client()
    c.connect()
    res, ms = timed(lambda: c.call("echo", "once", timeout=10))
    out("result", res)
    out("ms", ms)
    out("connects", c.mqtt.connects)
    c.close()


def sc_resend():  # argv: PORT resend SECONDS_OF_SILENCE; the broker loses requests or replies
    c = client(resend=float(sys.argv[3]))
    c.connect()
    got = []
    c.on_notify = got.append
    res, ms = timed(lambda: c.call("echo", "once", timeout=20))
    out("result", res)
    out("resent", c.resent)
    t0 = ticks_ms()
    while len(got) < 2 and ticks_diff(ticks_ms(), t0) < 5000:
        c.poll(0.05)
    c.poll(0.2)  # the ack goes out
    out("notes", got)
    before = c.resent
    res, ms = timed(lambda: c.call("silent", timeout=1.5))
    out("silent", res[0])
    out("silent_resent", c.resent - before)
    out("silent_ms", ms)
    c.close()


def sc_no_connack():
    c = client()
    res, ms = timed(lambda: c.connect(timeout=1.5))
    out("result", res[0])
    out("ms", ms)


def sc_silent():
    c = client()
    c.connect()
    res, ms = timed(lambda: c.call("silent", timeout=1))
    out("result", res[0])
    out("ms", ms)
    c.close()


def sc_notes():  # collect N notes pushed by the test, then report
    n = int(sys.argv[3])
    c = client()
    c.connect()
    print("READY")
    out("notes", collect(c, n, 10))
    out("lost", c.lost)
    out("recreated", c.recreated)
    out("last_seq", c.last_seq)
    c.close()


def sc_oversize():
    c = client(bufsize=256)
    c.connect()
    print("READY")
    out("notes", collect(c, 1, 5))
    out("oversize", c.mqtt.oversize)
    out("echo", c.call("echo", "after"))
    c.close()


def sc_keepalive():
    c = client(keepalive=1)
    c.connect()
    t0 = ticks_ms()
    while ticks_diff(ticks_ms(), t0) < 3500:
        c.poll(0.1)
    out("connects", c.mqtt.connects)
    c.close()


def sc_pids():  # many QoS1 publishes: packet ids wrap past 65535 and are never 0
    c = client()
    c.connect()
    c.mqtt._pid = 65530
    for i in range(10):
        c.call("echo", i)
    out("pid", c.mqtt._pid)
    c.close()


def sc_presence():  # argv: PORT presence on|off; one call, then a clean close
    c = client(presence=sys.argv[3] == "on")
    c.connect()
    out("echo", c.call("echo", 1))
    c.close()


globals()["sc_" + SCENARIO]()
print("DONE")
