"""firmware_client.cbor against CPython cbor2: byte-identical encoding, mutual decoding, strict decoding."""

import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_client import cbor
from firmware_client.cbor import CBORError

# The wire subset. NaN is excluded from equality checks (nan != nan) and tested on its own.
# Integers reach 1024 bits: beyond 64 bits they are bignums (tags 2 and 3).
ints = st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.integers(min_value=-(2**1024), max_value=2**1024 - 1)
floats = st.floats(allow_nan=False)
scalars = st.none() | st.booleans() | ints | floats | st.text() | st.binary()
keys = st.text() | st.integers(min_value=-(2**64), max_value=2**64 - 1) | st.binary()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=30,
)


@given(values)
@settings(max_examples=500)
def test_cbor_dumps_byte_identical_to_cbor2(value):
    """Encoding matches cbor2.dumps (default, non-canonical) byte for byte."""
    assert cbor.dumps(value) == cbor2.dumps(value)


@given(values)
@settings(max_examples=500)
def test_cbor_loads_reads_cbor2_output(value):
    """Whatever cbor2 writes in the subset, the device decoder reads back equal."""
    assert cbor.loads(cbor2.dumps(value)) == value


@given(values)
@settings(max_examples=300)
def test_cbor2_reads_device_output(value):
    """cbor2 decodes what the device writes."""
    assert cbor2.loads(cbor.dumps(value)) == value


@given(st.binary(max_size=40))
@settings(max_examples=1000)
def test_cbor_loads_random_bytes_agrees_or_rejects(data):
    """On arbitrary bytes the decoder either raises CBORError or agrees with cbor2."""
    try:
        got = cbor.loads(data)
    except CBORError:
        return
    want = cbor2.loads(data)
    if isinstance(got, float) and math.isnan(got):
        assert math.isnan(want)
    else:
        assert cbor.dumps(got) == cbor.dumps(want)


def test_cbor_special_floats_match_cbor2():
    """NaN and infinities use cbor2's 3-byte forms, and decode back."""
    for v in (float("nan"), float("inf"), float("-inf"), -0.0):
        assert cbor.dumps(v) == cbor2.dumps(v)
    assert math.isnan(cbor.loads(cbor.dumps(float("nan"))))
    assert cbor.loads(bytes.fromhex("f93e00")) == 1.5  # float16
    assert cbor.loads(bytes.fromhex("fa3fc00000")) == 1.5  # float32


def test_cbor_tuple_and_bytearray_encode_like_list_and_bytes():
    """Tuples encode as arrays and bytearrays as byte strings."""
    assert cbor.dumps((1, 2)) == cbor2.dumps([1, 2])
    assert cbor.dumps(bytearray(b"ab")) == cbor2.dumps(b"ab")


@pytest.mark.parametrize(
    "hexdata",
    [
        "",  # empty
        "18",  # truncated uint8
        "1a0000",  # truncated uint32
        "62616",  # (odd hex fixed below) truncated text
        "450102",  # bytes claims 5, has 2
        "8301",  # array claims 3, has 1
        "a101",  # map missing value
        "5f4101ff",  # indefinite bytes
        "9f01ff",  # indefinite array
        "c11a514b67b0",  # tag 1
        "c201",  # a bignum tag around an integer, not a byte string
        "c2c24100",  # a bignum tag around a tag
        "c25f4101ff",  # a bignum of indefinite length
        "c24a0102",  # a bignum claiming 10 bytes, 2 present
        "c25881" + "01" * 129,  # a bignum of 129 bytes: more than 1024 bits
        "f7",  # undefined
        "f820",  # simple(32)
        "1c",  # reserved additional info
        "0102",  # trailing bytes
        "62c328",  # invalid utf-8
        "a18001",  # unhashable key (array)
        "5bffffffffffffffff",  # claims 2**64-1 bytes: must not allocate
        "9bffffffffffffffff",  # claims 2**64-1 items
    ],
)
def test_cbor_loads_rejects_malformed(hexdata):
    """Truncated, indefinite, tagged, trailing and unsupported input raises CBORError."""
    if len(hexdata) % 2:
        hexdata = hexdata[:-1]
    with pytest.raises(CBORError):
        cbor.loads(bytes.fromhex(hexdata))


def test_cbor_nesting_depth_bounded():
    """Nesting deeper than MAX_DEPTH is rejected on decode and encode; MAX_DEPTH itself is fine."""
    ok = b"\x81" * cbor.MAX_DEPTH + b"\x01"
    assert cbor.loads(ok) is not None
    with pytest.raises(CBORError):
        cbor.loads(b"\x81" * (cbor.MAX_DEPTH + 1) + b"\x01")
    with pytest.raises(CBORError):
        cbor.loads(b"\x81" * 100000)
    deep = 1
    for _ in range(cbor.MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(CBORError):
        cbor.dumps(deep)


def test_cbor_rejects_unsupported_types_and_huge_ints():
    """Sets, objects and ints beyond 1024 bits are not part of the wire subset."""
    for v in ({1}, object(), 2**1024, -(2**1024) - 1):
        with pytest.raises(CBORError):
            cbor.dumps(v)


@pytest.mark.parametrize("value", [2**64, -(2**64) - 1, 2**70, -(2**70), 2**1024 - 1, -(2**1024), [1, {"n": 3**200}]])
def test_cbor_bignums_round_trip_like_cbor2(value):
    """Integers beyond 64 bits travel as bignums (tags 2 and 3), byte-identical to cbor2, and decode back."""
    assert cbor.dumps(value) == cbor2.dumps(value)
    assert cbor.loads(cbor2.dumps(value)) == value
    assert cbor.loads(bytes.fromhex("c249000000000000000001")) == 1  # not the shortest form: still read
    assert cbor.loads(bytes.fromhex("c340")) == -1


def test_cbor_decode_error_is_value_error():
    """CBORError can be caught as ValueError."""
    assert issubclass(CBORError, ValueError)
