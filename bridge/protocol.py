"""Topics, names and every message kind of the wire protocol (docs/PROTOCOL.md). Pure: no I/O.

Inbound kinds are classes registered by their ``t`` value (:data:`KINDS`): each one validates its own fields, and
its class attributes tell admission how to treat it (whether it may create a CA, gets a reply, is rate limited,
is coalesced). Outbound kinds (reply, note, sync answer, error) are built by the functions at the end. Adding a
kind = one class here (registered with ``@inbound``, added to :data:`Inbound`) + one handler in bridge.actor.
"""

from __future__ import annotations

import re
import secrets
import struct
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar, Final, Literal, TypeVar, cast

from bridge.codec import CBOR, INT_MAX, INT_MIN, JSON, LEAVES, Codec, check_subset, decode_unchecked, dumps, encode, \
    invalid_payload, loads, loads_untrusted
from bridge.errors import BadRequest

__all__ = [
    "DEFAULT_SESSION",
    "IOT_SESSION",
    "KINDS",
    "Ack",
    "Call",
    "DStart",
    "DSync",
    "ErrorKind",
    "Inbound",
    "Presence",
    "Request",
    "Sync",
    "Topics",
    "check_name",
    "encode_note",
    "encode_poke",
    "error_body",
    "error_message",
    "parse_request",
    "reply_err",
    "reply_ok",
    "stamp_reply",
    "sync_answer",
    "token",
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


def token(nbytes: int) -> str:
    """A random URL-safe text of ``nbytes`` random bytes (nonces, passwords, bearer tokens) that never begins with
    ``-``: one in 64 of secrets.token_urlsafe's does, and a command line then takes it for an option."""
    while (text := secrets.token_urlsafe(nbytes)).startswith("-"):
        pass
    return text


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
        # inbound topic -> its CA (or None): the answers of ca_of so far (bounded; cleared in place when full, so
        # bridge.ingress keeps a reference and reads it first)
        self.cas: dict[str, str | None] = {}

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
        cas = self.cas
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


IOT_SESSION: Final = "iot"  # the session of a CA's own gadget: device kinds live there (docs/DEVICES.md)
MAX_CMDS: Final = 64  # commands a device may announce
MAX_ARITY: Final = 16  # arguments a command may take
MAX_INDEX: Final = 2**53  # bundle indices, versions and positions on the wire stay below this


def _request_id(msg: dict[str, Any], codec: Codec) -> str:
    rid: str = _field(msg, "id", str)
    if not 0 < len(rid) <= MAX_ID_LEN:
        raise BadRequest(f"field 'id' must have 1 to {MAX_ID_LEN} characters")
    # CBOR text is valid UTF-8 by construction (cbor2 decodes strictly): only JSON's escapes make surrogates
    if "\x00" in rid or (codec != CBOR and not _encodable(rid)):
        raise BadRequest("field 'id' must be text without NUL or unpaired surrogates")
    return rid


def _iot(kind: str, session: str) -> None:
    if session != IOT_SESSION:
        raise BadRequest(f"{kind} must be sent on session {IOT_SESSION!r}, not {session!r}")


def _count(msg: dict[str, Any], key: str, default: int | None = None) -> int:
    value = msg.get(key, default)
    if type(value) is not int or not 0 <= value < MAX_INDEX:
        raise BadRequest(f"field {key!r} must be an int between 0 and {MAX_INDEX - 1}")
    return value


def _ints(msg: dict[str, Any], key: str) -> list[int]:
    value = msg.get(key, [])
    if type(value) is not list or any(type(v) is not int or not 0 <= v < MAX_INDEX for v in value):
        raise BadRequest(f"field {key!r} must be a list of non-negative ints")
    return value


def _pairs(msg: dict[str, Any], key: str, second: type) -> list[tuple[int, Any]]:
    value = msg.get(key, [])
    what = f"field {key!r} must be a list of [index, {second.__name__}] pairs"
    if type(value) is not list:
        raise BadRequest(what)
    pairs = []
    for item in value:
        if type(item) is not list or len(item) != 2:
            raise BadRequest(what)
        index, other = item
        if type(index) is not int or not 0 <= index < MAX_INDEX or type(other) is not second \
                or (type(other) is int and not 0 <= other < MAX_INDEX):
            raise BadRequest(what)
        pairs.append((index, other))
    return pairs


@inbound("dstart")
@dataclass(slots=True)
class DStart(Request):
    """The CA's device (re)started and announces its commands (name -> number of arguments); answered with both
    maps, their versions, the boot number and the bundles to run (docs/DEVICES.md). Session ``iot`` only."""

    creates: ClassVar[bool] = True
    replied: ClassVar[bool] = True
    limited: ClassVar[bool] = True

    id: str
    cmds: dict[str, int]

    @classmethod
    def parse(cls, msg: dict[str, Any], session: str, codec: Codec) -> DStart:
        rid = _request_id(msg, codec)
        _iot("dstart", session)
        cmds = msg.get("cmds", {})
        if type(cmds) is not dict or len(cmds) > MAX_CMDS:
            raise BadRequest(f"field 'cmds' must be a map of at most {MAX_CMDS} command names to argument counts")
        for name, arity in cmds.items():
            if not valid_name(name):
                raise BadRequest(f"command names in 'cmds' must match {NAME_RE.pattern}")
            if type(arity) is not int or not 0 <= arity <= MAX_ARITY:
                raise BadRequest(f"command {name!r} in 'cmds': argument count must be an int 0..{MAX_ARITY}")
        return cls(session, codec, rid, cmds)

    def wire(self) -> dict[str, Any]:
        return {"t": self.kind, "session": self.session, "id": self.id, "cmds": self.cmds}


@inbound("dsync")
@dataclass(slots=True)
class DSync(Request):
    """The device's to_cloud delta (or its whole map), the from_cloud version it holds, and its bundle acks, done
    commands and results; answered with what it lacks (docs/DEVICES.md). Session ``iot`` only."""

    replied: ClassVar[bool] = True
    limited: ClassVar[bool] = True

    id: str
    boot: int
    fv: int
    tb: int = 0
    tv: int = 0
    d: dict[str, Any] = field(default_factory=dict)
    x: list[str] = field(default_factory=list)
    full: bool = False
    ba: list[int] = field(default_factory=list)
    bd: list[tuple[int, int]] = field(default_factory=list)
    br: list[tuple[int, bool]] = field(default_factory=list)

    @classmethod
    def parse(cls, msg: dict[str, Any], session: str, codec: Codec) -> DSync:
        rid = _request_id(msg, codec)
        _iot("dsync", session)
        boot, fv = _count(msg, "boot"), _count(msg, "fv")
        d = msg.get("d", {})
        if type(d) is not dict or any(type(k) is not str for k in d):
            raise BadRequest("field 'd' must be a map with text keys")
        x = msg.get("x", [])
        if type(x) is not list or any(type(k) is not str for k in x):
            raise BadRequest("field 'x' must be a list of text keys")
        full = msg.get("full", False)
        if type(full) is not bool:
            raise BadRequest("field 'full' must be bool")
        if full and x:
            raise BadRequest("a full map ('full': true) deletes nothing: 'x' must be empty")
        delta = bool(d or x or full)
        tb = _count(msg, "tb", 0)
        tv = _count(msg, "tv", 0)
        if delta and not full and tv != tb + 1:
            raise BadRequest("an incremental delta must have 'tv' = 'tb' + 1")
        return cls(session, codec, rid, boot, fv, tb, tv, d, x, full, _ints(msg, "ba"), _pairs(msg, "bd", int),
                   _pairs(msg, "br", bool))

    def wire(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": self.kind, "session": self.session, "id": self.id, "boot": self.boot,
                               "fv": self.fv}
        if self.d or self.x or self.full:
            msg.update(tb=self.tb, tv=self.tv, d=self.d, x=self.x, full=self.full)
        if self.ba:
            msg["ba"] = self.ba
        if self.bd:
            msg["bd"] = [list(p) for p in self.bd]
        if self.br:
            msg["br"] = [list(p) for p in self.br]
        return msg


Inbound = Call | Ack | Sync | Presence | DStart | DSync  # every inbound kind: bridge.actor handles each one
_KIND_NAMES: Final = ", ".join(repr(k) for k in list(KINDS)[:-1]) + f" or {list(KINDS)[-1]!r}"


_JSON_START: Final = frozenset(b"{ \t\r\n")  # as codec.detect
_CALL_KEYS: Final = frozenset(("t", "id", "session", "method", "args"))


def parse_request(payload: bytes, max_payload: int) -> Inbound:
    """Decode and validate one inbound payload. Raises BadRequest (or its CodecError sibling); nothing else.

    A BadRequest raised after decoding carries ``session`` and ``request_id`` when the payload named valid ones,
    so the rejection can be answered on the session topic.
    """
    if len(payload) > max_payload:
        raise BadRequest(f"payload of {len(payload)} bytes exceeds the maximum of {max_payload}")
    codec: Codec = JSON if payload and payload[0] in _JSON_START else CBOR  # codec.detect, inlined
    if codec == CBOR:  # codec.decode_unchecked, inlined
        try:
            msg = loads_untrusted(payload)
        except Exception as exc:
            raise invalid_payload(exc, codec) from None
    else:
        msg = decode_unchecked(payload, codec)
    # the usual call, checked field by field; anything else (or anything wrong) takes the full path, which finds
    # the same errors the same way
    if type(msg) is dict and type(kind := msg.get("t")) is str and kind == "call":
        if len(msg) == 5:  # t, id, session, method and args, if each has the type looked for below: no other key
            session = msg.get("session")
            args = msg.get("args")
        elif _CALL_KEYS.issuperset(msg):
            session = msg.get("session", DEFAULT_SESSION)
            args = msg.get("args", [])
        else:
            session = args = None  # an unknown key: the full path checks it
        rid = msg.get("id")
        method = msg.get("method")
        if type(session) is str and type(rid) is str and type(method) is str and type(args) is list \
                and (_CHECKED.get(session) or valid_name(session)) and 0 < len(rid) <= MAX_ID_LEN \
                and "\x00" not in rid and (codec == CBOR or _encodable(rid)):
            # every key and the other values are text (in the subset): only the arguments are left to check, in
            # the order check_subset would, so that the first one outside the subset raises the same CodecError
            for arg in args:
                of = type(arg)
                if of is int:
                    if not INT_MIN <= arg <= INT_MAX:
                        check_subset(arg, 2)
                elif of not in LEAVES:
                    check_subset(arg, 2)
            req = Call(session, codec, rid, method, args)
            req.raw = payload
            return req
    check_subset(msg)
    return _parse(msg, codec, payload)


def _parse(msg: Any, codec: Codec, payload: bytes) -> Inbound:
    """The full path of :func:`parse_request`, for a decoded message inside the wire subset."""
    if type(msg) is not dict:
        raise BadRequest("message must be a map")
    try:
        session = check_name(msg.get("session", DEFAULT_SESSION), "session id")
        kind = msg.get("t")
        cls = KINDS.get(kind) if type(kind) is str else None
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


_NOTE_HEAD: Final = b"\xa3" + dumps("t") + dumps("note") + dumps("seq")  # a map of 3: "t": "note", "seq": ...
_ARGS_KEY: Final = dumps("args")
_UINT8: Final = struct.Struct(">BB").pack  # CBOR unsigned ints of 1, 2 and 4 bytes (after their first byte)
_UINT16: Final = struct.Struct(">BH").pack
_UINT32: Final = struct.Struct(">BI").pack


def encode_note(seq: int, args_cbor: bytes, codec: Codec) -> bytes:
    """Encode the notification ``{"t": "note", "seq": seq, "args": args}`` from the stored CBOR of ``args``.

    For CBOR sessions the stored bytes are spliced in, so a notification is never decoded and re-encoded (and the
    sequence number, a CBOR unsigned int, is written here rather than by cbor2).
    """
    if codec == CBOR:
        if seq >= 24:
            if seq < 0x100:
                head = _UINT8(0x18, seq)
            elif seq < 0x10000:
                head = _UINT16(0x19, seq)
            elif seq < 0x100000000:
                head = _UINT32(0x1A, seq)
            else:
                head = dumps(seq)
        else:
            head = bytes((seq,)) if seq >= 0 else dumps(seq)
        return b"".join((_NOTE_HEAD, head, _ARGS_KEY, args_cbor))
    return encode({"t": "note", "seq": seq, "args": loads(args_cbor)}, codec)


_POKES: Final = {CBOR: encode({"t": "poke"}, CBOR), "json": encode({"t": "poke"}, "json")}


def encode_poke(codec: Codec) -> bytes:
    """The hint ``{"t": "poke"}`` that makes a device sync soon (something new is there for it)."""
    return _POKES[codec]


_RX: Final = dumps("rx")
_TX: Final = dumps("tx")


def stamp_reply(payload: bytes, rx: int, tx: int) -> bytes:
    """Add the bridge's receive and send times (``rx``, ``tx``: Unix epoch ms) to an encoded reply
    ``{"t", "id", "ok" | "err"}``, for the device's clock estimate. The stored reply (dedup) has neither."""
    if payload[:1] == b"\xa3":  # CBOR: a map of 3 members becomes one of 5
        return b"\xa5" + payload[1:] + _RX + dumps(rx) + _TX + dumps(tx)
    return b"%s,\"rx\":%d,\"tx\":%d}" % (payload.rstrip()[:-1], rx, tx)
