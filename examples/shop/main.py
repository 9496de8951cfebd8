import time

import network
from firmware_client import Client, PersistentSession

w = network.WLAN(network.STA_IF)
w.active(True)
w.connect("ssid", "password")
while not w.isconnected():
    time.sleep_ms(100)
c = Client("shop1", session="default", host="192.168.1.10")   # user=, password=, ssl= when auth/TLS is on
c.connect()                                       # announces the session online; its MQTT will: offline
c.on_notify = lambda args: print("got", args)     # each notification once, in order, acked after it returns
ps = PersistentSession(c)                         # begin(): ps.nonce, ps.memento (where a crashed run stopped)
print(c.call("buy", ps.nonce, 0, "apple", timeout=5))
while True:
    c.poll(1)                                     # notifications, keepalive, acks, reconnects
