"""The read-only web dashboard (``--http HOST:PORT``): one static page and a small JSON API.

Routes:

- ``/``: the page (``dashboard.html`` next to this module, as :data:`PAGE`: inline CSS and JS, no framework, no
  external fetches). It holds no data, so it is served without the token; it reads ``?token=`` once and sends it
  on every API call.
- ``/api/overview[?q=TEXT]``: bridge facts, totals, gauges, the rate history for the charts, per-method and
  per-stage latencies (p50/p99), recent errors, and the loaded CAs (most recently active first, at most
  :data:`MAX_CAS`, filtered by name with ``q``).
- ``/api/ca/<name>``: one loaded CA: its committed state, sessions, pending notifications and recent calls.

Handlers run on the event loop and read the runtime directly, so every list is capped and every value
clipped: a CA's state is device-controlled data of any size. The dashboard also owns the once-a-second
sampler that feeds :meth:`bridge.metrics.Metrics.rates`.

What it reads of the bridge is :class:`BridgeView` (defined here; the service's Bridge satisfies it and hands
itself in), so this module never imports the service or the runtime.
"""

from __future__ import annotations

import asyncio
from importlib import resources
import contextlib
import heapq
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from bridge import codec
from bridge.device import device_view
from bridge.http import Handler, HttpServer, Request, Response
from bridge.inspect import session_view
from bridge.store import is_postgres_url, redact_url

if TYPE_CHECKING:
    from collections.abc import Mapping

    from bridge.actor import Actor
    from bridge.app import CA
    from bridge.metrics import Metrics, StageHistogram
    from bridge.mqtt import BrokerURL

__all__ = ["PAGE", "BridgeView", "Dashboard", "ca_detail", "clip", "overview"]

SAMPLE_INTERVAL = 1.0  # seconds between two Metrics.sample() calls
MAX_CAS = 200  # CAs listed by /api/overview
MAX_QUERY = 100  # longest ?q= filter
RATE_POINTS = 300  # rate samples sent for the charts (5 minutes)
MAX_ERRORS = 20  # recent errors in the overview
MAX_METHODS = 20  # per-method rows in the overview
MAX_SESSIONS = 100  # sessions listed by /api/ca/<name>
MAX_PENDING = 100  # pending notifications listed by /api/ca/<name>, all sessions together
MAX_STATE_BYTES = 1 << 20  # a larger committed state is not decoded at all
CLIP_NODES = 5000  # values kept from one decoded state (maps, lists and scalars each count one)
CLIP_ITEMS = 200  # entries kept from one map or list
CLIP_TEXT = 2000  # characters kept from one string (bytes: CLIP_TEXT // 2)
CLIP_DEPTH = 16  # nesting kept

JSON_TYPE = "application/json; charset=utf-8"
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


# -- what the dashboard reads of a bridge ------------------------------------------------------------------------


class RuntimeView(Protocol):
    """The runtime's loaded CAs, its counters and its gauges."""

    @property
    def actors(self) -> Mapping[str, Actor]: ...
    @property
    def metrics(self) -> Metrics: ...
    def snapshot_counts(self) -> dict[str, int]: ...


class SettingsView(Protocol):
    """The settings the header shows: where the store is, and whether the broker is embedded (None)."""

    @property
    def db(self) -> Path | str: ...
    @property
    def broker(self) -> str | None: ...


class LinkView(Protocol):
    """The MQTT link's state."""

    @property
    def connected(self) -> asyncio.Event: ...


class ClusterView(Protocol):
    """This bridge's cluster membership."""

    @property
    def node(self) -> str: ...
    @property
    def live(self) -> Mapping[str, str]: ...
    @property
    def healthy(self) -> bool: ...


class BridgeView(Protocol):
    """Everything the dashboard reads of a running bridge (bridge.service.Bridge is one)."""

    @property
    def app(self) -> type[CA]: ...
    @property
    def runtime(self) -> RuntimeView: ...
    @property
    def settings(self) -> SettingsView: ...
    @property
    def broker_url(self) -> BrokerURL: ...
    @property
    def link(self) -> LinkView | None: ...
    @property
    def cluster(self) -> ClusterView | None: ...


