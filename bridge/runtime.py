"""The CA runtime: the registry of loaded CAs, request admission, pulses and the group committer.

It knows nothing about MQTT: requests come in through :meth:`Runtime.submit`, and everything that must reach a
device goes out through a :class:`Sink` once it is durable. The service wires it to MQTT; the Harness to futures.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bridge import codec
from bridge.actor import PULSE, RESUME, Actor
from bridge.app import CA
from bridge.errors import AppError, ConfigError
from bridge.committer import Committer, Pending
from bridge.metrics import Metrics
from bridge.protocol import Request, error_body, reply_err, sync_answer
from bridge.session import SessionLimits
from bridge.store import CARecord, Store

if TYPE_CHECKING:
    from bridge.cluster import Cluster

__all__ = ["MAX_HOPS", "Runtime", "Sink", "app_identity"]

MAX_HOPS = 2  # a request is passed on between the bridges of a cluster at most this many times

log = logging.getLogger("bridge.runtime")


def app_identity(app: type[CA]) -> str:
    """The name a store records for the app it belongs to: ``file:Class`` (the module's file name without ``.py``
    and the class's qualified name), the same however the app was named on the command line (a path or a module)
    and wherever the checkout lives, so that moving or renaming the directory keeps the store usable."""
    try:
        stem = Path(inspect.getfile(app)).stem
    except (TypeError, OSError):  # a class without a source file
        stem = app.__module__.rpartition(".")[2]
    return f"{stem}:{app.__qualname__}"


def _where(store: Store) -> str:
    from bridge.store import redact_url
    from bridge.store.postgres import PostgresStore
    from bridge.store.sqlite import SQLiteStore

    if isinstance(store, SQLiteStore):
        return str(store.path)
    if isinstance(store, PostgresStore):
        return redact_url(store.url)
    return "the store"


class Sink(Protocol):
    """Where durable replies and notifications go."""

    def send(self, ca: str, session: str, payload: bytes) -> None:
        """Deliver one encoded message to a session (must not block)."""

    def forward(self, node: str, ca: str, payload: bytes, hops: int = 1) -> None:
        """Hand a raw request to the bridge that owns its CA (clusters only; must not block)."""


class Runtime:
    """Runs one CA class for many CA names. Use as ``async with Runtime(...) as rt``."""

    def __init__(
        self,
        app: type[CA],
        store: Store,
        sink: Sink,
        *,
        limits: SessionLimits | None = None,
        mailbox: int = 256,
        pulse: float | None = None,
        call_timeout: float = 30.0,
        autocreate: bool = True,
        rate: float = 0.0,
        burst: int = 0,
        cluster: Cluster | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if not (isinstance(app, type) and issubclass(app, CA)):
            raise TypeError("app must be a subclass of bridge.CA")
        self.app = app
        self.store = store
        self.sink = sink
        self.limits = limits or SessionLimits()
        self.mailbox_limit = mailbox
        self.pulse = pulse
        self.call_timeout = call_timeout
        self.autocreate = autocreate
        self.rate = rate  # calls per second per CA; 0: unlimited
        self.burst = max(burst, 1) if rate else 0
        self.cluster = cluster
        self._lookups: dict[str, list[tuple[Request, asyncio.Future[Any] | None, int]]] = {}
        self._unknown: dict[str, float] = {}  # recent store misses, so hostile names cost one lookup a while
        self.actors: dict[str, Actor] = {}
        self.metrics = metrics if metrics is not None else Metrics()  # the process owner's, handed down
        self.committer = Committer(store, self._deliver, metrics=self.metrics)
        self.closing = False
        self._bound = False  # bind_app done
        self.presence_dropped = 0  # presence messages for new sessions beyond the bound (Actor.offer_presence)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy_workers = 0
        self._workers_idle = asyncio.Event()
        self._workers_idle.set()
        self._service: list[asyncio.Task[Any]] = []

    async def bind_app(self) -> None:
        """Check that the (open) store belongs to this app, recording it as the owner of a store that has none;
        ConfigError naming both apps otherwise. Runs on entering; a service calls it earlier to fail before
        starting anything else."""
        if self._bound:
            return
        identity = app_identity(self.app)
        owner = await self.store.bind_app(identity)
        if owner is not None:
            raise ConfigError(f"{_where(self.store)} is the store of app {owner}, not {identity}: give {identity} its "
                              f"own store with --db")
        self._bound = True

    async def __aenter__(self) -> Runtime:
        started = time.perf_counter()
        await self.bind_app()
        if self.cluster is None:
            for record in await self.store.load_all():
                self._install(record, resume=True)
            log.info("loaded %d CAs in %.3fs", len(self.actors), time.perf_counter() - started)
        else:  # CAs are claimed when first asked for (and adopted when orphaned, if they have pulses)
            await self.cluster.join()
            log.info("joined the cluster as %s", self.cluster.token)
            self._service.append(asyncio.create_task(self._membership_loop(self.cluster), name="bridge.cluster"))
        self._service.append(asyncio.create_task(self.committer.run(), name="bridge.committer"))
        if self.pulse and self.app.has_pulse():
            self._service.append(asyncio.create_task(self._pulse_loop(self.pulse), name="bridge.pulser"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, drain_timeout: float = 5.0) -> None:
        """Stop admitting work, let the mailboxes and the committer drain (bounded), then cancel everything."""
        self.closing = True
        try:
            async with asyncio.timeout(drain_timeout):
                await self.wait_idle()
        except TimeoutError:
            log.warning("shutdown: work still pending after %.1fs; it was not committed", drain_timeout)
        tasks = [*self._service, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._service.clear()
        if self.cluster is not None and self.cluster.healthy:
            try:
                await self.cluster.leave()
            except Exception as exc:  # the membership expires by itself
                log.warning("could not release this bridge's CAs (they are taken over after the TTL): %s", exc)
            self.cluster = None

    async def wait_idle(self) -> None:
        """Return once every mailbox is empty and everything submitted is committed and delivered."""
        while True:
            await self._workers_idle.wait()
            await self.committer.wait_idle()
            if self._workers_idle.is_set():
                return

    # -- admission -------------------------------------------------------------------------------------------

    def submit(
        self, ca: str, req: Request, future: asyncio.Future[Any] | None = None, *, hops: int = 0
    ) -> None:
        """Admit one request for CA ``ca`` (name already validated). Rejections are answered at once.

        ``hops``: how many bridges of a cluster passed it on to here (see MAX_HOPS).
        """
        if not req.at:
            req.at = time.monotonic()
        if self.closing:
            self.reply_now(ca, req, future, error_body("unavailable", "Unavailable", "the bridge is shutting down"))
            return
        if req.kind == "call":
            spec = self.app.methods.get(req.method)
            if spec is None:
                self.reply_now(ca, req, future, error_body(
                    "bad_request", "NoSuchMethod", f"{self.app.__name__} CA {ca!r} has no method {req.method[:100]!r}"))
                return
            if not spec.accepts(len(req.args)):
                self.reply_now(ca, req, future, error_body(
                    "bad_request", "WrongArguments", f"{req.method} does not take {len(req.args)} arguments"))
                return
        actor = self.actors.get(ca)
        if actor is None:
            if self.cluster is not None:
                self._place(ca, req, future, hops)
                return
            if req.kind == "sync":  # nothing was ever queued for a CA that does not exist
                self.sink.send(ca, req.session, codec.encode(sync_answer(1, 1), req.codec))
                return
            if req.kind != "call":
                return
            if not self.autocreate:
                self._lookup_then_submit(ca, req, future)
                return
            actor = self.actors[ca] = Actor(self, ca, None)
        if req.kind == "presence":  # never takes a mailbox slot, so a full mailbox does not lose it
            if not actor.offer_presence(req, self.mailbox_limit):
                self.presence_dropped += 1
                if self.presence_dropped % 1000 == 1:
                    log.warning("CA %s: dropped a presence message for a new session: %d new sessions' presence "
                                "waiting already (%d dropped so far)", ca, self.mailbox_limit, self.presence_dropped)
            return
        if self.rate and req.kind == "call" and not self._take_token(actor):
            self.reply_now(ca, req, future, error_body("busy", "RateLimited", "too many calls to this CA; retry later"))
            return
        if len(actor.mailbox) >= self.mailbox_limit:
            self.reply_now(ca, req, future, error_body("busy", "Busy", "the CA's mailbox is full; retry later"))
            return
        actor.enqueue((req, future))

    def _take_token(self, actor: Actor) -> bool:
        now = time.monotonic()
        actor.tokens = min(float(self.burst), actor.tokens + (now - actor.tokens_at) * self.rate) \
            if actor.tokens_at else float(self.burst)
        actor.tokens_at = now
        if actor.tokens < 1.0:
            return False
        actor.tokens -= 1.0
        return True

    def _lookup_then_submit(self, ca: str, req: Request, future: asyncio.Future[Any] | None) -> None:
        """With autocreate off, a CA unknown here may have been created (`ca-bridge create`) since start-up."""
        if self._wait_lookup(ca, req, future, False):
            self.spawn(self._lookup(ca), ca)

    def _wait_lookup(self, ca: str, req: Request, future: asyncio.Future[Any] | None, hops: int) -> bool:
        """Park a request while its CA is looked up; True if the caller must start the lookup."""
        waiting = self._lookups.get(ca)
        if waiting is not None:
            if len(waiting) < self.mailbox_limit:
                waiting.append((req, future, hops))
            else:
                self.reply_now(ca, req, future, error_body("busy", "Busy", "the CA's mailbox is full; retry later"))
            return False
        missed = self._unknown.get(ca)
        if missed is not None and time.monotonic() - missed < 5.0:
            self._answer_missing(ca, req, future)
            return False
        self._lookups[ca] = [(req, future, hops)]
        return True

    def _answer_missing(self, ca: str, req: Request, future: asyncio.Future[Any] | None) -> None:
        if req.kind == "sync":  # nothing was ever queued for a CA that does not exist
            self.sink.send(ca, req.session, codec.encode(sync_answer(1, 1), req.codec))
        else:
            self.reply_now(ca, req, future, error_body("not_found", "NoSuchCA", "no such CA"))

    def _remember_missing(self, ca: str) -> None:
        if len(self._unknown) >= 10_000:
            self._unknown.clear()
        self._unknown[ca] = time.monotonic()

    async def _lookup(self, ca: str) -> None:
        try:
            record = await self.store.load(ca)
        except Exception:
            log.exception("looking up CA %s failed", ca)
            record = None
        waiting = self._lookups.pop(ca, [])
        if record is None:
            self._remember_missing(ca)
            for req, future, _ in waiting:
                self.reply_now(ca, req, future, error_body("not_found", "NoSuchCA", "no such CA"))
            return
        self._unknown.pop(ca, None)
        if ca not in self.actors:
            self._install(record, resume=True)
        for req, future, _ in waiting:
            self.submit(ca, req, future)

    def _install(self, record: CARecord, *, resume: bool) -> Actor:
        actor = self.actors[record.name] = Actor(self, record.name, record)
        if resume:
            actor.enqueue(RESUME)
        if self.cluster is not None and self.pulse:  # taken over: its last pulse elsewhere may be recent
            actor.pulse_at = asyncio.get_running_loop().time() + self.pulse
        return actor

    # -- clusters (bridge.cluster) ------------------------------------------------------------------------------

    def _place(self, ca: str, req: Request, future: asyncio.Future[Any] | None, hops: int) -> None:
        """A CA not loaded here: claim it, or forward to the bridge that owns it."""
        if self._wait_lookup(ca, req, future, hops):
            self.spawn(self._claim(ca), ca)

    async def _claim(self, ca: str) -> None:
        assert self.cluster is not None
        create = self.autocreate and any(req.kind == "call" for req, _, _ in self._lookups.get(ca, ()))
        try:
            claim = await self.cluster.claim(ca, create=create)
        except Exception as exc:
            log.warning("claiming CA %s failed: %s", ca, exc)
            claim = None
        waiting = self._lookups.pop(ca, [])
        if claim is None:
            for req, future, _ in waiting:
                self.reply_now(ca, req, future, error_body("unavailable", "Unavailable", "the store is unavailable"))
        elif claim.outcome == "mine":
            if ca not in self.actors:
                assert claim.record is not None
                self._install(claim.record, resume=bool(claim.record.state))
            for req, future, hops in waiting:
                self.submit(ca, req, future, hops=hops)
        elif claim.outcome == "other":
            for req, future, hops in waiting:
                if hops >= MAX_HOPS or future is not None or not req.raw or claim.node is None:
                    self.reply_now(ca, req, future, error_body("unavailable", "Moved", "the CA moved; retry"))
                else:  # ownership moved while it travelled: one more hop, on fresh information
                    self.sink.forward(claim.node, ca, req.raw, hops + 1)
        elif self.autocreate and any(req.kind == "call" for req, _, _ in waiting):
            for req, future, hops in waiting:  # a call arrived while an ack's lookup ran: look again, creating
                self.submit(ca, req, future, hops=hops)
        else:
            if not self.autocreate:
                self._remember_missing(ca)
            for req, future, _ in waiting:
                self._answer_missing(ca, req, future)

    async def reclaim(self, actor: Actor, item: Any) -> bool:
        """A commit of ``actor`` failed or was refused: reload it if still ours; else evict it and send its
        queued requests on to the new owner. True if the actor was reloaded."""
        assert self.cluster is not None
        claim = await self.cluster.claim(actor.name, create=False)
        if claim.outcome == "mine" and claim.record is not None:
            actor.reset(claim.record)
            return True
        log.info("CA %s is now owned by %s; handing its queued requests on", actor.name, claim.node)
        if self.actors.get(actor.name) is actor:
            del self.actors[actor.name]
        items = [item, *actor.mailbox]
        actor.mailbox.clear()
        actor.presence.clear()
        for queued in items:
            if isinstance(queued, tuple):
                self.submit(actor.name, *queued)
        return False

    async def _membership_loop(self, cluster: Cluster) -> None:
        adopt = bool(self.pulse and self.app.has_pulse())
        while True:
            await asyncio.sleep(cluster.heartbeat_interval)
            try:
                await cluster.beat()
                if adopt and not self.closing:
                    for record in await cluster.adopt():
                        held = self.actors.get(record.name)
                        if held is None:
                            self._install(record, resume=True)
                        else:  # ours once, then someone else's, now ours again: what we hold may be stale
                            held.invalidate()
            except Exception as exc:
                log.warning("cluster heartbeat failed: %s", exc)

    def reply_now(self, ca: str, req: Request, future: asyncio.Future[Any] | None, err: dict[str, Any]) -> None:
        """Answer a call that will not run (nothing to commit, so nothing to wait for)."""
        if req.kind != "call":
            return
        self.metrics.reject(err["name"])
        payload = codec.encode(reply_err(req.id, err), req.codec)
        self.sink.send(ca, req.session, payload)
        if future is not None and not future.done():
            future.set_result(codec.decode(payload, req.codec))

    def snapshot_counts(self) -> dict[str, int]:
        """Gauges over the loaded CAs, computed now (for a metrics scrape or the dashboard)."""
        sessions = online = queued = queue_max = mailbox = mailbox_max = busy = 0
        for actor in self.actors.values():
            depth = len(actor.mailbox)
            mailbox += depth
            mailbox_max = max(mailbox_max, depth)
            if depth or actor.running:
                busy += 1
            for data in actor.sessions.values():
                sessions += 1
                online += data.online
                n = len(data.queue)
                queued += n
                queue_max = max(queue_max, n)
        return {"cas": len(self.actors), "sessions": sessions, "online": online, "queued": queued,
                "queue_max": queue_max, "mailbox": mailbox, "mailbox_max": mailbox_max, "busy": busy}

    # -- tasks -------------------------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run one CA worker; the runtime owns it and cancels it on close."""
        task = asyncio.create_task(coro, name=f"ca[{name}]")
        self._tasks.add(task)
        self._busy_workers += 1
        self._workers_idle.clear()
        task.add_done_callback(self._worker_done)

    def _worker_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        self._busy_workers -= 1
        if self._busy_workers == 0:
            self._workers_idle.set()

    def _deliver(self, pending: Pending) -> None:
        ca = pending.actor.name
        for session, payload in pending.sends:
            self.sink.send(ca, session, payload)
        metrics = self.metrics
        metrics.notes_published += pending.notes
        if pending.method:
            took = time.monotonic() - pending.at
            metrics.call_done(pending.method, pending.result, took)
            actor = pending.actor
            actor.last_active = now = time.time()
            actor.recent.append((now, pending.session, pending.request, pending.method, pending.result, took))
            if pending.result != "ok":
                outcome = pending.outcome
                name = outcome.name if isinstance(outcome, AppError) else "InternalError"
                metrics.error(ca, pending.method, pending.result, name)
        future = pending.future
        if future is not None and not future.done():
            outcome = pending.outcome
            if isinstance(outcome, bytes):
                future.set_result(codec.decode(outcome, codec.detect(outcome)))
            else:
                future.set_result(outcome)

    async def _pulse_loop(self, interval: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline += interval
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            if loop.time() - deadline > interval:  # fell behind: skip missed ticks instead of piling up
                deadline = loop.time()
            now = loop.time()
            for actor in list(self.actors.values()):
                if actor.durable and not actor.pulse_queued and len(actor.mailbox) < self.mailbox_limit \
                        and actor.pulse_at <= now:
                    actor.pulse_queued = True
                    actor.enqueue(PULSE)
