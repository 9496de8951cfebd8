"""Topics, names and every message kind of the wire protocol (docs/PROTOCOL.md). Pure: no I/O.

Inbound kinds are classes registered by their ``t`` value (:data:`KINDS`): each one validates its own fields, and
its class attributes tell admission how to treat it (whether it may create a CA, gets a reply, is rate limited,
is coalesced). Outbound kinds (reply, note, sync answer, error) are built by the functions at the end. Adding a
kind = one class here (registered with ``@inbound``, added to :data:`Inbound`) + one handler in bridge.actor.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, TypeVar, cast

from bridge.codec import CBOR, Codec, decode, detect, dumps, encode, loads
from bridge.errors import BadRequest

__all__ = [
    "DEFAULT_SESSION",
    "KINDS",
    "Ack",
    "Call",
    "ErrorKind",
    "Inbound",
    "Presence",
    "Request",
    "Sync",
    "Topics",
    "check_name",
    "encode_note",
    "error_body",
    "error_message",
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


_CHECKED: dict[str, bool] = {}  # name -> valid: the answers so far (the same few names come back on every message)
_CHECKED_MAX: Final = 65536  # forgotten all at once when full, so names a peer makes up cannot grow it


def valid_name(name: object) -> bool:
    """True if ``name`` is a safe CA name or session id (see PROTOCOL.md)."""
    if type(name) is not str:
        return False
    valid = _CHECKED.get(name)
    if valid is None:
        valid = NAME_RE.fullmatch(name) is not None
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[name] = valid
    return valid


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
        self._cas: dict[str, str | None] = {}  # inbound topic -> its CA (or None): the answers so far (bounded)

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
        cas = self._cas
        if topic in cas:
            return cas[topic]
        if not topic.startswith(self._head) or not topic.endswith("/in"):
            ca = None
        else:
            name = topic[len(self._head) : -3]
            ca = name if valid_name(name) else None
        if len(cas) >= _CHECKED_MAX:
            cas.clear()
        cas[topic] = ca
        return ca


# -- inbound kinds --------------------------------------------------------------------------------------------

_R = TypeVar("_R", bound="Request")


@dataclass(slots=True)
class Request:
    """The base of every inbound message kind: the session it belongs to, its encoding, the payload as received
    (a bridge in a cluster forwards it unchanged) and its admission time (time.perf_counter, for the latency
    metrics). A subclass is one kind; its class attributes tell admission (bridge.admission) how to treat it."""

    kind: ClassVar[str] = ""  # the wire ``t`` value
    creates: ClassVar[bool] = False  # may create its CA (with autocreate on)
    replied: ClassVar[bool] = False  # answered with a reply (so a rejection is answered too)
    limited: ClassVar[bool] = False  # counts against the CA's rate limit
    coalesced: ClassVar[bool] = False  # takes no mailbox slot: one waiting message per session, updated in place

    session: str
    codec: Codec
    raw: bytes = field(default=b"", kw_only=True)
    at: float = field(default=0.0, kw_only=True)

    @classmethod
    def parse(cls, msg: dict[str, Any], session: str, codec: Codec) -> Request:
        """Validate the kind's own fields of a decoded message. Raises BadRequest."""
        raise NotImplementedError

    def encode(self) -> bytes:
        """The message on the wire, in its codec (the inverse of :func:`parse_request`)."""
        return encode(self.wire(), self.codec)

    def wire(self) -> dict[str, Any]:
        """The message as the map a device sends."""
        raise NotImplementedError


KINDS: Final[dict[str, type[Request]]] = {}  # wire ``t`` -> inbound class


def inbound(kind: str) -> Callable[[type[_R]], type[_R]]:
    """Register an inbound class under its wire ``t`` value."""

    def register(cls: type[_R]) -> type[_R]:
        if kind in KINDS:
            raise ValueError(f"message kind {kind!r} is registered already")
        cls.kind = kind
        KINDS[kind] = cls
        return cls

    return register


