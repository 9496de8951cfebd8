"""Overload: a flooded CA answers busy while others carry on; a deaf device cannot grow the bridge; a slow consumer
does not stall anyone."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

from tests.conftest import ROOT
from tests.device import Device


def test_flooded_ca_answers_busy_and_others_are_served(live_factory):
    live = live_factory(extra=["--mailbox", "8"])
    hot, cold = Device(live.port, "hot"), Device(live.port, "cold")
    rids = [hot.send_call("sleep", 0.02) for _ in range(300)]
    for i in range(20):
        assert cold.call("incr", timeout=20) == i + 1
    replies = [hot.wait_reply(rid, 30) for rid in rids]
    busy = [r for r in replies if "err" in r]
    assert busy and all(r["err"]["kind"] == "busy" for r in busy)
    assert len(replies) - len(busy) >= 8
    hot.close()
    cold.close()


def test_a_device_that_never_acks_cannot_grow_the_queue(live_factory):
    live = live_factory(extra=["--max-queue", "50"])
    d = Device(live.port, "q1")
    assert d.call("spam", "deaf", 500, 10, False) == 5  # the default limit: oldest dropped
    assert d.call("spam", "deafer", 500, 10, True) == 50  # "unlimited" still stops at the hard cap
    assert d.call("spam", "deafer", 500, 10, True) == 50
    d.close()
    live.bridge.stop()
    out = subprocess.run([sys.executable, "-m", "bridge", "inspect", "--db", str(live.bridge.db), "q1", "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    sessions = json.loads(out.stdout)["sessions"]
    assert sessions["deaf"]["queued"] == 5 and sessions["deafer"]["queued"] == 50
    assert sessions["deafer"]["first_seq"] == 951  # the newest 50 of 1000 are kept


def test_a_slow_consumer_does_not_stall_others(live_factory):
    live = live_factory()
    slow = Device(live.port, "s1", "slow")
    slow.client.loop_stop()  # subscribed, then stops reading its socket: the broker's buffers fill up
    others = Device(live.port, "s1", "fast")
    results: list[int] = []

    def spam() -> None:
        for _ in range(4):
            results.append(others.call("spam", "slow", 1000, 1000, True, timeout=60))

    t = threading.Thread(target=spam)
    t.start()
    calm = Device(live.port, "s2")
    for i in range(30):  # another CA and device keep getting answers meanwhile
        assert calm.call("incr", timeout=30) == i + 1
    t.join(120)
    assert results and results[-1] > 0
    assert others.call("incr", timeout=30) == 1  # the spamming device itself is still served
    calm.close()
    others.close()
