"""Fuzz the bridge's whole request path (topic check, decode, validate, admit, run) in process.

A seeded mutation fuzzer produces tens of thousands of hostile messages: random bytes, truncations, bit flips,
wrong types for every field, nesting bombs, hostile names. Expectations: nothing escapes the handler, every
rejection that has a reply path gets a bad_request, no state or queue changes, memory stays bounded, and a normal
call still works afterwards.
"""

from __future__ import annotations

import collections
import random
import tracemalloc

import cbor2
import pytest

from bridge import codec
from bridge.service import Bridge, Settings
from tests.apps import Counter

FIELDS = {"t": ["call", "ack", "sync", "bogus", "", None, 1],
          "id": ["r1", "", "x" * 65, 7, None, ["r"], {"a": 1}],
          "session": ["default", "s/1", "+", "#", "$x", "a\x00", "x" * 65, "", 5, None, "caf\u00e9"],
          "method": ["incr", "on_init", "_private", "__class__", "state", "nope", "", 3, None, "record_notify"],
          "args": [[], [1], ["t"], "notalist", None, {"a": 1}, [[[[[]]]]], [1, 2, 3, 4]],
          "seq": [0, -1, 2**70, "1", None, 5]}
TOPICS = ["ca/victim/in", "ca/victim/in", "ca/victim/in", "ca/+/in", "ca/#", "ca/victim/out", "ca//in",
          "ca/" + "v" * 80 + "/in", "ca/vic tim/in", "ca/victim\x7f/in", "x/victim/in", "ca/victim/in/"]


class FakeLink:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str | bytes, payload: bytes, qos: int = 1) -> None:
        # as MqttLink.publish takes it: text, or the encoded topic already length-prefixed (bridge.service's cache)
        self.published.append((topic if isinstance(topic, str) else topic[2:].decode(), payload))


def mutate(rng: random.Random) -> tuple[str, bytes]:
    topic = rng.choice(TOPICS)
    kind = rng.randrange(6)
    if kind == 0:
        return topic, rng.randbytes(rng.randrange(0, 200))
    msg = {k: rng.choice(v) for k, v in FIELDS.items() if rng.random() < 0.8}
    data = cbor2.dumps(msg) if rng.random() < 0.7 else codec.encode(msg, "json") if _jsonable(msg) else b"{"
    if kind == 1:
        return topic, data[: rng.randrange(len(data) + 1)]
    if kind == 2:
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            if buf:
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return topic, bytes(buf)
    if kind == 3:
        depth = rng.choice([10, 33, 1000, 20000])
        return topic, (b"\x81" * depth + b"\x00") if rng.random() < 0.5 else (b"[" * depth)
    if kind == 4:
        big = "x" * rng.choice([10, 70_000])
        return topic, cbor2.dumps({"t": "call", "id": "big", "method": "incr", "args": [big]})
    return topic, data


def _jsonable(msg: dict) -> bool:
    try:
        codec.encode(msg, "json")
    except Exception:
        return False
    return True


@pytest.fixture
async def bridge(tmp_path):
    """A Bridge whose runtime and store run for real, with a fake MQTT link that records what it publishes."""
    b = Bridge(Counter, Settings(db=tmp_path / "fuzz.db", pulse=None))
    b.link = FakeLink()  # type: ignore[assignment]
    await b.store.open()
    try:
        async with b.runtime:
            yield b
    finally:
        await b.store.close()


