# hellopersistent device: buy every item exactly once although the device crashes at random.
# Runs unchanged under CPython and MicroPython; rerun it until it exits 0 (see forever.py):
#     micropython examples/hellopersistent/device.py      (or python; no MICROPYPATH/PYTHONPATH needed)
#
# env: CA_HOST CA_PORT CA_NAME (cart1) ITEMS (count; default: a fixed fruit list)
#      CRASH (per-256 chance to die before each buy, default 47)
#      CRASH_MID (per-256 chance to die while a buy is in flight, default 0)
#      SEED, RUN (seed the crash dice; forever.py sets RUN to the attempt number)
# exit status: 0 done; 3 crashed (by the dice, or a transient error such as a lost connection or a call
# without an answer): run it again; 4 never reached the CA (connection refused or unreachable, or no answer,
# before any call succeeded): run it again, but a few in a row mean the bridge is not running; 1 an error that
# a rerun cannot fix (a bug, a refused login): stop. Ctrl-C exits 130 without a traceback.
# ruff: noqa: UP031, SIM105 (MicroPython: no f-strings, no contextlib)
import os
import sys

# Find firmware_client in this checkout (two folders up from this script) when it is not installed:
# MicroPython has no PYTHONPATH, and MICROPYPATH replaces its whole module path.
sys.path.append(sys.path[0] + "/../..")

from firmware_client import CAError, Client, MQTTError, PersistentSession

CRASHED = 3
UNREACHED = 4

getenv = getattr(os, "getenv", lambda k, d=None: d)
HOST = getenv("CA_HOST", "127.0.0.1")
PORT = int(getenv("CA_PORT", "1883"))
reached = [False]  # True once a call was answered: the CA is there
FRUIT = ["apple", "banana", "cherry", "date", "elderberry", "fig", "grape", "honeydew", "kiwi", "lemon"]
n_items = int(getenv("ITEMS", "0")) or len(FRUIT)


def item(i):  # names made on demand: a long list must not have to fit in a small heap
    return "item%03d" % i if getenv("ITEMS") else FRUIT[i]
CRASH = int(getenv("CRASH", "47"))
CRASH_MID = int(getenv("CRASH_MID", "0"))

try:
    import random

    if getenv("SEED"):
        random.seed(int(getenv("SEED")) * 7919 + int(getenv("RUN", "0")))

    def dice():
        return random.getrandbits(8)

except ImportError:

    def dice():
        return os.urandom(1)[0]


def crash(why):
    print("crash:", why)
    sys.exit(CRASHED)


def transient(e):
    """Errors a rerun can get past: the bridge or the network away for a while."""
    if isinstance(e, CAError):
        return e.kind in ("busy", "unavailable")
    if isinstance(e, MQTTError):
        return e.code not in (1, 2, 4, 5)  # refused for good: protocol version, client id, login, authorization
    return isinstance(e, OSError)  # Timeout, refused or reset connections


def main():
    c = Client(getenv("CA_NAME", "cart1"), "default", host=HOST, port=PORT, timeout=10)
    c.connect()
    ps = PersistentSession(c)
    reached[0] = True
    start = 0
    if isinstance(ps.memento, int) and not isinstance(ps.memento, bool):
        start = ps.memento + 1
        if start < n_items:
            print("Crash detected, resuming at", start)
        else:  # the CA's end keeps the memento: an earlier run bought everything (maybe without hearing end's reply)
            print("Every item is bought already")
    for i in range(start, n_items):
        if dice() < CRASH:
            crash("before buying %d" % i)
        if dice() < CRASH_MID:
            try:  # send the buy, then die before (or just after) the reply: did it commit?
                c.call("buy", ps.nonce, i, item(i), timeout=dice() / 5000)
            except Exception:
                pass
            crash("while buying %d" % i)
        c.call("buy", ps.nonce, i, item(i))
    ok = ps.end()
    c.close()
    print("done, end ->", ok)
    return 0 if ok else 1


try:
    code = main()
except SystemExit:
    raise
except KeyboardInterrupt:
    print("interrupted")
    code = 130
except Exception as e:
    if transient(e) and not reached[0] and isinstance(e, OSError):
        print("cannot reach the CA at %s:%d: %s" % (HOST, PORT, e))
        code = UNREACHED
    elif transient(e):  # a crash: the next run resumes from the memento
        print("crash:", repr(e))
        code = CRASHED
    else:
        print("error:", repr(e))
        code = 1
sys.exit(code)
