"""A long-lived listener for the chaos run: prints each notification of a session as one JSON line.

    python tests/chaos/watcher.py CA SESSION PORT
It keeps going through broker and bridge restarts (the client reconnects and re-syncs by itself).
"""

import json
import sys
import time

from firmware_client import Client

ca, session, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = Client(ca, session, port=port, timeout=5, reconnect_max=1.0)
client.on_notify = lambda args: print(json.dumps({"seq": client.last_seq + 1, "args": args}), flush=True)
last_report = time.time()
while True:
    if time.time() - last_report > 2:
        last_report = time.time()
        print(f"watcher {ca}: last_seq={client.last_seq} lost={client.lost} recreated={client.recreated} "
              f"held_dropped={client.held_dropped} connected={client.connected}", file=sys.stderr, flush=True)
    try:
        if not client.connected:
            client.connect(timeout=2)
        client.poll(0.2)  # reconnects, re-subscribes and re-syncs by itself
    except OSError as exc:
        print(f"watcher {ca}: {exc!r}", file=sys.stderr, flush=True)
        time.sleep(0.2)
