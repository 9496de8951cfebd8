# helloworld device: listen on logical session "client1", show the queues, notify everybody.
# Runs unchanged under CPython and MicroPython. Configure with env vars (or argv[1] = CA name):
#   CA_HOST (127.0.0.1) CA_PORT (1883) CA_NAME (foo-ca1) CA_SESSION (client1) NOTES (10: stop after
#   that many notifications, 0 = forever)
import os
import sys

from firmware_client import Client

getenv = getattr(os, "getenv", lambda k, d=None: d)
CA = sys.argv[1] if len(sys.argv) > 1 else getenv("CA_NAME", "foo-ca1")
SESSION = getenv("CA_SESSION", "client1")
NOTES = int(getenv("NOTES", "10"))

c = Client(CA, SESSION, host=getenv("CA_HOST", "127.0.0.1"), port=int(getenv("CA_PORT", "1883")))
c.connect()
got = []


def on_notify(args):
    got.append(args)
    print("notification:", args)


c.on_notify = on_notify
print("session_info:", c.call("session_info"))
print("notify_all:", c.call("notify_all", "hello from " + SESSION))
while NOTES == 0 or len(got) < NOTES:
    c.poll(0.5)
c.close()
print("received", len(got), "notifications, last seq", c.last_seq)
