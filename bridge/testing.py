"""Unit-test CAs without a broker: the real runtime, store and ingress, with calls made through futures.

Every request is encoded and goes through the same ingress (bridge.ingress) as a device's on MQTT, in memory.

    async with Harness(Shop, db=tmp_path / "t.db") as h:
        assert await h.call("shop1", "default", "buy", nonce, 0, "apple") == {"apple": 1}

A test can act as the CA's device (docs/DEVICES.md): :meth:`Harness.device_start` and :meth:`Harness.device_sync`
send the device messages and return the decoded reply; :meth:`Harness.device` reads the committed device record.
Device options: ``Harness(App, device=DeviceLimits(bundle_margin=..., map_max=..., max_bundles=...))``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

from bridge import codec
from bridge.actor import PULSE
from bridge.app import CA
from bridge.errors import CallError
from bridge.ingress import Ingress
from bridge.device import DeviceRecord
from bridge.protocol import IOT_SESSION, Ack, Call, DStart, DSync, Inbound, Presence, Sync, Topics, check_name
from bridge.runtime import Runtime
from bridge.session import SessionLimits
from bridge.store import Store, open_store

__all__ = ["Harness"]


class _Recorder:
    """A sink that keeps every message sent to each session (and to each CA's errors topic), decoded."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, str], list[Any]] = {}
        self.errors: dict[str, list[Any]] = {}

    def send(self, ca: str, session: str, payload: bytes) -> None:
        self.sent.setdefault((ca, session), []).append(codec.decode(payload, codec.detect(payload)))

    def send_error(self, ca: str, payload: bytes) -> None:
        self.errors.setdefault(ca, []).append(codec.decode(payload, codec.detect(payload)))

    def forward(self, node: str, ca: str, payload: bytes, hops: int = 1) -> None:
        raise AssertionError("a Harness runs one bridge: nothing is ever forwarded")

    def end_batch(self) -> None:
        pass  # everything is kept the moment it is sent


class Harness:
    """Runs a CA class on the real runtime, with SQLite (``db`` path) or an in-memory store (``db=None``).

    Unlike a bridge, it loads every CA at start (so that :meth:`state` and the other accessors see every CA after a
    :meth:`restart`); ``preload=False`` runs lazily as a bridge does (bridge.runtime).
    """

    def __init__(self, app: type[CA], db: str | os.PathLike[str] | None = None, **runtime_options: Any) -> None:
        self.app = app
        self.store: Store = open_store(db)  # None: in memory
        self.options = runtime_options
        self.options.setdefault("limits", SessionLimits())
        self.options.setdefault("preload", True)
        self.sink = _Recorder()
        self.runtime: Runtime | None = None
        self.ingress: Ingress | None = None
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()

    async def __aenter__(self) -> Harness:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the store and load every CA (on_resume runs for each)."""
        await self.store.open()
        self.runtime = await Runtime(self.app, self.store, self.sink, **self.options).__aenter__()
        self.ingress = Ingress(self.runtime, Topics(), max_payload=2**31)
        await self.settle()

    async def stop(self) -> None:
        """Drain and close, as a clean bridge shutdown would."""
        if self.runtime is not None:
            await self.runtime.aclose()
            self.runtime = None
            self.ingress = None
        await self.store.close()

    async def restart(self) -> None:
        """Reload every CA from the store, as a bridge restart would (on_resume runs)."""
        await self.stop()
        await self.start()

    def _rt(self) -> Runtime:
        if self.runtime is None:
            raise RuntimeError("the Harness is not started")
        return self.runtime

    async def settle(self) -> None:
        """Wait until every mailbox is empty and everything is committed."""
        await self._rt().wait_idle()

    async def send(self, ca: str, request: Inbound | bytes) -> Any:
        """Send one request (a bridge.protocol message, or a payload as a device would publish it) through the
        ingress; for calls, return the decoded reply message (for a payload that does not decode, the error)."""
        check_name(ca, "CA name")
        self._rt()
        assert self.ingress is not None
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if isinstance(request, bytes):  # which kind it is (if any) is for the ingress to tell
            self.ingress.receive(ca, request, future)
            await self.settle()
            return future.result() if future.done() else None
        self.ingress.receive(ca, request.encode(), future)
        if not request.replied:
            await self.settle()
            return None
        return await future

    async def call(self, ca: str, session_id: str, method: str, *args: Any, request_id: str | None = None) -> Any:
        """Call a method; return its result or raise the AppError (CallError for other failures)."""
        rid = request_id or f"{self._prefix}-{next(self._ids)}"
        outcome = await self.send(ca, Call(session_id, "cbor", rid, method, list(args)))
        if isinstance(outcome, BaseException):
            raise outcome
        if "ok" in outcome:
            return outcome["ok"]
        err = outcome["err"]
        raise CallError(err["kind"], err["name"], err["message"], err["data"])

    async def ack(self, ca: str, session_id: str, seq: int) -> None:
        """Acknowledge notifications up to ``seq``."""
        await self.send(ca, Ack(session_id, "cbor", seq))

    async def sync(self, ca: str, session_id: str, seq: int = 0) -> list[Any]:
        """Send a sync request; return what the session received for it (the answer, then the notifications)."""
        before = len(self.sink.sent.get((ca, session_id), []))
        await self.send(ca, Sync(session_id, "cbor", seq))
        return self.sink.sent.get((ca, session_id), [])[before:]

    async def presence(self, ca: str, session_id: str, online: bool) -> None:
        """Announce that a session's device came online or went offline (as the firmware client and its MQTT will
        do); on_presence runs if that changes the session's presence. Wait for the commit."""
        await self.send(ca, Presence(session_id, "cbor", online))

    def is_online(self, ca: str, session_id: str) -> bool:
        """The committed presence of a session (False if the CA or the session does not exist)."""
        actor = self._rt().actors.get(ca)
        data = actor.sessions.get(session_id) if actor is not None else None
        return data is not None and data.online

    async def pulse(self, ca: str) -> None:
        """Run one pulse of ``ca`` now and wait for it to commit."""
        actor = self._rt().actors[ca]
        actor.pulse_queued = True
        actor.enqueue(PULSE)
        await self.settle()

    def state(self, ca: str) -> Any:
        """The committed state of ``ca`` (a fresh copy)."""
        return codec.loads(self._rt().actors[ca].state_blob)

    def outq(self, ca: str, session_id: str) -> list[Any]:
        """The pending notifications' args of one session, oldest first."""
        data = self._rt().actors[ca].sessions.get(session_id)
        return [codec.loads(args) for _, args in data.queue] if data else []

    def sessions(self, ca: str) -> list[str]:
        """The session ids of ``ca``."""
        return list(self._rt().actors[ca].sessions)

    # -- acting as the device (session iot) -------------------------------------------------------------------

    async def device_start(self, ca: str, cmds: dict[str, int] | None = None, *,
                           request_id: str | None = None) -> Any:
        """Send ``dstart`` (the device started, announcing ``cmds``: name -> number of arguments); return the
        decoded reply (``{"t": "reply", "id", "ok": {"boot", "tc", "tv", "fc", "fv", "b"}, "rx", "tx"}``). The
        same ``request_id`` again is a re-sent announcement of the same start."""
        rid = request_id or f"{self._prefix}-{next(self._ids)}"
        return await self.send(ca, DStart(IOT_SESSION, "cbor", rid, dict(cmds or {})))

    async def device_sync(
        self, ca: str, d: dict[str, Any] | None = None, x: list[str] | None = None, *, full: bool = False,
        fv: int = 0, boot: int | None = None, tb: int | None = None, tv: int | None = None,
        ba: list[int] | None = None, bd: list[tuple[int, int]] | None = None, br: list[tuple[int, bool]] | None = None,
        request_id: str | None = None,
    ) -> Any:
        """Send ``dsync`` and return the decoded reply. Defaults act as an up-to-date device: ``boot`` the stored
        boot, ``tb`` the stored to_cloud version and ``tv`` = ``tb`` + 1 (for a full map: ``tv`` = ``tb``);
        ``fv`` 0 (so the answer carries the whole from_cloud as changes)."""
        record = self.device(ca) or DeviceRecord()
        base = record.tv if tb is None else tb
        rid = request_id or f"{self._prefix}-{next(self._ids)}"
        req = DSync(IOT_SESSION, "cbor", rid, record.boot if boot is None else boot, fv, base,
                    (base if full else base + 1) if tv is None else tv, dict(d or {}), list(x or []), full,
                    list(ba or []), list(bd or []), list(br or []))
        return await self.send(ca, req)

    def device(self, ca: str) -> DeviceRecord | None:
        """The committed device record of ``ca`` (a fresh copy; None: no device data yet)."""
        actor = self._rt().actors.get(ca)
        blob = actor.dev_blob if actor is not None else None
        return DeviceRecord.decode(blob) if blob else None

    def sent(self, ca: str, session_id: str) -> list[Any]:
        """Every message published to a session so far (replies, notes, sync answers), decoded."""
        return list(self.sink.sent.get((ca, session_id), []))
