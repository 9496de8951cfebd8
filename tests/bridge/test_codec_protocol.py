"""Codec and protocol: the wire subset, hostile payloads, names and topics."""

from __future__ import annotations

import contextlib
import json
import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import codec, protocol
from bridge.errors import BadRequest, CodecError
from bridge.protocol import Topics, encode_note, parse_request, valid_name

def tree(floats):
    leaves = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20) \
        | st.binary(max_size=20) | floats
    return st.recursive(
        leaves, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=8), c, max_size=5), max_leaves=30)


values = tree(st.floats(allow_nan=False))
json_values = tree(st.floats(allow_nan=False, allow_infinity=False))  # JSON has no infinities


@given(values)
def test_cbor_round_trip_and_subset(value):
    data = codec.encode(value, "cbor")
    assert data == cbor2.dumps(value)
    assert codec.decode(data, "cbor") == value


@given(json_values)
def test_json_round_trip_with_bytes(value):
    assert codec.decode(codec.encode(value, "json"), "json") == value


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_random_bytes_never_raise_anything_but_bad_request(data):
    with contextlib.suppress(BadRequest):
        parse_request(data, 65536)


@given(st.binary(max_size=200))
def test_truncated_cbor_is_a_codec_error(tail):
    full = cbor2.dumps({"t": "call", "id": "x", "method": "m", "args": [tail, {"k": [1, 2, 3]}]})
    for cut in (1, len(full) // 2, len(full) - 1):
        with pytest.raises(CodecError):
            codec.decode(full[:cut], "cbor")


@pytest.mark.parametrize("payload", [
    b"[" * 100_000,  # JSON recursion bomb
    b"\x81" * 100_000,  # CBOR nesting bomb
    b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # CBOR array claiming 2**64-1 items
    b"\x5b\x00\x00\x00\x10\x00\x00\x00\x00",  # byte string claiming 64 GiB
    cbor2.dumps(cbor2.CBORTag(1, 0)),  # tags are outside the subset
    cbor2.dumps(2**1024),  # a bignum beyond 1024 bits
    cbor2.dumps(-(2**1024) - 1),
    cbor2.dumps({1, 2}),
    b'{"a": NaN}',
])
def test_hostile_payloads_are_codec_errors(payload):
    with pytest.raises(CodecError):
        codec.decode(payload, codec.detect(payload))


@pytest.mark.parametrize("value", [2**64, 2**70, -(2**64) - 1, 2**1024 - 1, -(2**1024)])
def test_bignums_up_to_1024_bits_are_in_the_subset(value):
    """Integers beyond 64 bits arrive as CBOR bignums (tags 2, 3) or JSON digits; the firmware client reads both."""
    assert codec.decode(cbor2.dumps({"args": [value]}), "cbor") == {"args": [value]}
    assert codec.decode(json.dumps({"args": [value]}).encode(), "json") == {"args": [value]}
    assert codec.encode(value, "cbor") == cbor2.dumps(value)


def test_depth_limit():
    deep = [[]]
    for _ in range(codec.MAX_DEPTH + 2):
        deep = [deep]
    with pytest.raises(CodecError):
        codec.decode(cbor2.dumps(deep), "cbor")


def test_note_splice_matches_cbor2_and_json():
    args = [1, "two", {"three": b"\x03"}]
    assert encode_note(7, cbor2.dumps(args), "cbor") == cbor2.dumps({"t": "note", "seq": 7, "args": args})
    assert json.loads(encode_note(7, cbor2.dumps(args), "json")) == {
        "t": "note", "seq": 7, "args": [1, "two", {"three": {"$bytes": "Aw=="}}]}


def test_floats_are_float64_never_float16():
    assert codec.encode(1.0, "cbor") == b"\xfb" + b"\x3f\xf0" + b"\x00" * 6
    assert math.isinf(codec.decode(b"\xf9\x7c\x00", "cbor"))  # half floats from others are still read


@pytest.mark.parametrize("name,ok", [
    ("shop1", True), ("foo-ca1", True), ("a.b_c", True), ("x" * 64, True), ("x" * 65, False), ("", False),
    ("-lead", False), ("a/b", False), ("a+b", False), ("#", False), ("$SYS", False), ("a b", False),
    ("caf\u00e9", False), ("a\x00", False), ("new\nline", False), (None, False), (5, False),
])
def test_names(name, ok):
    assert valid_name(name) is ok


def test_topics():
    t = Topics("ca")
    assert t.inbound_filter == "ca/+/in"
    assert t.session("shop1", "default") == "ca/shop1/session/default"
    assert t.ca_of("ca/shop1/in") == "shop1"
    for bad in ("ca/shop1/out", "ca//in", "ca/a/b/in", "cb/shop1/in", "ca/+/in", "ca/" + "x" * 65 + "/in"):
        assert t.ca_of(bad) is None
    nested = Topics("site/7")
    assert nested.ca_of("site/7/dev/in") == "dev"
    with pytest.raises(ValueError):
        Topics("bad/#")


@pytest.mark.parametrize("msg,error", [
    ({"t": "call", "method": "m"}, "'id'"),
    ({"t": "call", "id": "", "method": "m"}, "'id'"),
    ({"t": "call", "id": "x" * 65, "method": "m"}, "'id'"),
    ({"t": "call", "id": 5, "method": "m"}, "'id'"),
    ({"t": "call", "id": "r", "method": 5}, "'method'"),
    ({"t": "call", "id": "r", "method": "m", "args": "x"}, "'args'"),
    ({"t": "call", "id": "r", "method": "m", "session": "a/b"}, "session"),
    ({"t": "ack", "seq": -1}, "'seq'"),
    ({"t": "ack", "seq": "1"}, "'seq'"),
    ({"t": "bogus"}, "'t'"),
])
def test_invalid_requests_name_the_problem(msg, error):
    with pytest.raises(BadRequest, match=error) as exc:
        parse_request(cbor2.dumps(msg), 65536)
    if msg.get("id") == "r" and "session" not in msg:
        assert exc.value.request_id == "r" and exc.value.session == "default"


def test_oversized_payload():
    with pytest.raises(BadRequest, match="exceeds"):
        parse_request(b"\xa0" * 70_000, 65536)


def test_parse_json_request_defaults():
    req = parse_request(b'{"t":"call","id":"r1","method":"m"}', 65536)
    assert (req.kind, req.session, req.codec, req.args) == ("call", "default", "json", [])


@pytest.mark.parametrize("wrap", [lambda v: [v], lambda v: {"k": v}])
@pytest.mark.parametrize("leaf", ["text", 1.5, None, b"x", True, 7])
def test_nesting_limit_counts_leaves_too(wrap, leaf):
    value = leaf
    for _ in range(codec.MAX_DEPTH):
        value = wrap(value)
    codec.check_subset(value)  # a leaf at depth MAX_DEPTH is fine ...
    with pytest.raises(CodecError, match="nesting deeper"):
        codec.check_subset(wrap(value))  # ... one level deeper is not


def test_tokens_never_begin_with_a_dash_so_a_command_line_takes_them_as_they_are(monkeypatch):
    """Nonces, passwords and the dashboard token are typed or pasted on command lines (`python -m firmware_client
    call ... buy <nonce> 0 apple`, `--password <it>`), where a leading '-' reads as an option."""
    import secrets

    drawn = iter(["-dash", "_ok"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: next(drawn))
    assert protocol.token(15) == "_ok"
    monkeypatch.undo()
    tokens = [protocol.token(15) for _ in range(3000)]  # about 47 of these would begin with '-' otherwise
    assert all(len(t) == 20 and not t.startswith("-") for t in tokens)
    assert len(set(tokens)) == 3000
