"""The CA runtime: the registry of resident CAs, placing requests on them, pulses and the group committer.

It knows nothing about MQTT: decoded requests come in through :meth:`Runtime.submit` (from bridge.ingress), and
everything that must reach a device goes out through a :class:`Sink` once it is durable. Admission (whether a
request may run, and every rejection) is bridge.admission; where a CA runs in a cluster is bridge.router.

Lazy loading and eviction (a bridge of its own; a cluster claims CAs when first asked for, bridge.router):

* Nothing is loaded at start. The first request for a CA that is not resident parks in ``_lookups`` while one
  ``store.load`` runs for it (one lookup in flight per CA, later requests park behind it, bounded like a mailbox,
  a session's later presence replacing its parked one as in a mailbox, so a flood of presence loses no last state);
  the record is installed and on_resume runs before the parked requests, as it did at start before. A CA the store
  does not have is remembered for a few seconds (``_unknown``) and then created (autocreate, a creating request) or
  answered as missing: a sync then gets the "(1,1)" answer, but only after the store said the CA does not exist, so
  the sync of an evicted CA loads it and gets its real queue. A lookup that fails (store down) answers unavailable
  and creates nothing: a CA must never be re-created over one the store could not read.
* Eviction is LRU over idle actors (:meth:`bridge.actor.Actor.idle`): empty mailbox, no worker running, no coalesced
  presence waiting, no pulse queued, not stale, and nothing of the current epoch waiting in the committer (counted
  by :meth:`Runtime._commit` and :meth:`Runtime._deliver`; in a bridge of its own a Pending of an older epoch is
  never delivered: the committer retries or fails it, and the retry goes through :meth:`submit`, which reloads).
  State, sessions, queued notifications, presence (the session row's ``online``) and dedup records are all in the
  store by then, so a reload restores them; only memory-only things go: the rate-limit tokens (refilled), the
  dashboard's recent-calls list, ``ca.scratch`` and ``presence_at``. Beyond ``max_resident`` resident CAs, a sweep
  evicts the least recently used idle ones down to 90% of the bound: at once when a load crosses the bound, and
  once a second for CAs that were busy then. Busy CAs are never evicted, so the bound can be exceeded while more
  CAs than that are busy at once.
* Pulses: an app with on_pulse (and ``pulse`` set) pulses every CA of the store, so every CA is needed anyway:
  its CAs are loaded in the background after start (the first requests do not wait for it: a request for a CA not
  loaded yet loads it on its own) and are never evicted; ``max_resident`` does not bound them. Loading them per
  pulse instead would reload the whole store every interval. So a CA that pulsed before a restart pulses after one
  without any request, as when everything loaded at start.
* ``preload``: load every CA at start, as before (the Harness does, so that its accessors see every CA after a
  restart).
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import time
from collections.abc import Coroutine
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bridge import codec
from bridge.actor import PULSE, RESUME, Actor, ActorContext, Item
from bridge.admission import BUSY, Admission, Sink
from bridge.app import CA
from bridge.committer import Committer, Pending
from bridge.device import DeviceLimits
from bridge.errors import AppError, ConfigError
from bridge.metrics import Metrics
from bridge.protocol import Call, Inbound, Sync, error_body, stamp_reply
from bridge.router import MAX_HOPS, Router
from bridge.session import SessionLimits
from bridge.store import Backlog, CARecord, Store
from bridge.workers import Workers

if TYPE_CHECKING:
    from bridge.cluster import Cluster

__all__ = ["MAX_HOPS", "Runtime", "Sink", "app_identity"]

log = logging.getLogger("bridge.runtime")

NO_SUCH_CA: Final = error_body("not_found", "NoSuchCA", "no such CA")
STORE_DOWN: Final = error_body("unavailable", "Unavailable", "the store is unavailable")
MOVED: Final = error_body("unavailable", "Moved", "the CA moved; retry")
MISS_TTL: Final = 5.0  # seconds a CA the store does not have is answered as missing without asking it again


def app_identity(app: type[CA]) -> str:
    """The name a store records for the app it belongs to: ``file:Class`` (the module's file name without ``.py``
    and the class's qualified name), the same however the app was named on the command line (a path or a module)
    and wherever the checkout lives, so that moving or renaming the directory keeps the store usable."""
    try:
        stem = Path(inspect.getfile(app)).stem
    except (TypeError, OSError):  # a class without a source file
        stem = app.__module__.rpartition(".")[2]
    return f"{stem}:{app.__qualname__}"


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
        max_resident: int = 10_000,
        preload: bool = False,
        device: DeviceLimits | None = None,
    ) -> None:
        if not (isinstance(app, type) and issubclass(app, CA)):
            raise TypeError("app must be a subclass of bridge.CA")
        self.app = app
        self.store = store
        self.sink = sink
        self.limits = limits or SessionLimits()
        self.pulse = pulse
        self.call_timeout = call_timeout
        self.autocreate = autocreate
        if max_resident < 0:
            raise ValueError("max_resident must be 0 (no bound) or more")
        self.max_resident = max_resident  # idle CAs beyond it are evicted (LRU); 0: never evict
        self.preload = preload
        self._pulsing = bool(pulse and app.has_pulse())  # every CA pulses: all resident, never evicted
        self._evicts = bool(max_resident) and cluster is None and not self._pulsing
        self._sweep_at = max_resident  # resident count above which a load sweeps at once (see _make_room)
        self._used = 0  # the LRU clock: bumped by every request placed on a resident CA
        self._lookups: dict[str, list[tuple[Inbound, asyncio.Future[Any] | None, int]]] = {}
        self._unknown: dict[str, float] = {}  # recent store misses, so hostile names cost one lookup a while
        self.actors: dict[str, Actor] = {}
        self.metrics = metrics if metrics is not None else Metrics()  # the process owner's, handed down
        self.admission = Admission(app, sink, self.metrics, mailbox=mailbox, rate=rate, burst=burst)
        self.router = Router(cluster, sink, self.actors)
        self.workers = Workers()  # the CA workers, lookups and claims (bridge.workers)
        self.committer = Committer(store, self._deliver, retry=self.submit, reject=self.admission.reject,
                                   metrics=self.metrics, end_batch=sink.end_batch)
        self.context = ActorContext(
            app=app, limits=self.limits, call_timeout=call_timeout, metrics=self.metrics, commit=self._commit,
            reject=self.admission.reject, workers=self.workers, reload=self._reload, fenced=cluster is not None,
            device=device or DeviceLimits())
        self._bound = False  # bind_app done
        self._service: list[asyncio.Task[Any]] = []

    @property
    def cluster(self) -> Cluster | None:
        """This bridge's cluster membership (None: a bridge of its own)."""
        return self.router.cluster

    @property
    def closing(self) -> bool:
        """Shutting down: nothing new is admitted."""
        return self.admission.closing

    @property
    def presence_dropped(self) -> int:
        """Presence messages for new sessions dropped beyond the bound (bridge.admission)."""
        return self.admission.presence_dropped

    async def bind_app(self) -> None:
        """Check that the (open) store belongs to this app, recording it as the owner of a store that has none;
        ConfigError naming both apps otherwise. Runs on entering; a service calls it earlier to fail before
        starting anything else."""
        if self._bound:
            return
        identity = app_identity(self.app)
        owner = await self.store.bind_app(identity)
        if owner is not None:
            raise ConfigError(f"{self.store.describe()} is the store of app {owner}, not {identity}: "
                              f"give {identity} its own store with --db")
        self._bound = True

    async def __aenter__(self) -> Runtime:
        started = time.perf_counter()
        await self.bind_app()
        if self.cluster is None:
            if self.preload:
                for record in await self.store.load_all():
                    self._install(record, resume=True)
                log.info("loaded %d CAs in %.3fs", len(self.actors), time.perf_counter() - started)
            elif self._pulsing:
                self._service.append(asyncio.create_task(self._load_pulsing(), name="bridge.loader"))
            if self._evicts:
                self._service.append(asyncio.create_task(self._evict_loop(), name="bridge.evictor"))
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
        self.admission.closing = True
        try:
            async with asyncio.timeout(drain_timeout):
                await self.wait_idle()
        except TimeoutError:
            log.warning("shutdown: work still pending after %.1fs; it was not committed", drain_timeout)
        self.workers.stop_parked()
        tasks = [*self._service, *self.workers.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._service.clear()
        if self.cluster is not None and self.cluster.healthy:
            try:
                await self.cluster.leave()
            except Exception as exc:  # the membership expires by itself
                log.warning("could not release this bridge's CAs (they are taken over after the TTL): %s", exc)
            self.router.cluster = None

    async def wait_idle(self) -> None:
        """Return once every mailbox is empty and everything submitted is committed and delivered."""
        while True:
            await self.workers.idle.wait()
            await self.committer.wait_idle()
            if self.workers.idle.is_set():
                return

    # -- placing requests ------------------------------------------------------------------------------------

    def submit(
        self, ca: str, req: Inbound, future: asyncio.Future[Any] | None = None, *, hops: int = 0
    ) -> None:
        """Run one decoded request on CA ``ca`` (name already validated). Rejections are answered at once.

        ``hops``: how many bridges of a cluster passed it on to here (see MAX_HOPS).
        """
        if not req.at:
            req.at = time.perf_counter()
        if not self.admission.check(ca, req, future):
            return
        actor = self.actors.get(ca)
        if actor is None:
            if self.router.cluster is not None:
                self._place(ca, req, future, hops)
                return
            missed = self._unknown.get(ca)
            if missed is None or ca in self._lookups or time.monotonic() - missed >= MISS_TTL:
                if self._wait_lookup(ca, req, future, hops):  # not resident: maybe in the store (evicted, or
                    self.spawn(self._lookup(ca), ca)  # not loaded since start, or made by `ca-bridge create`)
                return
            if not (self.autocreate and req.creates):  # the store said it does not exist
                self._answer_missing(ca, req, future)
                return
            del self._unknown[ca]
            actor = self.actors[ca] = Actor(self.context, ca, None)
            self._used += 1
            actor.used = self._used
            self.admission.admit(actor, req, future)
            self._make_room()  # after admitting: the new CA is busy, so not the one evicted
            return
        self._used += 1
        actor.used = self._used
        self.admission.admit(actor, req, future)

    def _wait_lookup(self, ca: str, req: Inbound, future: asyncio.Future[Any] | None, hops: int) -> bool:
        """Park a request while its CA is looked up; True if the caller must start the lookup."""
        waiting = self._lookups.get(ca)
        if waiting is not None:
            if req.coalesced:  # a later presence of a parked session replaces it, as in a mailbox (no slot taken)
                for i, (parked, _, _) in enumerate(waiting):
                    if parked.coalesced and parked.session == req.session:
                        waiting[i] = (req, future, hops)
                        return False
            if not self.admission.full(len(waiting)):  # as many as a loaded CA's mailbox takes
                waiting.append((req, future, hops))
            else:
                self.admission.reject(ca, req, future, BUSY)
            return False
        missed = self._unknown.get(ca)
        if missed is not None and time.monotonic() - missed < MISS_TTL:
            self._answer_missing(ca, req, future)
            return False
        self._lookups[ca] = [(req, future, hops)]
        return True

    def _answer_missing(self, ca: str, req: Inbound, future: asyncio.Future[Any] | None) -> None:
        if type(req) is Sync:  # nothing was ever queued for a CA that does not exist
            self.sink.send(ca, req.session, req.missing_answer())
        else:
            self.admission.reject(ca, req, future, NO_SUCH_CA)

    def _remember_missing(self, ca: str) -> None:
        if len(self._unknown) >= 10_000:
            self._unknown.clear()
        self._unknown[ca] = time.monotonic()

    async def _lookup(self, ca: str) -> None:
        """Load a CA that is not resident, then place the requests parked for it (a bridge of its own)."""
        try:
            record = await self.store.load(ca)
        except Exception as exc:  # never create a CA the store could not read: it may exist
            log.warning("loading CA %s from the store failed: %s", ca, exc)
            for req, future, _ in self._lookups.pop(ca, []):
                self.admission.reject(ca, req, future, STORE_DOWN)
            return
        waiting = self._lookups.pop(ca, [])
        if record is None:
            self._remember_missing(ca)  # now submit creates it (autocreate) or answers it missing
        else:
            self._unknown.pop(ca, None)
            if ca not in self.actors:
                self._install(record, resume=True)  # busy with on_resume: never the one evicted
                self.metrics.cas_loaded += 1
        for req, future, hops in waiting:
            self.submit(ca, req, future, hops=hops)
        self._make_room()

    async def _load_pulsing(self) -> None:
        """An app with pulses: load every CA in the background, so that each pulses without being asked for."""
        started = time.perf_counter()
        try:
            records = await self.store.load_all()
        except Exception as exc:
            log.error("could not load the CAs to pulse them (they load when asked for): %s", exc)
            return
        for i, record in enumerate(records):
            if self.closing:
                return
            # loaded since (a request) or being loaded: that copy is at least as new. Nothing is evicted with pulses,
            # so no CA left the registry since the snapshot was read.
            if record.name not in self.actors and record.name not in self._lookups:
                self._install(record, resume=True)
            if i % 512 == 511:
                await asyncio.sleep(0)  # let requests through
        log.info("loaded %d CAs to pulse in %.3fs", len(records), time.perf_counter() - started)

    def _install(self, record: CARecord, *, resume: bool) -> Actor:
        actor = self.actors[record.name] = Actor(self.context, record.name, record)
        actor.used = self._used
        if resume:
            actor.enqueue(RESUME)
        if self.cluster is not None and self.pulse:  # taken over: its last pulse elsewhere may be recent
            actor.pulse_at = asyncio.get_running_loop().time() + self.pulse
        return actor

    # -- eviction --------------------------------------------------------------------------------------------

    def _make_room(self) -> None:
        """After a CA became resident: sweep if that crossed the bound (or the floor a short sweep left)."""
        if self._evicts and len(self.actors) > self._sweep_at:
            self.evict_idle()

    def evict_idle(self) -> int:
        """Evict the least recently used idle CAs down to 90% of ``max_resident`` (when above the bound); return
        how many. Busy CAs stay, so a sweep may fall short: the next load sweeps again only once another tenth of the
        bound became resident (bounded work per load), and :meth:`_evict_loop` retries every second."""
        bound = self.max_resident
        if not self._evicts or len(self.actors) <= bound:
            self._sweep_at = bound
            return 0
        excess = len(self.actors) - (bound - bound // 10)
        idle = [actor for actor in self.actors.values() if actor.idle()]
        victims = heapq.nsmallest(excess, idle, key=attrgetter("used"))
        for actor in victims:
            del self.actors[actor.name]
        self.metrics.cas_evicted += len(victims)
        self._sweep_at = max(bound, len(self.actors) + bound // 10)
        return len(victims)

    async def _evict_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if len(self.actors) > self.max_resident:
                self.evict_idle()

    # -- clusters (bridge.cluster) ------------------------------------------------------------------------------

    def _place(self, ca: str, req: Inbound, future: asyncio.Future[Any] | None, hops: int) -> None:
        """A CA not loaded here: claim it, or forward to the bridge that owns it."""
        if self._wait_lookup(ca, req, future, hops):
            self.spawn(self._claim(ca), ca)

    async def _claim(self, ca: str) -> None:
        create = self.autocreate and any(req.creates for req, _, _ in self._lookups.get(ca, ()))
        claim = await self.router.claim(ca, create=create)
        waiting = self._lookups.pop(ca, [])
        if claim is None:
            for req, future, _ in waiting:
                self.admission.reject(ca, req, future, STORE_DOWN)
        elif claim.outcome == "mine":
            if ca not in self.actors:
                assert claim.record is not None
                self._install(claim.record, resume=bool(claim.record.state))
            for req, future, hops in waiting:
                self.submit(ca, req, future, hops=hops)
        elif claim.outcome == "other":
            for req, future, hops in waiting:  # ownership moved while it travelled: one more hop, if it may
                if not self.router.pass_on(claim.node, ca, req, future, hops):
                    self.admission.reject(ca, req, future, MOVED)
        elif self.autocreate and any(req.creates for req, _, _ in waiting):
            for req, future, hops in waiting:  # a call arrived while an ack's lookup ran: look again, creating
                self.submit(ca, req, future, hops=hops)
        else:
            if not self.autocreate:
                self._remember_missing(ca)
            for req, future, _ in waiting:
                self._answer_missing(ca, req, future)

    async def _reload(self, actor: Actor, item: Item) -> bool:
        """A commit of ``actor`` failed or was refused: reload it from the store; True (the item may run)."""
        if self.router.cluster is not None:
            return await self.reclaim(actor, item)
        actor.reset(await self.store.load(actor.name))
        return True

    async def reclaim(self, actor: Actor, item: Item) -> bool:
        """In a cluster, a commit of ``actor`` failed or was refused: reload it if still ours; else evict it and
        send its queued requests on to the new owner. True if the actor was reloaded."""
        claim = await self.router.owner(actor.name)
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

    def snapshot_counts(self) -> dict[str, int]:
        """Gauges over the resident CAs, computed now (for a metrics scrape or the dashboard)."""
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
        counts = {"cas": len(self.actors), "sessions": sessions, "online": online, "queued": queued,
                  "queue_max": queue_max, "mailbox": mailbox, "mailbox_max": mailbox_max, "busy": busy}
        if isinstance(self.store, Backlog):
            counts["unapplied"] = self.store.unapplied()
        return counts

    # -- tasks -------------------------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a lookup or a claim of CA ``name``; the runtime owns it and cancels it on close."""
        self.workers.spawn(coro, f"ca[{name}]")

    def _commit(self, pending: Pending) -> None:
        """Hand an actor's effects to the committer, counting them on the actor until delivered (Actor.idle)."""
        owner: Actor = pending.owner  # type: ignore[assignment]  # (no cast(): a call on the hot path)
        if pending.epoch == owner.epoch:
            owner.in_commit += 1
        self.committer.submit(pending)

    def _deliver(self, pending: Pending) -> None:
        owner: Actor = pending.owner  # type: ignore[assignment]  # the runtime commits only its actors' effects
        if pending.epoch == owner.epoch and owner.in_commit:
            owner.in_commit -= 1
        ca = owner.name
        if pending.rx:  # a fresh reply to the device: the times for its clock estimate (bridge.device)
            self._stamp(pending)
        sends = pending.sends
        if len(sends) == 1:  # a reply alone (the usual call)
            session, payload = sends[0]
            self.sink.send(ca, session, payload)
        else:
            send = self.sink.send
            for session, payload in sends:
                send(ca, session, payload)
        metrics = self.metrics
        if pending.notes:
            metrics.notes_published += pending.notes
        req = pending.request
        result = pending.result
        if result and type(req) is Call:  # one clock read: the wall time comes from the same perf_counter value
            sent = time.perf_counter()
            owner.last_active = now = metrics.call_finished(
                req.method, result, req.at, pending.started, pending.submitted, self.committer.durable_at, sent)
            owner.recent.append((now, req.session, req.id, req.method, result, sent - req.at))
            if result != "ok":
                outcome = pending.outcome
                name = outcome.name if isinstance(outcome, AppError) else "InternalError"
                metrics.error(ca, req.method, result, name)
        future = pending.future
        if future is not None and not future.done():
            outcome = pending.outcome
            if isinstance(outcome, bytes):
                future.set_result(codec.decode(outcome, codec.detect(outcome)))
            else:
                future.set_result(outcome)

    @staticmethod
    def _stamp(pending: Pending) -> None:
        session, payload = pending.sends[0]
        stamped = stamp_reply(payload, pending.rx, time.time_ns() // 1_000_000)
        pending.sends[0] = (session, stamped)
        if pending.outcome is payload:
            pending.outcome = stamped

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
                if actor.durable and not actor.pulse_queued and not self.admission.full(len(actor.mailbox)) \
                        and actor.pulse_at <= now:
                    actor.pulse_queued = True
                    actor.enqueue(PULSE)