def _field(msg: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = msg.get(key, default)
    if type(value) is not kind:
        raise BadRequest(f"field {key!r} must be {kind.__name__}")
    return value


def _seq(msg: dict[str, Any]) -> int:
    seq: int = _field(msg, "seq", int)
    if not 0 <= seq <= MAX_SEQ:
        raise BadRequest(f"field 'seq' must be between 0 and {MAX_SEQ}")
    return seq


@inbound("call")
@dataclass(slots=True)
class Call(Request):
    """Run ``method(*args)``; answered with a reply carrying ``id``."""

    creates: ClassVar[bool] = True
    replied: ClassVar[bool] = True
    limited: ClassVar[bool] = True

    id: str
    method: str
    args: list[Any] | tuple[Any, ...] = ()

    @classmethod
    def parse(cls, msg: dict[str, Any], session: str, codec: Codec) -> Call:
        rid = _field(msg, "id", str)
        if not 0 < len(rid) <= MAX_ID_LEN:
            raise BadRequest(f"field 'id' must have 1 to {MAX_ID_LEN} characters")
        # CBOR text is valid UTF-8 by construction (cbor2 decodes strictly): only JSON's escapes make surrogates
        if "\x00" in rid or (codec != CBOR and not _encodable(rid)):
            raise BadRequest("field 'id' must be text without NUL or unpaired surrogates")
        return cls(session, codec, rid, _field(msg, "method", str), _field(msg, "args", list, []))

    def wire(self) -> dict[str, Any]:
        return {"t": self.kind, "session": self.session, "id": self.id, "method": self.method, "args": self.args}


@inbound("ack")
@dataclass(slots=True)
class Ack(Request):
    """The session's device holds every notification up to ``seq``."""

    seq: int

    @classmethod
    def parse(cls, msg: dict[str, Any], session: str, codec: Codec) -> Ack:
        return cls(session, codec, _seq(msg))

    def wire(self) -> dict[str, Any]:
        return {"t": self.kind, "session": self.session, "seq": self.seq}


@inbound("sync")
@dataclass(slots=True)
class Sync(Request):
    """Acknowledge up to ``seq`` and ask for the session's window and the notifications after ``seq``."""

    seq: int

    @classmethod
    def parse(cls, msg: dict[str, Any], session: str, codec: Codec) -> Sync:
        return cls(session, codec, _seq(msg))

    def wire(self) -> dict[str, Any]:
        return {"t": self.kind, "session": self.session, "seq": self.seq}

    def missing_answer(self) -> bytes:
        """The answer for a CA that does not exist: nothing was ever queued."""
        return encode(sync_answer(1, 1), self.codec)


@inbound("presence")
@dataclass(slots=True)
class Presence(Request):
    """The session's device came online (True) or went offline."""

    coalesced: ClassVar[bool] = True

    online: bool

    @classmethod
    def parse(cls, msg: dict[str, Any], session: str, codec: Codec) -> Presence:
        return cls(session, codec, _field(msg, "online", bool))

    def wire(self) -> dict[str, Any]:
        return {"t": self.kind, "session": self.session, "online": self.online}


Inbound = Call | Ack | Sync | Presence  # every inbound kind: mypy checks that bridge.actor handles each one
_KIND_NAMES: Final = ", ".join(repr(k) for k in list(KINDS)[:-1]) + f" or {list(KINDS)[-1]!r}"


def parse_request(payload: bytes, max_payload: int) -> Inbound:
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
        session = check_name(msg.get("session", DEFAULT_SESSION), "session id")
        cls = KINDS.get(msg.get("t"))  # type: ignore[arg-type]
        if cls is None:
            raise BadRequest(f"field 't' must be {_KIND_NAMES}")
        req = cast(Inbound, cls.parse(msg, session, codec))
    except BadRequest as exc:
        session = msg.get("session", DEFAULT_SESSION)
        rid = msg.get("id")
        exc.session = session if valid_name(session) else None
        exc.request_id = rid if type(rid) is str and 0 < len(rid) <= MAX_ID_LEN else None
        exc.codec = codec
        raise
    req.raw = payload
    return req


# -- outbound kinds -----------------------------------------------------------------------------------------


def error_body(kind: ErrorKind, name: str, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``err`` member of a reply or an error message."""
    return {"kind": kind, "name": name, "message": message, "data": data or {}}


def reply_ok(rid: str, result: Any) -> dict[str, Any]:
    """A successful reply."""
    return {"t": "reply", "id": rid, "ok": result}


def reply_err(rid: str, err: dict[str, Any]) -> dict[str, Any]:
    """An error reply."""
    return {"t": "reply", "id": rid, "err": err}


def error_message(err: dict[str, Any]) -> dict[str, Any]:
    """A rejection that names no usable session (sent on the CA's errors topic)."""
    return {"t": "error", "err": err}


def sync_answer(first: int, next_seq: int) -> dict[str, Any]:
    """The answer to a sync request, sent before the resent notifications."""
    return {"t": "sync", "first": first, "next": next_seq}


_NOTE_HEAD: Final = dumps("t") + dumps("note") + dumps("seq")
_ARGS_KEY: Final = dumps("args")


def encode_note(seq: int, args_cbor: bytes, codec: Codec) -> bytes:
    """Encode the notification ``{"t": "note", "seq": seq, "args": args}`` from the stored CBOR of ``args``.

    For CBOR sessions the stored bytes are spliced in, so a notification is never decoded and re-encoded.
    """
    if codec == CBOR:
        return b"\xa3" + _NOTE_HEAD + dumps(seq) + _ARGS_KEY + args_cbor
    return encode({"t": "note", "seq": seq, "args": loads(args_cbor)}, codec)
