"""Admission: whether a request may run, and the one way a request that will not run is answered.

Everything that can turn a request away lives here: shutdown, unknown methods and wrong arities, the per-CA rate
limit, the bounded mailbox, the bound on coalesced presence messages, and malformed payloads. Every rejection (of
admission, of the runtime's placement, of an actor, of the committer when a call cannot be made durable) is
answered by :meth:`Admission.reject`, or :meth:`Admission.refuse` for a payload that did not even decode.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Final, Protocol

from bridge import codec
from bridge.actor import Actor
from bridge.app import CA
from bridge.errors import BadRequest
from bridge.metrics import Metrics
from bridge.protocol import Call, DStart, DSync, Inbound, Presence, error_body, error_message, reply_err

__all__ = ["BUSY", "CLOSING", "Admission", "Sink"]

log = logging.getLogger("bridge.runtime")
ingress_log = logging.getLogger("bridge")  # malformed payloads, as the service logged them

BUSY: Final = error_body("busy", "Busy", "the CA's mailbox is full; retry later")
RATE_LIMITED: Final = error_body("busy", "RateLimited", "too many calls to this CA; retry later")
CLOSING: Final = error_body("unavailable", "Unavailable", "the bridge is shutting down")


class Sink(Protocol):
    """Where everything that must reach a device goes (the service: MQTT; the Harness: memory)."""

    def send(self, ca: str, session: str, payload: bytes) -> None:
        """Deliver one encoded message to a session (must not block)."""

    def send_error(self, ca: str, payload: bytes) -> None:
        """Deliver one encoded error message that names no usable session (must not block)."""

    def forward(self, node: str, ca: str, payload: bytes, hops: int = 1) -> None:
        """Hand a raw request to the bridge that owns its CA (clusters only; must not block)."""

    def end_batch(self) -> None:
        """A committed batch has been sent: what is queued may leave now rather than at the end of the loop's turn
        (the service writes it to the broker at once; must not block)."""


class Admission:
    """The runtime's gate. ``mailbox``: the bound of each CA's mailbox (and of the requests parked while a CA is
    looked up); ``rate``: calls per second per CA (0: unlimited), with bursts of ``burst``."""

    __slots__ = ("app", "burst", "closing", "mailbox", "metrics", "presence_dropped", "rate", "sink")

    def __init__(self, app: type[CA], sink: Sink, metrics: Metrics, *, mailbox: int, rate: float,
                 burst: int) -> None:
        self.app = app
        self.sink = sink
        self.metrics = metrics
        self.mailbox = mailbox
        self.rate = rate
        self.burst = max(burst, 1) if rate else 0
        self.closing = False  # shutting down: nothing new is admitted
        self.presence_dropped = 0  # presence messages for new sessions beyond the bound (Actor.offer_presence)

    def check(self, ca: str, req: Inbound, future: asyncio.Future[Any] | None) -> bool:
        """What can be told before the CA is found: True if ``req`` may go on, else it is answered now."""
        if self.closing:
            self.reject(ca, req, future, CLOSING)
            return False
        if type(req) is Call:
            spec = self.app.methods.get(req.method)
            if spec is None:
                self.reject(ca, req, future, error_body(
                    "bad_request", "NoSuchMethod", f"{self.app.__name__} CA {ca!r} has no method {req.method[:100]!r}"))
                return False
            if not spec.accepts(len(req.args)):
                self.reject(ca, req, future, error_body(
                    "bad_request", "WrongArguments", f"{req.method} does not take {len(req.args)} arguments"))
                return False
        return True

    def admit(self, actor: Actor, req: Inbound, future: asyncio.Future[Any] | None) -> None:
        """Queue ``req`` on its (loaded) CA, or answer it busy."""
        if req.coalesced:  # never takes a mailbox slot, so a full mailbox does not lose it
            assert type(req) is Presence
            if not actor.offer_presence(req, self.mailbox):
                self.presence_dropped += 1
                if self.presence_dropped % 1000 == 1:
                    log.warning("CA %s: dropped a presence message for a new session: %d new sessions' presence "
                                "waiting already (%d dropped so far)", actor.name, self.mailbox, self.presence_dropped)
            return
        if self.rate and req.limited and not self._take_token(actor):
            self.reject(actor.name, req, future, RATE_LIMITED)
            return
        if len(actor.mailbox) >= self.mailbox:
            self.reject(actor.name, req, future, BUSY)
            return
        actor.enqueue((req, future))

    def full(self, waiting: int) -> bool:
        """True if ``waiting`` queued items fill a mailbox."""
        return waiting >= self.mailbox

    def _take_token(self, actor: Actor) -> bool:
        now = time.monotonic()
        actor.tokens = min(float(self.burst), actor.tokens + (now - actor.tokens_at) * self.rate) \
            if actor.tokens_at else float(self.burst)
        actor.tokens_at = now
        if actor.tokens < 1.0:
            return False
        actor.tokens -= 1.0
        return True

    def reject(self, ca: str, req: Inbound, future: asyncio.Future[Any] | None, err: dict[str, Any]) -> None:
        """Answer a request that will not run (nothing to commit, so nothing to wait for). Only kinds that get a
        reply are answered; the others are dropped."""
        if not req.replied:
            return
        assert type(req) is Call or type(req) is DStart or type(req) is DSync
        self.metrics.reject(err["name"])
        payload = codec.encode(reply_err(req.id, err), req.codec)
        self.sink.send(ca, req.session, payload)
        if future is not None and not future.done():
            future.set_result(codec.decode(payload, req.codec))

    def refuse(self, ca: str, exc: BadRequest, future: asyncio.Future[Any] | None = None) -> None:
        """Answer a payload that did not decode or validate: on its session's topic when it named a session and a
        request id, else on the CA's errors topic."""
        self.metrics.reject("BadRequest")
        err = error_body("bad_request", "BadRequest", str(exc))
        enc: Any = exc.codec if exc.codec in (codec.CBOR, codec.JSON) else codec.CBOR
        if exc.session is not None and exc.request_id is not None:
            payload = codec.encode(reply_err(exc.request_id, err), enc)
            self.sink.send(ca, exc.session, payload)
        else:
            payload = codec.encode(error_message(err), enc)
            self.sink.send_error(ca, payload)
        if future is not None and not future.done():
            future.set_result(codec.decode(payload, enc))
        rejected = self.metrics.rejected["BadRequest"]
        if rejected % 1000 == 1:  # rate-limited: hostile traffic must not flood the log
            ingress_log.warning("CA %s: rejected a message: %s (%d rejected so far)", ca, exc, rejected)
