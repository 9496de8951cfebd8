"""One loaded CA: its instance, committed sessions, bounded mailbox and the transaction around each call.

A call runs against the live ``state``; on success the state is encoded once (that encoding is both the dirty
check and the bytes the store writes), on any error it is restored from the last encoding. Session effects live on
working copies until the call succeeds (see bridge.session).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Any, Final, assert_never

from bridge import codec, faults
from bridge.app import CA
from bridge.committer import Pending, Reject
from bridge.device import DeviceAPI, DeviceLimits, DeviceRecord
from bridge.device.handlers import apply_dstart, apply_dsync, dstart_answer, dsync_answer
from bridge.errors import AppError, CodecError, StoreError
from bridge.logs import set_context
from bridge.metrics import Metrics
from bridge.protocol import (
    DEFAULT_SESSION, IOT_SESSION, Ack, Call, DStart, DSync, Inbound, Presence, Sync, encode_note, encode_poke,
    error_body, reply_err, reply_ok, sync_answer,
)
from bridge.session import SessionAPI, SessionData, SessionLimits, SessionTxn
from bridge.store import CARecord, Change, SessionWrite
from bridge.workers import Workers

__all__ = ["PULSE", "RESUME", "Actor", "ActorContext", "Item"]

log = logging.getLogger("bridge.ca")

PULSE: Final = "pulse"
RESUME: Final = "resume"
_EMPTY_STATE: Final = codec.dumps({})
# Besides each session's last dedup_window records, a CA keeps its last CA_WINDOW x dedup_window records (64 by
# default) whatever their sessions: this covers a duplicate that comes back late (redelivered by a bridge that was
# paused, say) after its session made more calls, and the calls of sessions collected by the max-sessions rule.
CA_WINDOW: Final = 8

Item = tuple[Inbound, "asyncio.Future[Any] | None"] | str  # a request and who waits for it; or PULSE, RESUME
NOT_READY: Final = error_body("internal", "NotReady", "the CA failed to initialize")
STALE_BOOT: Final = error_body("bad_request", "StaleBoot", "this sync belongs to an earlier start of the device; "
                               "start again (dstart)")
UNAVAILABLE: Final = error_body("unavailable", "Unavailable", "the bridge could not run the call")


@dataclass(slots=True, frozen=True)
class ActorContext:
    """What a CA needs of the runtime around it, and nothing more (one per runtime, shared by its actors)."""

    app: type[CA]  # the CA class (its method table: ``app.methods``)
    limits: SessionLimits
    call_timeout: float  # seconds an async method may run
    metrics: Metrics
    commit: Callable[[Pending], None]  # hand effects to the group committer
    reject: Reject  # answer a request that will not run (the one rejection path, bridge.admission)
    workers: Workers  # runs, parks and wakes the actors' worker tasks
    # a commit of the actor failed or was refused: reload it from the store (or, in a cluster, reclaim it or hand
    # its queued requests, the item first, to the new owner); True if reloaded and the item may run
    reload: Callable[[Actor, Item], Awaitable[bool]]
    fenced: bool  # in a cluster: even an answer with nothing to write passes the ownership fence
    device: DeviceLimits = field(default_factory=DeviceLimits)  # the device layer's options (bridge.device)


class _Resume:
    """Awaits the rest of a coroutine whose first stretch already ran and yielded ``pending`` (what a coroutine
    yields to its Task: a future to wait for, or None to give the loop a turn): each step is passed through, and
    whatever the Task throws in (a cancellation, a timeout) goes into the coroutine, as ``await`` would do."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self.coro, self.pending
        while True:
            try:
                yield pending
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown in by the Task: the coroutine decides
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(None)
                except StopIteration as stop:
                    return stop.value


def _wall_ms(admitted: float) -> int:
    """The wall clock (Unix epoch ms) at ``admitted``, a time.perf_counter value."""
    return int((time.time() - (time.perf_counter() - admitted)) * 1000)


