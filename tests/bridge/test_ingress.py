"""The one ingress: topics or CA names, decoding, validation and error replies, the same for the MQTT link and the
Harness (so the Harness validates exactly like a bridge); and the registry of message kinds."""

from __future__ import annotations

import asyncio

import cbor2
import pytest

from bridge.errors import CallError
from bridge.protocol import KINDS, Ack, Call, DStart, DSync, Presence, Sync, parse_request
from bridge.testing import Harness
from tests.apps import Counter


async def test_the_harness_refuses_what_a_bridge_refuses():
    async with Harness(Counter) as h:
        with pytest.raises(CallError) as err:  # an id no device may send (so none to answer on the session topic)
            await h.call("c1", "s", "incr", request_id="x" * 65)
        assert (err.value.kind, err.value.name) == ("bad_request", "BadRequest") and "'id'" in err.value.message
        with pytest.raises(CallError) as err:  # no valid session: answered on the CA's errors topic
            await h.call("c1", "a/b", "incr")
        assert (err.value.kind, err.value.name) == ("bad_request", "BadRequest") and "session" in err.value.message
        assert [m["t"] for m in h.sink.errors["c1"]] == ["error", "error"]  # an id too long is no id to answer
        assert "c1" not in h.runtime.actors  # nothing ran, nothing was created
        assert h.runtime.metrics.rejected["BadRequest"] == 2


async def test_payloads_go_through_the_same_ingress_by_topic_or_by_name():
    async with Harness(Counter) as h:
        assert await h.send("c1", cbor2.dumps({"t": "call", "id": "r1", "method": "incr"})) == {
            "t": "reply", "id": "r1", "ok": 1}
        assert (await h.send("c1", b"\x00garbage"))["t"] == "error"
        loop = asyncio.get_running_loop()
        by_topic = loop.create_future()
        h.ingress.receive("ca/c1/in", b'{"t":"call","id":"r2","method":"incr"}', by_topic)
        assert await by_topic == {"t": "reply", "id": "r2", "ok": 2}  # JSON in, JSON out
        dropped = h.runtime.metrics.dropped_topics
        for topic in ("ca/c1/out", "ca/_fwd/node/1/c1", "other/c1/in", "ca/bad name/in"):  # no cluster: no forwards
            h.ingress.receive(topic, cbor2.dumps({"t": "call", "id": "r3", "method": "incr"}))
        await h.settle()
        assert h.runtime.metrics.dropped_topics == dropped + 4
        assert h.state("c1")["n"] == 2


@pytest.mark.parametrize("msg", [
    Call("s", "cbor", "r1", "m", [1, b"x", {"k": None}]),
    Call("default", "json", "r1", "m", []),
    Ack("s", "cbor", 7),
    Sync("s", "json", 0),
    Presence("dev1", "cbor", True),
])
def test_every_kind_encodes_to_what_parses_back(msg):
    back = parse_request(msg.encode(), 65536)
    assert type(back) is type(msg) and back.kind == msg.kind
    back.raw = b""
    assert back == msg


def test_each_kind_is_registered_once_under_its_t():
    assert dict(KINDS) == {"call": Call, "ack": Ack, "sync": Sync, "presence": Presence, "dstart": DStart,
                           "dsync": DSync}
    assert [cls for cls in KINDS.values() if cls.replied] == [Call, DStart, DSync]
    assert [cls for cls in KINDS.values() if cls.coalesced] == [Presence]
