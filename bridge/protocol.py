"""Topics, names and message shapes of the wire protocol (docs/PROTOCOL.md). Pure: no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from bridge.codec import Codec, decode, detect
from bridge.errors import BadRequest

__all__ = [
    "DEFAULT_SESSION",
    "ErrorKind",
    "Request",
    "Topics",
    "check_name",
    "error_body",
    "parse_request",
    "reply_err",
    "reply_ok",
    "sync_answer",
    "valid_name",
]

DEFAULT_SESSION: Final = "default"
NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_ID_LEN: Final = 64
MAX_SEQ: Final = 2**63 - 1  # sequence numbers are 64-bit signed in every store


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True

ErrorKind = Literal["app", "internal", "bad_request", "busy", "unavailable", "not_found"]
Kind = Literal["call", "ack", "sync", "presence"]


def valid_name(name: object) -> bool:
    """True if ``name`` is a safe CA name or session id (see PROTOCOL.md)."""
    return type(name) is str and NAME_RE.fullmatch(name) is not None


def check_name(name: object, what: str) -> str:
    """Return ``name`` if valid, else raise BadRequest naming ``what``."""
    if not valid_name(name):
        raise BadRequest(f"invalid {what}: must match {NAME_RE.pattern}")
    return name  # type: ignore[return-value]


class Topics:
    """Builds and parses the topics under one prefix."""

    def __init__(self, prefix: str = "ca") -> None:
        if not prefix or any(c in prefix for c in "+#\0") or prefix.startswith("$") or prefix.endswith("/"):
            raise ValueError(f"invalid topic prefix {prefix!r}")
        self.prefix = prefix
        self.inbound_filter = f"{prefix}/+/in"
        self._head = prefix + "/"
        self._depth = prefix.count("/") + 1

    def session(self, ca: str, session: str) -> str:
        """The topic of one logical session's replies and notifications."""
        return f"{self._head}{ca}/session/{session}"

    def errors(self, ca: str) -> str:
        """The topic for rejections that name no usable session."""
        return f"{self._head}{ca}/errors"

    def inbound(self, ca: str) -> str:
        """The topic devices publish requests to."""
        return f"{self._head}{ca}/in"

    def forward(self, node: str, ca: str, hops: int = 1) -> str:
        """A bridge's private topic for requests forwarded to it by the other bridges of its cluster (``hops``: how
        many bridges passed it on so far, which bounds forwarding when ownership moves meanwhile)."""
        return f"{self._head}_fwd/{node}/{hops}/{ca}"

    def forward_filter(self, node: str) -> str:
        """What a bridge subscribes to, to receive forwarded requests (never matches ``inbound_filter``)."""
        return f"{self._head}_fwd/{node}/+/+"

    def shared_inbound_filter(self, group: str) -> str:
        """The inbound filter as a shared subscription: each request reaches one bridge of ``group``."""
        return f"$share/{group}/{self.inbound_filter}"

    def ca_of_forward(self, topic: str) -> tuple[str, int] | None:
        """The CA name and hop count of a forwarded request's topic, or None."""
        head = self._head + "_fwd/"
        if not topic.startswith(head):
            return None
        parts = topic[len(head) :].split("/")
        if len(parts) != 3 or not parts[1].isdigit() or not valid_name(parts[2]):
            return None
        return parts[2], int(parts[1])

    def ca_of(self, topic: str) -> str | None:
        """The CA name of an inbound topic, or None if the topic is not a valid ``<prefix>/<ca>/in``."""
        if not topic.startswith(self._head) or not topic.endswith("/in"):
            return None
        name = topic[len(self._head) : -3]
        return name if valid_name(name) else None


@dataclass(slots=True)
class Request:
    """One decoded device message: a call, an ack, a sync or a presence announcement."""

    kind: Kind
    session: str
    codec: Codec
    id: str = ""
    method: str = ""
    args: list[Any] | tuple[Any, ...] = ()
    seq: int = 0
    online: bool = False  # presence: the session's device came online (True) or went offline
    raw: bytes = b""  # the payload as received (a bridge in a cluster forwards it unchanged)
    at: float = 0.0  # admission time (time.monotonic), for the latency metrics


def _field(msg: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = msg.get(key, default)
    if type(value) is not kind:
        raise BadRequest(f"field {key!r} must be {kind.__name__}")
    return value


def parse_request(payload: bytes, max_payload: int) -> Request:
    """Decode and validate one inbound payload. Raises BadRequest (or its CodecError sibling); nothing else.

    A BadRequest raised after decoding carries ``session`` and ``request_id`` when the payload named valid ones,
    so the rejection can be answered on the session topic.
    """
    if len(payload) > max_payload:
        raise BadRequest(f"payload of {len(payload)} bytes exceeds the maximum of {max_payload}")
    codec = detect(payload)
    msg = decode(payload, codec)
    if type(msg) is not dict:
        raise BadRequest("message must be a map")
    try:
        req = _validate(msg, codec)
    except BadRequest as exc:
        session = msg.get("session", DEFAULT_SESSION)
        rid = msg.get("id")
        exc.session = session if valid_name(session) else None
        exc.request_id = rid if type(rid) is str and 0 < len(rid) <= MAX_ID_LEN else None
        exc.codec = codec
        raise
    req.raw = payload
    return req


def _validate(msg: dict[str, Any], codec: Codec) -> Request:
    session = check_name(msg.get("session", DEFAULT_SESSION), "session id")
    kind = msg.get("t")
    if kind == "call":
        rid = _field(msg, "id", str)
        if not 0 < len(rid) <= MAX_ID_LEN:
            raise BadRequest(f"field 'id' must have 1 to {MAX_ID_LEN} characters")
        if "\x00" in rid or not _encodable(rid):
            raise BadRequest("field 'id' must be text without NUL or unpaired surrogates")
        method = _field(msg, "method", str)
        args = _field(msg, "args", list, [])
        return Request("call", session, codec, rid, method, args)
    if kind in ("ack", "sync"):
        seq = _field(msg, "seq", int)
        if not 0 <= seq <= MAX_SEQ:
            raise BadRequest(f"field 'seq' must be between 0 and {MAX_SEQ}")
        return Request(kind, session, codec, seq=seq)
    if kind == "presence":
        return Request("presence", session, codec, online=_field(msg, "online", bool))
    raise BadRequest("field 't' must be 'call', 'ack', 'sync' or 'presence'")


def error_body(kind: ErrorKind, name: str, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``err`` member of a reply."""
    return {"kind": kind, "name": name, "message": message, "data": data or {}}


def reply_ok(rid: str, result: Any) -> dict[str, Any]:
    """A successful reply."""
    return {"t": "reply", "id": rid, "ok": result}


def reply_err(rid: str, err: dict[str, Any]) -> dict[str, Any]:
    """An error reply."""
    return {"t": "reply", "id": rid, "err": err}


def sync_answer(first: int, next_seq: int) -> dict[str, Any]:
    """The answer to a sync request, sent before the resent notifications."""
    return {"t": "sync", "first": first, "next": next_seq}
