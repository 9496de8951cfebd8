# helloworld device: listen on logical session "client1", show the queues, notify everybody.
# Runs unchanged under CPython and MicroPython (no MICROPYPATH/PYTHONPATH needed). Configure with env vars (or
# argv[1] = CA name):
#   CA_HOST (127.0.0.1) CA_PORT (1883) CA_NAME (foo-ca1) CA_SESSION (client1) NOTES (10: stop after
#   that many notifications, 0 = forever)
# exit status: 0 done; 2 cannot connect (one line says where); 130 Ctrl-C. Other errors raise.
# ruff: noqa: UP031 (MicroPython: no f-strings)
import os
import sys

# Find firmware_client in this checkout (two folders up from this script) when it is not installed:
# MicroPython has no PYTHONPATH, and MICROPYPATH replaces its whole module path.
sys.path.append(sys.path[0] + "/../..")

from firmware_client import Client

getenv = getattr(os, "getenv", lambda k, d=None: d)
CA = sys.argv[1] if len(sys.argv) > 1 else getenv("CA_NAME", "foo-ca1")
SESSION = getenv("CA_SESSION", "client1")
NOTES = int(getenv("NOTES", "10"))
HOST = getenv("CA_HOST", "127.0.0.1")
PORT = int(getenv("CA_PORT", "1883"))

got = []


def on_notify(args):
    got.append(args)
    print("notification:", args)


def main():
    c = Client(CA, SESSION, host=HOST, port=PORT)
    try:
        c.connect(retry=False)  # one attempt: a person is waiting to hear what is wrong
    except OSError as e:
        print("cannot connect to %s:%d: %s" % (HOST, PORT, e))
        return 2
    c.on_notify = on_notify
    try:
        print("session_info:", c.call("session_info"))
        print("notify_all:", c.call("notify_all", "hello from " + SESSION))
        while NOTES == 0 or len(got) < NOTES:
            c.poll(0.5)
    finally:
        c.close()
    print("received", len(got), "notifications, last seq", c.last_seq)
    return 0


try:
    code = main()
except KeyboardInterrupt:
    print("interrupted")
    code = 130
sys.exit(code)
