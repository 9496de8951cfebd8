"""The cluster's counters (forwards, claims) live in each bridge's Metrics and reach its /metrics.

Two bridges on one PostgreSQL behind one mosquitto, each with ``--metrics``; a monitor subscribed to the forward
topics sees every forwarded request, so the bridges' forward counters must add up to exactly what it saw.
"""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt

from tests.cluster.test_cluster import Cluster, call
from tests.conftest import free_port
from tests.observability.test_metrics_and_logs import scrape, value


def test_forwards_and_claims_are_counted_and_exported(tmp_path, pg_url):
    c = Cluster(tmp_path, pg_url, "tests/apps.py:Counter", n=2)
    ports = [free_port() for _ in c.bridges]
    for b, port in zip(c.bridges, ports, strict=True):
        b.extra += ["--metrics", f"127.0.0.1:{port}"]
    seen: list[str] = []
    lock = threading.Lock()
    subscribed = threading.Event()
    monitor = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fwd-monitor")

    def on_message(_c, _u, msg) -> None:
        with lock:
            seen.append(msg.topic)

    monitor.on_message = on_message
    monitor.on_connect = lambda client, *_a: client.subscribe("ca/_fwd/#", qos=1)
    monitor.on_subscribe = lambda *_a: subscribed.set()
    try:
        c.start()
        monitor.connect("127.0.0.1", c.broker.port)
        monitor.loop_start()
        assert subscribed.wait(10), "no SUBACK for the monitor"
        devs = [c.device(f"m{i}") for i in range(7)]  # odd: mosquitto's round robin must not match the owners
        for _ in range(5):
            for d in devs:
                call(d, "incr")
        owners = c.owners()
        deadline = time.monotonic() + 30
        while True:  # forwards still in flight reach the monitor a moment later
            scrapes = [scrape(port) for port in ports]
            forwarded = sum(value(s, "ca_bridge_cluster_forwarded_total") for s in scrapes)
            with lock:
                monitored = len(seen)
            nodes = [value(s, "ca_bridge_cluster_nodes") for s in scrapes]  # as of each one's last heartbeat
            if (forwarded == monitored and nodes == [2, 2]) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert forwarded == monitored, f"the bridges counted {forwarded} forwards, the broker carried {monitored}"
        assert forwarded >= 1  # $share spreads 35 requests over both bridges: some reach the non-owner
        assert nodes == [2, 2]
        for i, s in enumerate(scrapes):
            owned = sum(1 for owner in owners.values() if owner == f"b{i}")
            assert value(s, "ca_bridge_cluster_claims_total") >= owned  # each owned CA was claimed by its owner
        assert sum(value(s, "ca_bridge_cluster_claims_total") for s in scrapes) >= len(devs)
    finally:
        monitor.loop_stop()
        monitor.disconnect()
        c.close()
