# Device-side scenarios against the real bridge (CPython and MicroPython).
# usage: bridge_device.py PORT SCENARIO [ARGS]; prints "R <json>" lines, then "DONE".
import sys

from firmware_client import CAError, Client, PersistentSession, Timeout
from firmware_client.compat import ticks_diff, ticks_ms
from firmware_client.jsoncodec import dumps

PORT = int(sys.argv[1])
SCENARIO = sys.argv[2]


def out(key, value):
    print("R " + dumps([key, value]).decode())


def attempt(fn):
    try:
        return ["ok", fn()]
    except CAError as e:
        return ["caerror", e.kind, e.name, e.message, e.data]
    except Timeout as e:
        return ["timeout", str(e)]


def sc_calls():
    c = Client("shop-calls", "default", port=PORT)
    c.connect()
    ps = PersistentSession(c)
    out("begin", {"nonce": ps.nonce, "memento": ps.memento})
    out("buy", c.call("buy", ps.nonce, 0, "apple"))
    out("bad_nonce", attempt(lambda: c.call("buy", "not-the-nonce", 1, "pear")))
    out("unknown", attempt(lambda: c.call("no_such_method")))
    out("end", ps.end())
    c.close()


def sc_listen():  # collect client1 pulses for a while; reconnect once from the device side
    ca, seconds = sys.argv[3], int(sys.argv[4])
    # resync 1 s: a sync sent while the bridge is not yet subscribed again after the broker's restart is lost, and
    # the default 5 s before asking again is longer than client1's queue limit (10) holds at a pulse of 0.2 s, so the
    # CA's own limit would drop two notes (seen once in a dozen runs): the client must ask again before that
    c = Client(ca, "client1", port=PORT, keepalive=5, reconnect_max=1.0, resync=1.0)
    c.connect()
    c.call("get_counter")  # creates the CA so that it pulses
    print("READY")
    got = []
    c.on_notify = got.append
    t0 = ticks_ms()
    bounced = False
    while ticks_diff(ticks_ms(), t0) < seconds * 1000:
        c.poll(0.1)
        if not bounced and ticks_diff(ticks_ms(), t0) > seconds * 700:
            bounced = True
            c.mqtt.drop()  # the device's own connection loss
    out("notes", got)
    out("connects", c.mqtt.connects)
    out("lost", c.lost)
    c.close()


def sc_counters():
    c = Client(sys.argv[3], "inspect", port=PORT)
    c.connect()
    out("counters", c.call("get_counters"))
    c.close()


def sc_tls():  # argv: PORT tls CAFILE [BADCAFILE]
    c = Client("tls-ca", "default", port=PORT, ssl={"cafile": sys.argv[3], "server_hostname": "localhost"})
    c.connect()
    out("counter", c.call("get_counter"))
    r = attempt(lambda: c.call("notify_all", "x" * 800))  # reply ~2.5 KB: spans TLS reads
    out("echo", r[1] if r[0] == "ok" else [r, c.mqtt.oversize, c.mqtt.connects, c.undecodable])
    c.close()
    if len(sys.argv) > 4:
        bad = Client("tls-ca", "other", port=PORT, ssl={"cafile": sys.argv[4], "server_hostname": "localhost"},
                     connect_timeout=3)
        try:
            bad.connect(timeout=3)
            out("bad_ca", "connected")
        except OSError:
            out("bad_ca", "refused")
        except Exception as e:  # some ports raise ValueError for certificate problems
            out("bad_ca", "refused " + type(e).__name__)


def sc_bignums():  # argv: PORT bignums CODEC; integers beyond 64 bits both ways
    c = Client("numbers", "default", port=PORT, codec=sys.argv[3])
    c.connect()
    got = []
    c.on_notify = got.append
    out("power", c.call("power", 2, 70))
    out("negative", c.call("power", -3, 101))
    big = [(1 << 1024) - 1, -(1 << 1024), 18446744073709551616, -18446744073709551617, [{"k": 3 ** 99}]]
    out("echo", c.call("echo", *big) == big)
    t0 = ticks_ms()
    while not got and ticks_diff(ticks_ms(), t0) < 10000:
        c.poll(0.1)
    out("note", got == [big])
    out("too_big", attempt(lambda: c.call("power", 2, 1024)))
    out("undecodable", c.undecodable)
    c.close()


def sc_presence():  # argv: PORT presence CA SESSION STOPFILE [json]; poll until STOPFILE exists, then close
    ca, session, stopfile = sys.argv[3], sys.argv[4], sys.argv[5]
    codec = sys.argv[6] if len(sys.argv) > 6 else "cbor"
    c = Client(ca, session, port=PORT, keepalive=5, codec=codec)
    c.connect()
    print("READY")
    while True:
        c.poll(0.1)
        try:
            open(stopfile).close()
            break
        except OSError:
            pass
    c.close()


globals()["sc_" + SCENARIO]()
print("DONE")