class Dashboard:
    """``async with Dashboard(bridge, host, port, token=...)``: the dashboard's HTTP server and its sampler.

    ``extra`` adds routes to the same server (``/metrics`` when ``--metrics`` names the same address); they need
    the token like the API does.
    """

    def __init__(self, bridge: BridgeView, host: str, port: int, *, token: str | None = None,
                 extra: dict[str, Handler] | None = None) -> None:
        self.bridge = bridge
        routes: dict[str, Handler] = dict(extra or {})
        routes.update({"/": self._page, "/api/overview": self._overview, "/api/ca/": self._ca})
        self.server = HttpServer(host, port, routes, token=token, public=frozenset({"/"}),
                                 metrics=bridge.runtime.metrics)
        self._page_body = PAGE.encode()
        self._sampler: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Dashboard:
        await self.server.__aenter__()
        self._sampler = asyncio.create_task(self._sample_loop(), name="dashboard.sample_loop")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        await self.server.__aexit__(*exc)

    async def _sample_loop(self) -> None:
        metrics = self.bridge.runtime.metrics
        while True:
            metrics.sample()
            await asyncio.sleep(SAMPLE_INTERVAL)

    # -- routes -------------------------------------------------------------------------------------------------

    def _page(self, request: Request) -> Response:
        if request.path != "/":  # "/" is also the prefix route of every unknown path
            return Response(b"not found\n", status=404)
        return Response(self._page_body, "text/html; charset=utf-8", headers=dict(PAGE_HEADERS))

    def _overview(self, request: Request) -> Response:
        return _json(overview(self.bridge, request.query.get("q", "")))

    def _ca(self, request: Request) -> Response:
        name = request.path.removeprefix("/api/ca/")
        actor = self.bridge.runtime.actors.get(name)
        if actor is None:
            return _json({"error": "not_found", "message": f"no CA named {name[:200]!r} is loaded"}, 404)
        return _json(ca_detail(self.bridge, actor))


# -- the API's documents ------------------------------------------------------------------------------------------


def overview(bridge: BridgeView, query: str = "") -> dict[str, Any]:
    """What ``/api/overview`` returns. Its CAs are the resident ones (``runtime.actors``): a CA not asked for since
    start, or evicted (bridge.runtime), is listed again once a request loads it."""
    rt = bridge.runtime
    m = rt.metrics
    now = time.time()
    calls, errors = m.totals()
    query = query.strip()[:MAX_QUERY]
    needle = query.lower()
    matched = [a for a in rt.actors.values() if needle in a.name.lower()] if needle else list(rt.actors.values())
    shown = heapq.nsmallest(MAX_CAS, matched, key=lambda a: (-a.last_active, a.name))
    return {
        "app": bridge.app.__name__,
        "now": now,
        "started": m.started,
        "uptime": now - m.started,
        "store": _store_facts(bridge),
        "broker": _broker_facts(bridge),
        "cluster": _cluster_facts(bridge, m),
        "totals": {
            "calls": calls, "errors": errors, "rejected": sum(m.rejected.values()),
            "notes_published": m.notes_published, "notes_acked": m.notes_acked, "dedup_hits": m.dedup_hits,
            "commits": m.commit_batch.count, "commit_failures": m.commit_failures,
            "presence_changes": m.presence_changes, "mqtt_connects": m.mqtt_connects, "mqtt_dropped": m.mqtt_dropped,
            "mqtt_oversized": m.mqtt_oversized, "dropped_topics": m.dropped_topics, "http_requests": m.http_requests,
            "cas_loads": m.cas_loaded, "cas_evicted": m.cas_evicted,
            "device_syncs": m.device_syncs, "device_deltas": m.device_deltas, "device_resyncs": m.device_resyncs,
            "bundles_sent": m.bundles_sent, "bundles_run": m.bundles_run, "bundles_late": m.bundles_late,
            "device_hook_errors": m.device_hook_errors,
        },
        "gauges": rt.snapshot_counts(),
        "rejected": dict(sorted(m.rejected.items())),
        "methods": _methods(m.calls, m.latency),
        "stages": _stages(m.stages),
        "rates": [[t, _num(c), _num(e)] for t, c, e in m.rates()[-RATE_POINTS:]],
        "errors": [_error_row(e) for e in reversed(list(m.recent_errors)[-MAX_ERRORS:])],
        "query": query,
        "cas_total": len(rt.actors),
        "cas_matched": len(matched),
        "cas": [_ca_row(a) for a in shown],
    }


