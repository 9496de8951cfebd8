"""JSON payloads (the alternative to CBOR), using the built-in json module.

Bytes travel as ``{"$bytes": "<base64>"}`` and such a one-key object is read back as bytes
(PROTOCOL.md, Encoding). base64 goes through ``binascii`` because MicroPython has no base64.
Nesting is bounded like the CBOR decoder (``MAX_DEPTH``), checked before parsing, so a bracket
bomb costs one linear scan instead of a RecursionError / MemoryError inside json.
"""

import binascii
import json

from firmware_client.cbor import MAX_DEPTH, CBORError


def _wrap(obj, depth):
    if depth > MAX_DEPTH:
        raise CBORError("nesting too deep")
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": binascii.b2a_base64(bytes(obj)).decode().strip()}
    if isinstance(obj, (list, tuple)):
        return [_wrap(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        out = {}
        for k in obj:
            if not isinstance(k, str):
                raise CBORError("JSON object keys must be strings")
            out[k] = _wrap(obj[k], depth + 1)
        return out
    return obj


_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _b64decode(s):
    if len(s) % 4:
        raise CBORError("bad base64 in $bytes")
    for ch in s:
        if ch not in _B64:
            raise CBORError("bad base64 in $bytes")
    try:
        return binascii.a2b_base64(s)
    except Exception:
        raise CBORError("bad base64 in $bytes")


def _unwrap(obj):
    if isinstance(obj, list):
        for i in range(len(obj)):
            obj[i] = _unwrap(obj[i])
    elif isinstance(obj, dict):
        if len(obj) == 1 and "$bytes" in obj and isinstance(obj["$bytes"], str):
            return _b64decode(obj["$bytes"])
        for k in obj:
            obj[k] = _unwrap(obj[k])
    return obj


def _check_depth(text):
    depth = 0
    in_str = False
    esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch == "[" or ch == "{":
            depth += 1
            if depth > MAX_DEPTH + 1:
                raise CBORError("nesting too deep")
        elif ch == "]" or ch == "}":
            depth -= 1


def dumps(obj):
    """Encode ``obj`` as compact UTF-8 JSON bytes."""
    return json.dumps(_wrap(obj, 0), separators=(",", ":")).encode("utf-8")


def loads(data):
    """Decode JSON bytes/str; raises CBORError (a ValueError) on anything malformed."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except Exception:
        raise CBORError("invalid utf-8")
    _check_depth(text)
    try:
        obj = json.loads(text)
    except Exception as e:  # ValueError, RecursionError, MemoryError on tiny heaps
        raise CBORError("invalid JSON: %s" % e)
    return _unwrap(obj)
