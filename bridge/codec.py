"""Payload encodings: CBOR (the default) and JSON, limited to the wire subset.

The subset is what every device decoder reads: int (up to 1024 bits; beyond 64 bits a CBOR bignum, tags 2 and 3,
which firmware_client decodes), float64, str, bytes, list, dict, bool, None. Decoding checks the subset and the
nesting depth, so hostile payloads (other tags, bombs, huger ints) are refused with a CodecError instead of reaching
CA code.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final, Literal

import cbor2

from bridge.errors import CodecError

__all__ = ["CBOR", "JSON", "Codec", "check_subset", "decode", "decode_unchecked", "detect", "dumps", "encode",
           "invalid_payload", "loads", "loads_untrusted"]

Codec = Literal["cbor", "json"]
CBOR: Final = "cbor"
JSON: Final = "json"

MAX_DEPTH: Final = 32
INT_BITS: Final = 1024  # integers in -(2**INT_BITS) .. 2**INT_BITS - 1, like a bignum of at most 128 bytes
INT_MIN: Final = -(2**INT_BITS)
INT_MAX: Final = 2**INT_BITS - 1
_JSON_START: Final = frozenset(b"{ \t\r\n")


def detect(payload: bytes) -> Codec:
    """Tell the encoding of a request: JSON objects start with ``{``, everything else is CBOR."""
    return JSON if payload[:1] and payload[0] in _JSON_START else CBOR


def dumps(value: Any) -> bytes:
    """Encode to CBOR (used for storage and CBOR sessions)."""
    try:
        return cbor2.dumps(value)
    except (cbor2.CBOREncodeError, TypeError, ValueError, RecursionError) as exc:
        raise CodecError(f"value cannot be encoded: {exc}") from None


def loads(data: bytes) -> Any:
    """Decode CBOR written by :func:`dumps` (trusted data from the store)."""
    return cbor2.loads(data)


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"{type(value).__name__} is not in the wire subset")


def _json_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(b64 := obj.get("$bytes"), str):
        try:
            return base64.b64decode(b64, validate=True)
        except ValueError:
            raise CodecError("invalid base64 in $bytes") from None
    return obj


def _no_constants(name: str) -> Any:
    raise CodecError(f"{name} is not valid JSON")


def encode(value: Any, codec: Codec) -> bytes:
    """Encode an outgoing message in a session's codec."""
    if codec == CBOR:
        return dumps(value)
    try:
        return json.dumps(value, default=_json_default, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise CodecError(f"value cannot be encoded as JSON: {exc}") from None


def decode(payload: bytes, codec: Codec) -> Any:
    """Decode an incoming payload and check it stays inside the wire subset."""
    value = decode_unchecked(payload, codec)
    check_subset(value)
    return value


def decode_unchecked(payload: bytes, codec: Codec) -> Any:
    """Decode an incoming payload; CodecError if it is not valid. The caller checks the subset (:func:`decode`
    does; bridge.protocol checks the usual request's fields directly and calls :func:`check_subset` otherwise)."""
    try:
        if codec == CBOR:
            value = loads_untrusted(payload)
        else:
            value = json.loads(payload, object_hook=_json_hook, parse_constant=_no_constants)
    except CodecError:
        raise
    except Exception as exc:  # cbor2's tag decoders raise assorted errors on hostile input
        raise invalid_payload(exc, codec) from None
    return value


loads_untrusted: Final = cbor2.loads  # CBOR from a peer: every failure becomes invalid_payload's CodecError


def invalid_payload(exc: Exception, codec: Codec) -> CodecError:
    """The error for a payload that does not decode (``exc``: what the decoder raised)."""
    return CodecError(f"payload is not valid {codec.upper()}: {type(exc).__name__}")


LEAVES: Final = frozenset({str, float, bool, bytes, type(None)})  # in the subset whatever their value


def check_subset(value: Any, depth: int = 0) -> None:
    """Raise CodecError unless ``value`` is inside the wire subset and at most MAX_DEPTH deep."""
    if depth > MAX_DEPTH:
        raise CodecError(f"nesting deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind is str or kind is float or kind is bool or value is None or kind is bytes:
        return
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise CodecError(f"integer beyond {INT_BITS} bits")
        return
    if (kind is list or kind is tuple or kind is dict) and value and depth >= MAX_DEPTH:
        raise CodecError(f"nesting deeper than {MAX_DEPTH}")  # its items are one level deeper
    if kind is list or kind is tuple:  # tuples go out as arrays
        for item in value:
            if type(item) not in LEAVES:  # text, floats, ...: nothing to look into (the common case, inlined)
                check_subset(item, depth + 1)
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) not in LEAVES:
                check_subset(key, depth + 1)
            if type(item) not in LEAVES:
                check_subset(item, depth + 1)
        return
    raise CodecError(f"{kind.__name__} is not in the wire subset")