async def test_fuzzed_messages_change_nothing_and_never_escape(bridge):
    link = bridge.link
    rng = random.Random(20261126)
    bridge._on_message("ca/victim/in", cbor2.dumps({"t": "call", "id": "seed", "method": "incr"}))
    await bridge.runtime.wait_idle()
    baseline = codec.loads(bridge.runtime.actors["victim"].state_blob)
    link.published.clear()
    tracemalloc.start()
    peaks = []
    inputs = 0
    seen: collections.Counter[str] = collections.Counter()
    for _round in range(4):
        for _ in range(5000):
            topic, payload = mutate(rng)
            if topic == "ca/victim/in" and _is_valid_call(payload):
                continue  # a well-formed call would legitimately change state
            before = len(link.published)
            bridge._on_message(topic, payload)
            inputs += 1
            seen[_check_answer(topic, payload, link.published[before:])] += 1
        answered_at_once = len(link.published)  # the loop above never yields: no worker has run yet
        await bridge.runtime.wait_idle()
        peaks.append(tracemalloc.get_traced_memory()[0])
        # what the CA's worker answered afterwards: the admitted syncs' answers, and nothing else
        late = [(t, _decode(p)) for t, p in link.published[answered_at_once:]]
        assert all(t.startswith("ca/victim/session/") and m["t"] == "sync" for t, m in late), late[:3]
        seen["sync answers"] += len(late)
        link.published.clear()
    tracemalloc.stop()
    victim = bridge.runtime.actors["victim"]
    assert codec.loads(victim.state_blob) == baseline
    assert all(not data.queue for data in victim.sessions.values())
    assert set(bridge.runtime.actors) == {"victim"}  # no CA created by hostile input
    # memory after each 5000-input round stays flat (no per-message leak)
    assert peaks[-1] < peaks[0] + 2_000_000, peaks
    bridge._on_message("ca/victim/in", cbor2.dumps({"t": "call", "id": "after", "method": "incr"}))
    await bridge.runtime.wait_idle()
    assert codec.loads(victim.state_blob)["n"] == baseline["n"] + 1
    assert inputs > 15_000
    # every kind of outcome checked above occurred many times
    kinds = ("dropped", "unparsed-reply", "unparsed-error", "refused-call", "admitted", "sync answers")
    assert min(seen[k] for k in kinds) > 10, seen


def _decode(payload: bytes):
    return codec.decode(payload, codec.detect(payload))


def _check_answer(topic: str, payload: bytes, answered: list[tuple[str, bytes]]) -> str:
    """Check what the bridge published at once for one input; return which kind of input it was.

    Only ``ca/victim/in`` is a valid request topic here (TOPICS): a message on any other topic has no reply path
    and is dropped silently. On the valid topic, a payload that does not parse, or a call the CA cannot run, is
    rejected at once with exactly one bad_request: a reply on the caller's session topic when its session and id
    could be read, else an error on the CA's errors topic. A valid sync or ack is admitted and answers nothing now.
    """
    from bridge.errors import BadRequest
    from bridge.protocol import parse_request

    if topic != "ca/victim/in":
        assert answered == [], (topic, answered)
        return "dropped"
    try:
        req = parse_request(payload, 65536)
    except BadRequest as exc:
        assert len(answered) == 1, (payload[:80], answered)
        (where, body), = answered
        msg = _decode(body)
        assert msg["err"]["kind"] == "bad_request", msg
        if exc.session is not None and exc.request_id is not None:
            assert (where, msg["t"], msg.get("id")) == (f"ca/victim/session/{exc.session}", "reply", exc.request_id)
            return "unparsed-reply"
        assert (where, msg["t"]) == ("ca/victim/errors", "error"), (where, msg)
        return "unparsed-error"
    if req.kind != "call":
        assert answered == [], (req, answered)
        return "admitted"
    assert len(answered) == 1, (req, answered)  # not a valid call (those were skipped): refused, not run
    (where, body), = answered
    msg = _decode(body)
    assert (where, msg["t"], msg.get("id")) == (f"ca/victim/session/{req.session}", "reply", req.id), msg
    assert msg["err"]["kind"] == "bad_request", msg
    return "refused-call"


def _is_valid_call(payload: bytes) -> bool:
    from bridge.errors import BadRequest
    from bridge.protocol import parse_request

    try:
        req = parse_request(payload, 65536)
    except BadRequest:
        return False
    return req.kind == "call" and req.method in Counter.methods and Counter.methods[req.method].accepts(len(req.args))


async def test_rejections_answer_on_the_session_or_errors_topic(bridge):
    link = bridge.link
    bridge._on_message("ca/v/in", cbor2.dumps({"t": "call", "id": "r1", "method": 5}))
    bridge._on_message("ca/v/in", b"\x00garbage")
    bridge._on_message("ca/v/in", cbor2.dumps({"t": "call", "id": "r2", "session": "s", "method": "nope"}))
    await bridge.runtime.wait_idle()
    by_topic = {t: cbor2.loads(p) for t, p in link.published}
    assert by_topic["ca/v/session/default"]["err"]["kind"] == "bad_request"
    assert by_topic["ca/v/errors"]["err"]["kind"] == "bad_request"
    assert by_topic["ca/v/session/s"]["err"]["name"] == "NoSuchMethod"
    assert b"garbage" not in b"".join(p for _, p in link.published)  # never echoes payloads
