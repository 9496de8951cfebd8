"""firmware_client.jsoncodec: JSON payloads with {"$bytes": base64} for byte strings."""

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_client import jsoncodec
from firmware_client.cbor import MAX_DEPTH, CBORError

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.binary()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text().filter(lambda k: k != "$bytes"), inner, max_size=5),
    max_leaves=25,
)


@given(values)
@settings(max_examples=300)
def test_json_round_trip(value):
    """Everything in the subset (string keys) survives dumps/loads."""
    assert jsoncodec.loads(jsoncodec.dumps(value)) == value


def test_json_bytes_written_as_base64_object():
    """bytes become {"$bytes": base64} exactly as PROTOCOL.md says, and read back."""
    raw = jsoncodec.dumps({"b": b"\x00\xffhi"})
    assert json.loads(raw) == {"b": {"$bytes": base64.b64encode(b"\x00\xffhi").decode()}}
    assert jsoncodec.loads(raw) == {"b": b"\x00\xffhi"}


def test_json_two_key_object_is_not_bytes():
    """Only a one-key {"$bytes": str} object is bytes."""
    assert jsoncodec.loads(b'{"$bytes": "AA==", "x": 1}') == {"$bytes": "AA==", "x": 1}


@pytest.mark.parametrize("bad", [b"{", b"\xff", b'{"$bytes": "!!!"}', b"[" * 100000, b"[" * (MAX_DEPTH + 2)])
def test_json_rejects_malformed_and_bombs(bad):
    """Bad JSON, bad UTF-8, bad base64 and bracket bombs raise CBORError (a ValueError)."""
    with pytest.raises(CBORError):
        jsoncodec.loads(bad)


def test_json_brackets_inside_strings_do_not_count():
    """The depth pre-check ignores brackets inside strings."""
    assert jsoncodec.loads(json.dumps(["[" * 500]).encode()) == ["[" * 500]


def test_json_non_string_keys_rejected():
    """JSON objects need string keys; the encoder says so instead of guessing."""
    with pytest.raises(CBORError):
        jsoncodec.dumps({1: 2})