def ca_detail(bridge: BridgeView, actor: Actor) -> dict[str, Any]:
    """What ``/api/ca/<name>`` returns for one loaded CA."""
    state, truncated = _state(actor.state_blob)
    sessions = list(actor.sessions.items())
    pending: list[dict[str, Any]] = []
    for sid, data in sessions:
        for seq, args in data.queue[: MAX_PENDING - len(pending)]:
            pending.append({"session": sid, "seq": seq, "args": _decoded(args)})
    return {
        "name": actor.name,
        "now": time.time(),
        "state": state,
        "state_bytes": len(actor.state_blob),
        "state_truncated": truncated,
        "running": actor.running,
        "mailbox": len(actor.mailbox),
        "last_active": actor.last_active,
        "sessions_total": len(sessions),
        "sessions": [_session_row(sid, data) for sid, data in sessions[:MAX_SESSIONS]],
        "pending_total": sum(len(data.queue) for _, data in sessions),
        "pending": pending,
        "recent": [
            {"time": t, "session": sid, "id": rid, "method": method, "outcome": outcome, "seconds": _num(seconds)}
            for t, sid, rid, method, outcome, seconds in reversed(actor.recent)
        ],
        "errors": [_error_row(e) for e in reversed(bridge.runtime.metrics.recent_errors) if e[1] == actor.name],
        "device": _device(actor.dev_blob),
    }


def _device(blob: bytes | None) -> dict[str, Any] | None:
    view = device_view(blob)
    if view is not None:
        for key in ("to_cloud", "from_cloud"):
            view[key], _ = clip(view[key], nodes=400)
        if view["pending"] is not None:
            view["pending"]["commands"], _ = clip(view["pending"]["commands"], nodes=200)
    return view


def _ca_row(actor: Actor) -> dict[str, Any]:
    sessions = actor.sessions.values()
    return {
        "name": actor.name,
        "sessions": len(sessions),
        "online": sum(1 for d in sessions if getattr(d, "online", False)),
        "queued": sum(len(d.queue) for d in sessions),
        "mailbox": len(actor.mailbox),
        "running": actor.running,
        "last_active": actor.last_active,
    }


def _session_row(sid: str, data: Any) -> dict[str, Any]:
    memento, _ = clip(data.memento, nodes=200) if data.memento is not None else (None, False)
    return {"id": sid, **session_view(data, data.queue), "memento": memento}


def _error_row(error: tuple[float, str, str, str, str]) -> dict[str, Any]:
    t, ca, method, kind, name = error
    return {"time": t, "ca": ca, "method": method, "kind": kind, "name": name}


