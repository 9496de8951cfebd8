"""The bridge service: store + runtime + MQTT link (+ the embedded broker), as one async context manager.

The MQTT link is an adapter: what it receives goes to the one ingress (bridge.ingress), and the service is the
runtime's sink, publishing what the runtime sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import ssl
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridge.app import CA
from bridge.device import DeviceLimits
from bridge.broker import EmbeddedBroker, load_config
from bridge.cluster import Cluster
from bridge.errors import ConfigError
from bridge.http import Handler, HttpServer
from bridge.http import Request as HttpRequest
from bridge.http import Response as HttpResponse
from bridge.metrics import Metrics, exposition
from bridge.mqtt import BrokerURL, MqttLink, prefixed
from bridge.ingress import Ingress
from bridge.protocol import Topics, valid_name
from bridge.runtime import Runtime
from bridge.session import SessionLimits
from bridge.store import Store, is_postgres_url, membership_for, open_store

__all__ = ["Bridge", "Settings"]

log = logging.getLogger("bridge")

SESSION_TOPICS = 16384  # session topics kept encoded for send(); all forgotten at once when full


@contextmanager
def _cannot_listen(option: str, address: tuple[str, int]) -> Iterator[None]:
    """An HTTP server that cannot bind is one line naming its option, like the embedded broker's port."""
    try:
        yield
    except OSError as exc:
        where = f"{address[0]}:{address[1]}"
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{option} cannot listen on {where}: address already in use (by scripts/run or "
                              f"another ca-bridge?); stop it first, or pass another {option.split()[0]} "
                              "HOST:PORT") from None
        raise ConfigError(f"{option} cannot listen on {where}: {exc.strerror or exc}") from None


@dataclass(slots=True)
class Settings:
    """Everything `ca-bridge run` can set."""

    db: Path | str = Path("bridge.db")  # a SQLite file, or postgresql://... (several bridges may share it)
    broker: str | None = None  # None: run the embedded broker on ``listen``
    listen: tuple[str, int] = ("127.0.0.1", 1883)
    broker_config: Path | None = None
    prefix: str = "ca"
    pulse: float | None = 2.0
    max_payload: int = 65536
    mailbox: int = 256
    max_resident: int = 10_000  # idle CAs beyond this many in memory are evicted (LRU); 0: no bound
    call_timeout: float = 30.0
    synchronous: str = "FULL"
    client_id: str | None = None
    limits: SessionLimits = field(default_factory=SessionLimits)
    autocreate: bool = True  # False: only CAs made with `ca-bridge create` (or already in the store) exist
    rate: float = 0.0  # calls per second per CA (0: unlimited); beyond it calls answer busy/RateLimited
    burst: int = 20
    auth: Path | None = None  # auth directory (bridge.auth): embedded broker auth + ACL, the bridge's own credentials
    ca_file: Path | None = None  # CA certificate to verify the broker's TLS certificate
    tls_cert: Path | None = None  # embedded broker: add a TLS listener with this certificate chain ...
    tls_key: Path | None = None  # ... and this private key
    tls_listen: tuple[str, int] = ("127.0.0.1", 8883)
    node: str | None = None  # PostgreSQL: this bridge's name in the cluster (default host-pid)
    share_group: str | None = "ca-bridge"  # PostgreSQL + external broker: $share group (None: plain subscription)
    node_ttl: float = 5.0  # PostgreSQL: a bridge silent this long is presumed dead and its CAs are taken over
    db_pool: int = 4  # PostgreSQL connections per bridge
    metrics: tuple[str, int] | None = None  # serve Prometheus metrics at http://HOST:PORT/metrics
    http: tuple[str, int] | None = None  # serve the dashboard
    http_token: str | None = None  # the dashboard's token (with auth on and none given: DIR/dashboard.token)
    device: DeviceLimits = field(default_factory=DeviceLimits)  # --bundle-margin, --device-map-max, --max-bundles