class Actor:
    """A CA in memory. Only its own worker task touches ``ca``, ``sessions`` and ``state_blob``."""

    __slots__ = (
        "ca", "ctx", "dapi", "dedup", "dedup_lag", "dedup_pos", "dedup_recent", "dedup_sessions", "dev", "dev_blob",
        "dev_started", "dtxn", "durable", "epoch", "in_commit", "last_active", "mailbox", "name", "owned_epoch",
        "presence", "pulse_at", "pulse_queued", "ready", "recent", "running", "sessions", "stale", "state_blob",
        "tokens", "tokens_at", "used", "wake", "worker",
    )

    def __init__(self, ctx: ActorContext, name: str, record: CARecord | None) -> None:
        self.ctx = ctx
        self.name = name
        self.ca: CA = ctx.app()
        self.ca.name = name
        self.ca.scratch = {}
        self.ca.log = logging.LoggerAdapter(log, {"ca": name})
        self.ca._device = self._open_device
        self.mailbox: deque[Item] = deque()
        # session -> its presence message waiting in the mailbox (one per session: later ones update it in place)
        self.presence: dict[str, Presence] = {}
        self.running = False  # a worker is draining the mailbox (not parked)
        self.wake: asyncio.Future[bool] | None = None  # the parked worker's (bridge.workers), if one is parked
        self.worker: asyncio.Task[Any] | None = None  # the current worker task (draining or parked)
        self.pulse_queued = False
        self.pulse_at = 0.0  # no pulse before this loop time (a CA just taken over from another bridge)
        self.last_active = 0.0  # wall time of the last call answered (for the dashboard)
        # the last calls answered: (wall time, session, request id, method, outcome, seconds), for the dashboard
        self.recent: deque[tuple[float, str, str, str, str, float]] = deque(maxlen=20)
        self.epoch = 0
        self.stale = False
        self.tokens = 0.0  # rate limiting (bridge.admission): calls this CA may still take, refilled over time
        self.tokens_at = 0.0
        self.in_commit = 0  # effects of the current epoch handed to the committer and not delivered yet (runtime)
        self.used = 0  # the runtime's LRU clock at the last request placed here (eviction)
        # the device record (bridge.device): committed blob (None: no device data), its decoded copy (made when
        # first needed), and the running transaction's working copy with its API (None: not touched)
        self.dev_blob: bytes | None = None
        self.dev: DeviceRecord | None = None
        self.dtxn: DeviceRecord | None = None
        self.dapi: DeviceAPI | None = None
        self.dev_started = False  # the device started (dstart) while this process holds the CA: poke it
        self.reset(record)

    def reset(self, record: CARecord | None) -> None:
        self.sessions: dict[str, SessionData] = {}
        # (session, request id) -> (position, encoded reply): the replies of each session's last dedup_window calls,
        # numbered per CA; not part of the session, so collecting a session does not forget which of its requests ran
        self.dedup: dict[tuple[str, str], tuple[int, bytes]] = {}
        self.dedup_sessions: dict[str, list[tuple[int, str]]] = {}  # session -> (position, id), oldest first
        self.dedup_recent: deque[tuple[int, str]] = deque()  # (position, session) of the CA's last records (CA_WINDOW)
        # live session -> (its floor as last written to the store, its floor in memory): the store may still hold
        # its records between the two, as a live session's floor is written once it has moved by a window (_trim)
        self.dedup_lag: dict[str, tuple[int, int]] = {}
        self.dedup_pos = 0
        self.ready = False
        self.owned_epoch = record.epoch if record is not None else 0  # clusters: the fence of every change
        self.dev_blob = record.device if record is not None else None
        self.dev = self.dtxn = self.dapi = None
        if record is None or not record.state:  # never created, or registered by `ca-bridge create` only
            self.durable = False
            self.state_blob = _EMPTY_STATE
        else:
            self.durable = True
            self.state_blob = record.state
            for sid, srec in record.sessions.items():
                self.sessions[sid] = SessionData.from_record(codec.loads(srec.meta), srec.notes)
            for pos, sid, rid, reply in sorted(record.dedup, key=lambda d: d[0]):
                self.dedup[(sid, rid)] = (pos, reply)
                self.dedup_sessions.setdefault(sid, []).append((pos, rid))
                self.dedup_recent.append((pos, sid))
                self.dedup_pos = pos
            while len(self.dedup_recent) > CA_WINDOW * max(1, self.ctx.limits.dedup_window):
                self.dedup_recent.popleft()
            # the store may hold records that memory had dropped already (their floor was not written yet): keep
            # exactly what memory kept, by the same rule; the next trim of each session writes its floor
            for sid in list(self.dedup_sessions):
                self._trim(sid, None)
        self.ca.state = codec.loads(self.state_blob)

    def invalidate(self) -> None:
        """A commit of this CA failed: drop everything not yet durable and reload before the next item."""
        self.epoch += 1
        self.stale = True
        self.in_commit = 0  # effects of older epochs are retried or failed by the committer, never delivered

    def idle(self) -> bool:
        """Nothing queued, running, or waiting for durability: everything of this CA is in the store, so it may
        be evicted and loaded again later without losing anything (bridge.runtime)."""
        return not (self.running or self.mailbox or self.presence or self.pulse_queued or self.in_commit
                    or self.stale)

    # -- the worker -------------------------------------------------------------------------------------------

    def enqueue(self, item: Item) -> None:
        """Add to the mailbox and make sure a worker drains it: wake the parked one, or start one."""
        self.mailbox.append(item)
        if not self.running:
            self.running = True
            wake, self.wake = self.wake, None
            worker = self.worker
            if wake is not None and not wake.done() and worker is not None:
                self.ctx.workers.wake(self, wake, worker)
            else:
                worker = self.worker = self.ctx.workers.start_worker(self._drain(), f"ca[{self.name}]")
                worker.add_done_callback(self._worker_gone)

    def _worker_gone(self, task: asyncio.Task[Any]) -> None:
        """A worker ended (stopped while parked, or cancelled at close): if it was this CA's current one, nothing
        drains the mailbox any more. A worker stopped by a sweep after a newer one started changes nothing."""
        if task is self.worker:
            self.worker = None
            self.running = False

    async def _drain(self) -> None:
        """The worker: drain the mailbox, then park until woken with more (or stopped: bridge.workers)."""
        workers = self.ctx.workers
        me = self.worker
        assert me is not None
        while True:
            while self.mailbox:
                item = self.mailbox.popleft()
                try:
                    await self._process(item)
                except StoreError as exc:  # reloading the CA failed (database down): retryable, no traceback
                    log.warning("CA %s: cannot reload from the store (%s); answered unavailable", self.name, exc)
                    self._fail_item(item)
                except Exception:
                    log.exception("CA %s: unexpected failure processing an item", self.name)
                    self._fail_item(item)
            self.running = False
            wake = self.wake = workers.park(self, me)
            # stopped (False): a later request finds the future done and starts a new worker
            if wake is None or not await wake:
                return

    def offer_presence(self, req: Presence, new_sessions: int) -> bool:
        """Admit a presence message without taking a mailbox slot: a presence is one bit per session, so one waiting
        message per session is enough, and a later one updates it in place (coalesced). False (dropped) only for a
        session that does not exist yet when ``new_sessions`` messages are waiting already (a flood of new ids)."""
        waiting = self.presence.get(req.session)
        if waiting is not None:
            waiting.online, waiting.codec, waiting.raw = req.online, req.codec, req.raw
            return True
        if req.session not in self.sessions and \
                sum(sid not in self.sessions for sid in self.presence) >= new_sessions:
            return False
        self.presence[req.session] = req
        self.enqueue((req, None))
        return True

    async def _process(self, item: Item) -> None:
        if isinstance(item, str):
            set_context(self.name)
        else:
            req = item[0]
            set_context(self.name, req.session, req.id if type(req) is Call or type(req) is DSync or type(req) is DStart
                        else "")
            if req.coalesced and self.presence.get(req.session) is req:
                del self.presence[req.session]  # from now on, a new presence message waits on its own
        if self.stale:
            if not await self.ctx.reload(self, item):
                return  # owned by another bridge now: the item went there
            self.stale = False
        if isinstance(item, str):  # PULSE or RESUME
            if item == PULSE:
                self.pulse_queued = False
            if await self._ready() and item == PULSE:
                await self._hook("on_pulse")
            return
        req, future = item
        match req:  # one handler per inbound kind (bridge.protocol.KINDS)
            case Call():
                if self.durable and (hit := self._dedup_hit(req)) is not None:
                    self.ctx.metrics.dedup_hits += 1
                    self.ctx.commit(Pending(owner=self, epoch=self.epoch, change=None, sends=[(req.session, hit)],
                                            future=future, outcome=hit))
                elif await self._ready():
                    await self._call(req, future)
                else:
                    self.ctx.reject(self.name, req, future, NOT_READY)
            case Sync():
                self._sync(req)
            case Presence():
                await self._presence(req)
            case Ack():
                self._ack(req)
            case DStart():
                if await self._ready():
                    await self._dstart(req, future)
                else:
                    self.ctx.reject(self.name, req, future, NOT_READY)
            case DSync():
                if await self._ready():
                    await self._dsync(req, future)
                else:
                    self.ctx.reject(self.name, req, future, NOT_READY)
            case _:
                assert_never(req)

    def _fail_item(self, item: Item) -> None:
        if isinstance(item, tuple):
            req, future = item
            self.ctx.reject(self.name, req, future, UNAVAILABLE)

    async def _ready(self) -> bool:
        """Run on_init (new CA) or on_resume (loaded CA) once before anything else."""
        if not self.ready:
            self.ready = await self._hook("on_resume" if self.durable else "on_init")
        return self.ready

    # -- transactions -----------------------------------------------------------------------------------------

    def _begin(self, sid: str, session_codec: codec.Codec | None = None) -> SessionTxn:
        """Start a call in session ``sid``; a device's call creates its session (a hook's does not)."""
        txn = SessionTxn(self.sessions, sid, self.ctx.limits)
        if session_codec is not None:
            current = txn.peek(sid)
            if current is None or current.codec != session_codec:
                txn.write(sid).codec = session_codec
        self.ca.session = SessionAPI(txn)
        return txn

    def _rollback(self) -> None:
        self.ca.state = codec.loads(self.state_blob)
        self.dtxn = self.dapi = None

    async def _run(self, fn: Any, args: Any) -> Any:
        """Run a method or hook in this worker's Task. A coroutine's first stretch runs at once, and the deadline
        is armed only if it suspends (a method that never awaits cannot be interrupted anyway), counted from the
        start: the same outcome as a timeout around the whole await, without its cost for a method like ``incr``."""
        result = fn(*args)
        if type(result) is CoroutineType:
            started = time.monotonic()
            try:
                pending = result.send(None)
            except StopIteration as stop:
                return stop.value
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.ctx.call_timeout - (time.monotonic() - started)
            async with asyncio.timeout_at(deadline):
                return await _Resume(result, pending)
        if inspect.isawaitable(result):
            async with asyncio.timeout(self.ctx.call_timeout):
                result = await result
        return result

    async def _hook(self, name: str) -> bool:
        epoch = self.epoch
        txn = self._begin(DEFAULT_SESSION)
        try:
            await self._run(getattr(self.ca, name), ())
            blob = codec.dumps(self.ca.state)
            if self.dtxn is not None:
                self.dtxn.settle(self._committed_device(), self.ctx.device.map_max)
        except Exception:
            log.exception("CA %s: %s failed; rolled back", self.name, name)
            self._rollback()
            return False
        change, sends = self._apply(txn, blob)
        notes = len(sends)
        if self.dtxn is not None:
            self._commit_device(change, sends)
        if not change.empty() or sends:
            self.ctx.commit(Pending(owner=self, epoch=epoch, change=change, sends=sends, notes=notes))
        return True

    async def _call(self, req: Call, future: asyncio.Future[Any] | None) -> None:
        started = time.perf_counter()
        epoch = self.epoch
        spec = self.ctx.app.methods[req.method]
        txn = self._begin(req.session, req.codec)
        error: BaseException | None = None
        try:
            result = await self._run(spec.fn, (self.ca, *req.args))
            codec.check_subset(result)
            reply = reply_ok(req.id, result)
            payload = codec.encode(reply, req.codec)
            blob = codec.dumps(self.ca.state)
            if self.dtxn is not None:
                self.dtxn.settle(self._committed_device(), self.ctx.device.map_max)
        except AppError as exc:
            error, reply = exc, reply_err(req.id, error_body("app", exc.name, exc.message, exc.data))
        except TimeoutError as exc:
            log.error("CA %s: %s (request %s) ran past %ss; rolled back", self.name, req.method, req.id,
                      self.ctx.call_timeout)
            error, reply = exc, reply_err(req.id, error_body("internal", "Timeout", "the method ran past its deadline"))
        except CodecError as exc:
            error, reply = exc, reply_err(req.id, error_body("internal", "NotSerializable", str(exc)))
        except Exception as exc:
            log.exception("CA %s: %s (request %s) raised; rolled back", self.name, req.method, req.id)
            error, reply = exc, reply_err(req.id, error_body("internal", "InternalError", "the method failed"))
        if error is not None:
            self._rollback()
            txn = self._begin(req.session, req.codec)
            blob = self.state_blob
            try:
                payload = codec.encode(reply, req.codec)
            except CodecError:  # AppError data outside the wire subset
                reply["err"]["data"] = {}
                payload = codec.encode(reply, req.codec)
        change, sends = self._apply(txn, blob)
        self._record(req.session, req.id, payload, change)
        notes = len(sends)
        sends.insert(0, (req.session, payload))
        if self.dtxn is not None:
            self._commit_device(change, sends)
        outcome = error if isinstance(error, AppError) else payload
        result = "ok" if error is None else "app" if isinstance(error, AppError) else "internal"
        self.ctx.commit(Pending(owner=self, epoch=epoch, change=change, sends=sends, notes=notes, future=future,
                                outcome=outcome, request=req, result=result, started=started,
                                submitted=time.perf_counter(),
                                rx=_wall_ms(req.at) if req.session == IOT_SESSION else 0))

    def _ack(self, req: Ack) -> None:
        txn = SessionTxn(self.sessions, req.session, self.ctx.limits)
        txn.ack(req.session, req.seq)
        before = self.sessions.get(req.session)
        queued = len(before.queue) if before is not None else 0
        change, _ = self._apply(txn, self.state_blob, initialized=False)
        after = self.sessions.get(req.session)
        self.ctx.metrics.notes_acked += max(0, queued - (len(after.queue) if after is not None else 0))
        if not change.empty():
            faults.hit("in_ack")
            self.ctx.commit(Pending(owner=self, epoch=self.epoch, change=change, lazy=True))

    def _sync(self, req: Sync) -> None:
        txn = self._begin(req.session, req.codec)
        txn.ack(req.session, req.seq)
        change, _ = self._apply(txn, self.state_blob, initialized=False)
        data = self.sessions[req.session]
        sends = [(req.session, codec.encode(sync_answer(data.first_seq, data.next_seq), data.codec))]
        sends.extend(
            (req.session, encode_note(seq, args, data.codec)) for seq, args in data.queue if seq > req.seq
        )
        # with nothing to write, a cluster still sends an empty change through the ownership fence: the answer
        # must come from the CA's owner (a stale copy's first/next would make the device rewind)
        fenced = change if not change.empty() or self.ctx.fenced else None
        self.ctx.commit(Pending(owner=self, epoch=self.epoch, change=fenced, sends=sends, notes=len(sends) - 1,
                                request=req))

    async def _presence(self, req: Presence) -> None:
        """Record a session's presence; on a change, run on_presence in the same transaction. A failing hook is
        rolled back, but the presence change still commits."""
        ready = await self._ready()
        epoch = self.epoch
        old = self.sessions.get(req.session)
        changed = (old is not None and old.online) != req.online
        txn = self._presence_txn(req, changed)
        blob = self.state_blob
        if changed:
            self.ctx.metrics.presence_changes += 1
        if changed and ready:
            try:
                await self._run(self.ca.on_presence, (req.session, req.online))
                blob = codec.dumps(self.ca.state)
                if self.dtxn is not None:
                    self.dtxn.settle(self._committed_device(), self.ctx.device.map_max)
            except Exception:
                log.exception("CA %s: on_presence(%s, %s) failed; rolled back", self.name, req.session, req.online)
                self._rollback()
                txn = self._presence_txn(req, changed)
                blob = self.state_blob
        change, sends = self._apply(txn, blob, initialized=ready)
        notes = len(sends)
        if self.dtxn is not None:
            self._commit_device(change, sends)
        if not change.empty() or sends:
            self.ctx.commit(Pending(owner=self, epoch=epoch, change=change, sends=sends, notes=notes))

    # -- the device layer (bridge.device) --------------------------------------------------------------------

    def _open_device(self) -> DeviceAPI:
        """``self.device`` of the running transaction: its working copy, made on first use."""
        api = self.dapi
        if api is None:
            record = self.dtxn
            if record is None:
                record = self.dtxn = DeviceRecord.decode(self.dev_blob) if self.dev_blob else DeviceRecord()
            api = self.dapi = DeviceAPI(record, self.ctx.device, self._iot_online)
        return api

    def _iot_online(self) -> bool:
        data = self.sessions.get(IOT_SESSION)
        return data is not None and data.online

    def _committed_device(self) -> DeviceRecord | None:
        if self.dev is None and self.dev_blob:
            self.dev = DeviceRecord.decode(self.dev_blob)
        return self.dev

    def _commit_device(self, change: Change, sends: list[tuple[str, bytes]] | None) -> None:
        """Make the transaction's device copy (settled) the committed one, and write it if it changed. With
        ``sends``: a poke is added if the device has something new to fetch and is there to hear it."""
        record = self.dtxn
        assert record is not None
        self.dtxn = self.dapi = None
        blob = record.encode()
        if blob == self.dev_blob:
            return
        before = self._committed_device()
        change.device = blob
        self.dev_blob, self.dev = blob, record
        sent = record.next_index - (before.next_index if before is not None else 1)
        if sent > 0:
            self.ctx.metrics.bundles_sent += sent
        if sends is None or not (self.dev_started or self._iot_online()):
            return
        news = record.fv != (before.fv if before is not None else 0)
        if not news:
            old = {b.index for b in before.to_deliver()} if before is not None else set()
            news = any(b.index not in old for b in record.to_deliver())
        if news:
            data = self.sessions.get(IOT_SESSION)
            sends.append((IOT_SESSION, encode_poke(data.codec if data is not None else codec.CBOR)))

    async def _device_hook(self, req: DStart | DSync, fn: Any, args: tuple[Any, ...]) -> tuple[SessionTxn, bytes]:
        """Run a device hook in the transaction holding the device's own change (the working copy): if it
        raises, only its effects roll back (the device's change stays), and the error is logged and counted."""
        assert self.dtxn is not None
        kept = self.dtxn.encode()
        txn = self._begin(req.session, req.codec)
        try:
            await self._run(fn, args)
            blob = codec.dumps(self.ca.state)
            self.dtxn.settle(self._committed_device(), self.ctx.device.map_max)
            return txn, blob
        except Exception:
            self.ctx.metrics.device_hook_errors += 1
            log.exception("CA %s: %s failed; its effects rolled back, the device's change kept", self.name,
                          getattr(fn, "__name__", "hook"))
            self._rollback()
            self.dtxn = DeviceRecord.decode(kept)
            return self._begin(req.session, req.codec), self.state_blob

    def _device_reply(self, req: DStart | DSync, future: asyncio.Future[Any] | None, epoch: int,
                      change: Change | None, sends: list[tuple[str, bytes]], reply: dict[str, Any]) -> None:
        payload = codec.encode(reply, req.codec)
        notes = len(sends)
        sends.insert(0, (req.session, payload))
        if change is not None and change.empty() and not self.ctx.fenced:
            change = None
        self.ctx.commit(Pending(owner=self, epoch=epoch, change=change, sends=sends, notes=notes, future=future,
                                outcome=payload, request=req, rx=_wall_ms(req.at)))

    async def _dstart(self, req: DStart, future: asyncio.Future[Any] | None) -> None:
        """The device (re)started: record its commands; on a new start bump the boot and run on_device_resume.
        Answer with both maps and the bundles to run."""
        epoch = self.epoch
        self._open_device()
        assert self.dtxn is not None
        fresh = apply_dstart(self.dtxn, req)
        self.dev_started = True
        if fresh:
            txn, blob = await self._device_hook(req, self.ca.on_device_resume, ())
        else:
            txn, blob = self._begin(req.session, req.codec), self.state_blob
        change, sends = self._apply(txn, blob)
        self._commit_device(change, None)
        record = self._committed_device() or DeviceRecord()
        self._device_reply(req, future, epoch, change, sends, reply_ok(req.id, dstart_answer(record)))

    async def _dsync(self, req: DSync, future: asyncio.Future[Any] | None) -> None:
        """A device's sync: its to_cloud delta, acks, done commands and results; on_device_sync if to_cloud
        changed. Answer with what the device lacks."""
        epoch = self.epoch
        metrics = self.ctx.metrics
        metrics.device_syncs += 1
        committed = self._committed_device()
        if committed is None or committed.cmds is None or req.boot != committed.boot:
            self._device_reply(req, future, epoch, None, [], reply_err(req.id, STALE_BOOT))
            return
        self._open_device()
        assert self.dtxn is not None
        try:
            out = apply_dsync(self.dtxn, req, self.ctx.device.map_max)
        except CodecError as exc:
            self.dtxn = self.dapi = None
            self._device_reply(req, future, epoch, None, [],
                               reply_err(req.id, error_body("bad_request", "DeviceMapTooBig", str(exc))))
            return
        if out.delta:
            metrics.device_deltas += 1
        if out.resync:
            metrics.device_resyncs += 1
        for ok in out.finished:
            if ok:
                metrics.bundles_run += 1
            else:
                metrics.bundles_late += 1
        if out.changed:
            txn, blob = await self._device_hook(req, self.ca.on_device_sync, (set(out.changed),))
        else:
            txn, blob = self._begin(req.session, req.codec), self.state_blob
        change, sends = self._apply(txn, blob)
        self._commit_device(change, None)
        record = self._committed_device() or DeviceRecord()
        self._device_reply(req, future, epoch, change, sends, reply_ok(req.id, dsync_answer(record, req, out.resync)))

    def _presence_txn(self, req: Presence, changed: bool) -> SessionTxn:
        """A transaction in ``req.session`` (created if new, like a call's) that already holds the new presence."""
        txn = self._begin(req.session, req.codec)
        data = txn.write(req.session)
        data.online = req.online
        if changed:
            data.presence_at = asyncio.get_running_loop().time()
        return txn

    def _apply(
        self, txn: SessionTxn, blob: bytes, *, initialized: bool = True
    ) -> tuple[Change, list[tuple[str, bytes]]]:
        """Make a successful call's effects the committed in-memory view; return the store change and the sends.

        ``initialized``: the CA's on_init (or on_resume) has run, so its state is real and is written even when
        unchanged. An ack or sync that reaches a CA before its first call passes False: writing the empty state
        then would make the CA look initialized, and on_init would never run.
        """
        change = Change(self.name, epoch=self.owned_epoch)
        if blob != self.state_blob or (initialized and not self.durable):
            change.state = blob
            self.state_blob = blob
            self.durable = True
        sends: list[tuple[str, bytes]] = []
        for sid in txn.deleted:
            if self.sessions.pop(sid, None) is not None:
                change.sessions[sid] = SessionWrite(purge=True)
        for sid, data in txn.working.items():
            old = self.sessions.get(sid)
            write = SessionWrite()
            if old is None:
                write.purge = sid in txn.deleted
                write.meta = codec.dumps(data.meta())
                data.stored_seq = data.next_seq
                new_notes = list(data.queue)
            else:
                if data.row_due(old):  # not for a notification alone: its note carries next_seq (SessionData)
                    write.meta = codec.dumps(data.meta())
                    data.stored_seq = data.next_seq
                # the queue's seqs are contiguous up to next_seq - 1: the new notes are its tail (what trim left)
                fresh = min(data.next_seq - old.next_seq, len(data.queue))
                new_notes = data.queue[-fresh:] if fresh > 0 else []
                if data.first_seq > old.first_seq:
                    write.note_floor = data.first_seq
            write.notes = new_notes
            if new_notes:
                note_codec = data.codec
                sends.extend((sid, encode_note(seq, args, note_codec)) for seq, args in new_notes)
            self.sessions[sid] = data
            if write.meta is not None or write.notes or write.note_floor or write.purge:
                change.sessions[sid] = write
        for sid in txn.deleted:
            if sid not in self.sessions:  # collected: its records stay while they are among the CA's last ones
                self._trim(sid, change)
                lag = self.dedup_lag.pop(sid, None)
                if lag is not None and change.dedup_floors.get(sid, 0) < lag[1]:
                    change.dedup_floors[sid] = lag[1]  # no floor left unwritten for a session that is gone
        return change, sends

    def _record(self, sid: str, rid: str, payload: bytes, change: Change) -> None:
        """Remember a call's reply for dedup, in the same change as its effects. A record is kept while it is among
        the last ``dedup_window`` of its session (if the session exists) or among the CA's last (CA_WINDOW times as
        many), so no load on the CA's other sessions can push out a session's recent calls."""
        self.dedup_pos = pos = self.dedup_pos + 1
        self.dedup[(sid, rid)] = (pos, payload)
        change.dedup.append((pos, sid, rid, payload))
        kept = self.dedup_sessions.get(sid)
        if kept is None:
            self.dedup_sessions[sid] = [(pos, rid)]
        else:
            kept.append((pos, rid))
        recent = self.dedup_recent
        recent.append((pos, sid))
        window = self.ctx.limits.dedup_window
        full = len(recent) > CA_WINDOW * (window if window > 1 else 1)
        left = recent.popleft()[1] if full else sid  # no longer among the CA's last records
        self._trim(sid, change)
        if left != sid:
            self._trim(left, change)

    def _trim(self, sid: str, change: Change | None) -> None:
        """Drop the records of ``sid`` that neither its session's window nor the CA's window holds.

        Memory drops them at once. The store deletes them with the floor written into ``change`` (None: nothing to
        write, as when loading): for a live session only once the floor has moved by its window since the store's
        floor, which saves a DELETE on most calls; the few records left below it are dropped again, by this same
        rule, when the CA is loaded (reset). A session that is gone gets its floor at once.
        """
        kept = self.dedup_sessions.get(sid)
        if not kept:
            return
        floor = self.dedup_recent[0][0] if self.dedup_recent else self.dedup_pos + 1  # below: outside the CA window
        if sid in self.sessions:
            window = self.ctx.limits.dedup_window
            window = window if window > 1 else 1
            if len(kept) < window:
                return  # the session's window holds them all
            if kept[-window][0] < floor:
                floor = kept[-window][0]
        if kept[0][0] >= floor:
            return  # the usual case with room in the windows: nothing to drop
        drop = 1
        while drop < len(kept) and kept[drop][0] < floor:
            drop += 1
        self._forget(sid, kept[:drop])
        if drop == len(kept):
            del self.dedup_sessions[sid]
        else:
            del kept[:drop]
        if change is None:
            return
        if sid in self.sessions:
            window = self.ctx.limits.dedup_window
            stored = self.dedup_lag.get(sid, (0, 0))[0]  # 0 after a load: the first trim catches up
            if floor - stored < (window if window > 1 else 1):
                self.dedup_lag[sid] = (stored, floor)
                return
            self.dedup_lag[sid] = (floor, floor)
        else:
            self.dedup_lag.pop(sid, None)  # gone: everything below the CA's floor goes now (this floor covers it)
        floors = change.dedup_floors
        if floors.get(sid, 0) < floor:
            floors[sid] = floor

    def _forget(self, sid: str, records: list[tuple[int, str]]) -> None:
        for pos, rid in records:
            if self.dedup.get((sid, rid), (0, b""))[0] == pos:  # not an older record of an id that ran again
                del self.dedup[(sid, rid)]

    def _dedup_hit(self, req: Call) -> bytes | None:
        hit = self.dedup.get((req.session, req.id))
        return None if hit is None else hit[1]
