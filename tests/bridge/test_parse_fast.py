"""parse_request checks the usual call ({t: "call", id, session, method, args} of plain values) field by field
instead of walking it generically. Whatever a payload of that shape holds, the answer is the full path's: the same
request, or the same error (class, message, and the session, request id and codec it carries)."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import codec, protocol
from bridge.errors import BadRequest
from bridge.protocol import Call, parse_request


def full_path(payload: bytes) -> protocol.Inbound:
    """What parse_request answers without its fast path: decode, the subset walk, the generic validation."""
    kind = codec.detect(payload)
    msg = codec.decode(payload, kind)
    return protocol._parse(msg, kind, payload)


def outcome(parse: Any, payload: bytes) -> tuple[Any, ...]:
    try:
        req = parse(payload)
    except BadRequest as exc:
        return (type(exc), str(exc), exc.session, exc.request_id, exc.codec)
    return (req,)


def same(payload: bytes) -> tuple[Any, ...]:
    fast, full = outcome(lambda p: parse_request(p, 65536), payload), outcome(full_path, payload)
    assert fast == full
    return fast


def call(**fields: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"t": "call", "id": "r1", "session": "s1", "method": "incr", "args": []}
    for key, value in fields.items():
        if value is _GONE:
            del msg[key]
        else:
            msg[key] = value
    return msg


_GONE = object()
DEEP: list[Any] = []
for _ in range(40):
    DEEP = [DEEP]

GOOD = [
    call(),
    call(args=[1, -2, 2**64, -(2**1024), 2**1024 - 1, 1.5, "x", b"\x00", None, True, False]),
    call(args=[[1, [2]], {"k": {"j": [None]}}, {"": b""}]),
    call(session=_GONE),
    call(args=_GONE),
    call(session=_GONE, args=_GONE),
    call(id="x" * 64, method=""),
    {"method": "m", "args": [3], "id": "r", "t": "call", "session": "s"},  # any key order
    call(extra="ignored"),  # an unknown key: the full path, which ignores it
    {1: "x", "t": "call", "id": "r", "method": "m", "session": "s"},  # a non-text key in a map of five
    {"t": "call", "id": "r", "method": "m", "session": "s", "x": 1},  # five members, one of them unknown
]

BAD = [
    call(id=7), call(id=""), call(id="x" * 65), call(id="a\x00b"), call(id=None), call(id=_GONE),
    call(session="bad name"), call(session=""), call(session=5), call(session=None), call(session="s" * 65),
    call(method=5), call(method=None), call(method=_GONE), call(method=["m"]),
    call(args="x"), call(args={"a": 1}), call(args=None), call(args=5),
    call(args=[2**1024]), call(args=[-(2**1024) - 1]), call(args=[1, [2**1100]]), call(args=[DEEP]),
    call(args=[cbor2.CBORTag(99, 1)]), call(args=["ok", {"k": cbor2.CBORTag(99, 1)}]),
    call(args=[cbor2.CBORTag(99, 1), 2**1100]),  # the first of two problems is the one reported
    call(id=5, args=[2**1100]),  # a subset error comes before any field error
    call(session="bad name", args=[cbor2.CBORTag(99, 1)]),
    call(extra=cbor2.CBORTag(99, 1)),
    call(t="Call"), call(t=b"call"), call(t=None), call(t=["call"]), call(t={"call": 1}), {"t": "call"},
    {"t": "call", "id": "r"},
]


@pytest.mark.parametrize("msg", GOOD, ids=range(len(GOOD)))
def test_usual_calls_parse_as_the_full_path_does(msg):
    payload = cbor2.dumps(msg)
    (req,) = same(payload)
    assert type(req) is Call and req.raw is payload and req.codec == "cbor"
    assert (req.id, req.session, req.method, req.args) == (
        msg["id"], msg.get("session", "default"), msg["method"], msg.get("args", []))


@pytest.mark.parametrize("msg", BAD, ids=range(len(BAD)))
def test_a_call_shaped_payload_with_a_wrong_field_gets_the_full_paths_error(msg):
    result = same(cbor2.dumps(msg))
    assert issubclass(result[0], BadRequest)


def test_a_t_of_the_wrong_type_is_a_bad_request():
    for t in ([], {"a": 1}, ["call"]):
        with pytest.raises(BadRequest, match="field 't' must be 'call'"):
            parse_request(cbor2.dumps({"t": t}), 100)


def test_a_missing_args_is_a_new_list_each_time():
    payload = cbor2.dumps(call(args=_GONE))
    first, second = parse_request(payload, 100), parse_request(payload, 100)
    assert first.args == [] and first.args is not second.args  # type: ignore[union-attr]


def test_json_calls_take_the_same_path_and_keep_their_checks():
    for text in ('{"t":"call","id":"r","session":"s","method":"m","args":[1,{"$bytes":"AAE="}]}',
                 '{"t":"call","id":"\\ud800","method":"m"}', '{"t":"call","id":"a\\u0000","method":"m"}',
                 '{"t":"call","id":"r","method":"m","args":[1e999]}'):
        same(text.encode())
    (req,) = same(b'{"t":"call","id":"r","session":"s","method":"m","args":[1,{"$bytes":"AAE="}]}')
    assert req.codec == "json" and req.args == [1, b"\x00\x01"]  # type: ignore[union-attr]


leaf = st.none() | st.booleans() | st.integers(-(2**1030), 2**1030) | st.floats() | st.text(max_size=6) \
    | st.binary(max_size=4) | st.just(cbor2.CBORTag(99, 0))
value = st.recursive(leaf, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                     max_leaves=8)
field = value | st.sampled_from(["", "r", "s", "default", "x" * 64, "x" * 65, "a\x00", "bad name", "call"])


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["t", "id", "session", "method", "args", "x"]), field, max_size=6),
       st.booleans(), st.booleans())
def test_any_map_near_the_usual_call_gets_the_full_paths_answer(msg, is_call, as_json):
    if is_call:
        msg["t"] = "call"
    if as_json:
        try:
            payload = json.dumps(msg, default=lambda v: None).encode()
        except ValueError:
            return
    else:
        payload = cbor2.dumps(msg)
    same(payload)
