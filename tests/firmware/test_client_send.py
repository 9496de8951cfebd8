"""Client.send()/collect(): the non-blocking request API the Device runtime uses (one request in flight,
re-sent unchanged on silence, time samples only from requests sent once)."""

import time

import pytest

from fakedevicebridge import FakeDeviceBridge
from firmware_client import Client


@pytest.fixture
def bridge():
    b = FakeDeviceBridge()
    try:
        yield b
    finally:
        b.stop()


def _collect(c, rid, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        c.poll(0.05)
        r = c.collect(rid)
        if r is not None:
            return r
    raise AssertionError("no reply")


def test_send_collect_once_gives_time_sample(bridge):
    c = Client("dev", "iot", port=bridge.port, resend=0.3)
    c.clock = lambda: int(time.time() * 1000)
    c.connect()
    try:
        rid = c.send({"t": "dstart", "cmds": {}})
        with pytest.raises(ValueError):
            c.send({"t": "dsync"})  # one request in flight
        reply, t1, t4 = _collect(c, rid)
        assert reply["id"] == rid and reply["ok"]["boot"] == 1
        assert t1 is not None and t4 is not None and t1 <= reply["rx"] + 5 and t4 >= t1
        assert c.collect(rid) is None  # taken once
    finally:
        c.close()


def test_send_resends_same_bytes_on_silence_without_time_sample(bridge):
    """A lost answer: the request goes again after the silence with the same id and bytes, and the reply
    to a request sent twice gives no time sample (t1/t4 None)."""
    bridge.drop_device_replies = 1
    c = Client("dev", "iot", port=bridge.port, resend=0.3)
    c.clock = lambda: int(time.time() * 1000)
    c.connect()
    try:
        rid = c.send({"t": "dstart", "cmds": {"a": 1}})
        reply, t1, t4 = _collect(c, rid)
        assert reply["ok"]["boot"] == 1  # the re-sent dstart (same id) did not bump the boot
        sent = [r for r in bridge.device_requests if r[1] == rid]
        assert len(sent) == 2 and sent[0][2] == sent[1][2]
        assert (t1, t4) == (None, None)
        assert c.resent == 1
    finally:
        c.close()


def test_send_after_reconnect_resends_without_time_sample(bridge):
    """The connection breaks with the request unanswered: it is sent again after the reconnect, no sample."""
    bridge.drop_device_replies = 1
    c = Client("dev", "iot", port=bridge.port, resend=0)  # never on silence: only the reconnect re-sends
    c.clock = lambda: int(time.time() * 1000)
    c.connect()
    try:
        rid = c.send({"t": "dstart", "cmds": {}})
        assert bridge.wait_for(lambda: len(bridge.device_requests) == 1)
        bridge.kick()
        reply, t1, t4 = _collect(c, rid)
        assert reply["id"] == rid and (t1, t4) == (None, None)
    finally:
        c.close()