def _methods(calls: dict[tuple[str, str], int], latency: dict[str, Any]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for (method, outcome), n in calls.items():
        row = rows.setdefault(method, {"method": method, "calls": 0, "errors": 0})
        row["calls"] += n
        if outcome != "ok":
            row["errors"] += n
    top = sorted(rows.values(), key=lambda r: (-r["calls"], r["method"]))[:MAX_METHODS]
    for row in top:
        hist = latency.get(row["method"])
        row["p50"] = _num(hist.quantile(0.5)) if hist is not None else None
        row["p99"] = _num(hist.quantile(0.99)) if hist is not None else None
    return top


def _stages(stages: Mapping[str, StageHistogram]) -> list[dict[str, Any]]:
    """Where calls spend their time (bridge.metrics.STAGES, in order): count, mean, and p50/p99 as the upper
    bounds of the histogram buckets they fall in."""
    return [{"stage": name, "count": hist.count, "mean": hist.total / hist.count if hist.count else None,
             "p50": _num(hist.quantile(0.5)), "p99": _num(hist.quantile(0.99))} for name, hist in stages.items()]


def _store_facts(bridge: BridgeView) -> dict[str, str]:
    db = bridge.settings.db
    if is_postgres_url(db):
        return {"kind": "postgresql", "where": redact_url(str(db))}
    return {"kind": "sqlite", "where": str(Path(db))}


def _broker_facts(bridge: BridgeView) -> dict[str, Any]:
    url = bridge.broker_url  # host and port only: never the credentials
    link = bridge.link
    return {"connected": link is not None and link.connected.is_set(), "host": url.host, "port": url.port,
            "tls": url.tls, "embedded": bridge.settings.broker is None}


def _cluster_facts(bridge: BridgeView, m: Metrics) -> dict[str, Any] | None:
    cluster = bridge.cluster
    if cluster is None:
        return None
    return {"node": cluster.node, "live": sorted(set(cluster.live.values())), "forwarded": m.forwarded,
            "claims": m.claims, "healthy": cluster.healthy}


# -- making stored values JSON-safe and small -----------------------------------------------------------------


_last_state: list[Any] = [None, None, False]  # (blob, clipped, truncated): the page asks every second


def _state(blob: bytes) -> tuple[Any, bool]:
    if _last_state[0] is blob:  # committed states are immutable bytes, replaced on every change
        return _last_state[1], bool(_last_state[2])
    if len(blob) > MAX_STATE_BYTES:
        value: Any = {"$truncated": f"the state is {len(blob)} bytes of CBOR: too large to show"}
        truncated = True
    else:
        value, truncated = clip(_loads(blob))
    _last_state[:] = [blob, value, truncated]
    return value, truncated


def _decoded(blob: bytes) -> Any:
    value, _ = clip(_loads(blob), nodes=500)
    return value


def _loads(blob: bytes) -> Any:
    try:
        return codec.loads(blob)
    except Exception as exc:  # stored by this bridge, so never expected; show it rather than fail the page
        return {"$undecodable": f"{type(exc).__name__}: {exc}"[:CLIP_TEXT]}


def clip(value: Any, *, nodes: int = CLIP_NODES, items: int = CLIP_ITEMS, text: int = CLIP_TEXT,
         depth: int = CLIP_DEPTH) -> tuple[Any, bool]:
    """A JSON-safe copy of a decoded value, and whether anything was left out.

    Bytes become ``{"$bytes": hex}`` (as in ``ca-bridge inspect --json``), non-finite floats and unknown types
    their ``repr``; beyond the limits, strings are cut, maps and lists lose their tail (a ``"…"`` entry says how
    much), and deeper values become ``"…"``.
    """
    clipper = _Clipper(nodes, items, text, depth)
    return clipper.copy(value, 0), clipper.truncated


class _Clipper:
    __slots__ = ("depth", "items", "nodes", "text", "truncated")

    def __init__(self, nodes: int, items: int, text: int, depth: int) -> None:
        self.nodes = nodes
        self.items = items
        self.text = text
        self.depth = depth
        self.truncated = False

    def copy(self, value: Any, level: int) -> Any:
        self.nodes -= 1
        if self.nodes < 0 or level > self.depth:
            self.truncated = True
            return "…"
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else repr(value)
        if isinstance(value, str):
            return self._text(value)
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            keep = self.text // 2
            if len(data) > keep:
                self.truncated = True
                return {"$bytes": data[:keep].hex(), "$length": len(data)}
            return {"$bytes": data.hex()}
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                if len(out) >= self.items or self.nodes <= 0:
                    break
                out[self._text(str(k))] = self.copy(v, level + 1)
            if len(value) > len(out):
                self.truncated = True
                out["…"] = f"{len(value) - len(out)} more entries"
            return out
        if isinstance(value, list | tuple):
            seq: list[Any] = []
            for v in value:
                if len(seq) >= self.items or self.nodes <= 0:
                    break
                seq.append(self.copy(v, level + 1))
            if len(value) > len(seq):
                self.truncated = True
                seq.append(f"… {len(value) - len(seq)} more items")
            return seq
        return self._text(repr(value))

    def _text(self, value: str) -> str:
        if len(value) <= self.text:
            return value
        self.truncated = True
        return f"{value[: self.text]}… ({len(value) - self.text} more characters)"


def _num(value: float | None) -> float | None:
    """JSON has no inf or NaN (a histogram's quantile past its last bucket is inf)."""
    return value if value is None or math.isfinite(value) else None


def _json(doc: Any, status: int = 200) -> Response:
    body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    return Response(body, JSON_TYPE, status)


# -- the page ------------------------------------------------------------------------------------------------------
# One static document: inline CSS and JS (no framework, no build, nothing fetched from elsewhere). It polls the
# API every second and builds everything it shows with createElement/textContent (CA data is device data).

PAGE = (resources.files("bridge") / "dashboard.html").read_text(encoding="utf-8")