class Bridge:
    """Runs a CA class behind MQTT. ``async with Bridge(App, settings) as b: await b.serve_forever()``."""

    def __init__(self, app: type[CA], settings: Settings | None = None) -> None:
        self.app = app
        self.settings = s = settings or Settings()
        self.topics = Topics(s.prefix)
        self.metrics = Metrics()  # this process's counters, handed to every part that counts
        self.cluster: Cluster | None = None
        if is_postgres_url(s.db) and s.node is not None and not valid_name(s.node):
            raise ConfigError(f"invalid node name {s.node!r}: use letters, digits, '_', '.', '-'")
        self.store: Store = open_store(s.db, synchronous=s.synchronous, pool_size=s.db_pool,
                                       application_name=f"ca-bridge {s.node or ''}".strip())
        membership = membership_for(self.store)  # a store several bridges share: this one joins their cluster
        if membership is not None:
            self.cluster = Cluster(membership, s.node, ttl=s.node_ttl, heartbeat=min(1.0, s.node_ttl / 4),
                                   metrics=self.metrics)
        self.runtime = Runtime(
            app, self.store, self, limits=s.limits, mailbox=s.mailbox, pulse=s.pulse, call_timeout=s.call_timeout,
            autocreate=s.autocreate, rate=s.rate, burst=s.burst, cluster=self.cluster, metrics=self.metrics,
            max_resident=s.max_resident, device=s.device,
        )
        self.ingress = Ingress(self.runtime, self.topics, s.max_payload)
        self.broker_url = BrokerURL.parse(s.broker) if s.broker else BrokerURL(*s.listen)
        self.link: MqttLink | None = None
        self._session_topics: dict[tuple[str, str], bytes] = {}  # (CA, session) -> its topic, as send() publishes it
        self.metrics_server: HttpServer | None = None
        self.dashboard: Any = None
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Bridge:
        s = self.settings
        try:
            await self.store.open()
            self._stack.push_async_callback(self.store.close)
            await self.runtime.bind_app()  # another app's store: refused before anything starts
            if s.auth is not None and self.broker_url.username is None:
                from bridge.auth import AuthStore

                creds = AuthStore(s.auth).bridge_credentials()  # never logged
                self.broker_url = dataclasses.replace(
                    self.broker_url, username=creds.username, password=creds.password)
            await self._serve_http()  # before the broker: a busy port fails while nothing else runs yet
            if s.broker is None:
                tls = (s.tls_cert, s.tls_key, *s.tls_listen) if s.tls_cert and s.tls_key else None
                await self._stack.enter_async_context(EmbeddedBroker(
                    s.listen[0], s.listen[1], load_config(s.broker_config),
                    password_file=s.auth / "amqtt.passwd" if s.auth is not None else None, prefix=s.prefix, tls=tls))
            await self._stack.enter_async_context(self.runtime)
            client_id = s.client_id or f"ca-bridge-{s.prefix.replace('/', '-')}"
            subscriptions = [(self.topics.inbound_filter, 1)]
            if self.cluster is not None:
                client_id = s.client_id or f"{client_id}-{self.cluster.node}"
                if s.broker is not None and s.share_group:  # the embedded amqtt has no $share
                    subscriptions = [(self.topics.shared_inbound_filter(s.share_group), 1)]
                subscriptions.append((self.topics.forward_filter(self.cluster.node), 1))
            self.link = MqttLink(
                self.broker_url, client_id=client_id, on_message=self.ingress.receive,
                subscriptions=subscriptions, tls_context=self._tls_context(), clean_session=self.cluster is not None,
                metrics=self.metrics,
            )
            await self._stack.enter_async_context(self.link)
            self._stack.push_async_callback(self.runtime.aclose)  # drain before the link goes
            if self.cluster is not None:  # ... and first stop taking new requests, so the others get them
                self._stack.callback(self.link.unsubscribe, subscriptions[0][0])
            if not await self.link.wait_connected(10):
                log.warning("not connected to the broker yet; the bridge keeps trying")
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stack.aclose()

    async def _serve_http(self) -> None:
        """The metrics endpoint and the dashboard, when asked for (on one port if both name the same one)."""
        s = self.settings
        if s.metrics is not None and s.metrics != s.http:
            with _cannot_listen("--metrics", s.metrics):
                self.metrics_server = await self._stack.enter_async_context(
                    HttpServer(*s.metrics, {"/metrics": self._metrics_page}, metrics=self.metrics))
        if s.http is not None:
            from bridge.dashboard import Dashboard

            token = s.http_token
            if token is None and s.auth is not None:
                from bridge.auth import AuthStore

                token = AuthStore(s.auth).dashboard_token()
            routes: dict[str, Handler] = {"/metrics": self._metrics_page} if s.metrics == s.http else {}
            with _cannot_listen("--http" if s.metrics != s.http else "--http and --metrics", s.http):
                self.dashboard = await self._stack.enter_async_context(
                    Dashboard(self, *s.http, token=token, extra=routes))

    def _metrics_page(self, _request: HttpRequest) -> HttpResponse:
        cluster = self.cluster
        body = exposition(self.metrics, gauges=self.runtime.snapshot_counts,
                          connected=lambda: self.link is not None and self.link.connected.is_set(),
                          cluster_nodes=(lambda: len(cluster.live)) if cluster is not None else None)
        return HttpResponse(body, "text/plain; version=0.0.4; charset=utf-8")

    def _tls_context(self) -> ssl.SSLContext | None:
        """A verifying client context for mqtts:// (with --ca-file as the trust anchor when given)."""
        if not self.broker_url.tls:
            return None
        ca_file = self.settings.ca_file
        try:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file is not None else None)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the CA certificate {ca_file}: {exc}") from None

    # -- the Sink the runtime publishes through ------------------------------------------------------------

    def send(self, ca: str, session: str, payload: bytes) -> None:
        """Publish one durable message to a session topic."""
        topic = self._session_topics.get((ca, session))
        if topic is None:
            topic = self._session_topic(ca, session)
        self.link.publish(topic, payload)  # type: ignore[union-attr]  # set while the runtime runs

    def _session_topic(self, ca: str, session: str) -> bytes:
        """A session's topic as the link takes it (encoded, length-prefixed), made once and kept (bounded)."""
        topics = self._session_topics
        if len(topics) >= SESSION_TOPICS:
            topics.clear()
        topic = topics[(ca, session)] = prefixed(self.topics.session(ca, session).encode())
        return topic

    def end_batch(self) -> None:
        """A committed batch is sent: write it to the broker now, in one write with the acknowledgements held."""
        if self.link is not None:
            self.link.write_now()

    def send_error(self, ca: str, payload: bytes) -> None:
        """Publish one error message that names no usable session to the CA's errors topic."""
        assert self.link is not None
        self.link.publish(self.topics.errors(ca), payload)

    def forward(self, node: str, ca: str, payload: bytes, hops: int = 1) -> None:
        """Hand a raw request to the bridge that owns its CA."""
        assert self.link is not None and self.cluster is not None
        self.metrics.forwarded += 1
        self.link.publish(self.topics.forward(node, ca, hops), payload)

    def _on_message(self, topic: str, payload: bytes) -> None:
        """What the MQTT link receives (the link calls the ingress directly; this is for tests and tools)."""
        self.ingress.receive(topic, payload)

    async def serve_forever(self) -> None:
        """Run until cancelled."""
        await asyncio.Event().wait()
