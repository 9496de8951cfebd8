"""The bridge's MQTT link: paho-mqtt driven by the asyncio loop. The only module that imports paho.

No network thread: the socket is registered with the event loop, paho reads and writes from loop callbacks, and
``on_message`` runs on the loop, so a request reaches its CA's mailbox without a thread hop. Only the blocking
TCP/TLS connect runs on an executor thread. The link reconnects by itself with exponential backoff and jitter,
re-subscribes, and keeps QoS 1 publishes made while the broker is away (bounded) to send them when it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from bridge.errors import ConfigError

__all__ = ["BrokerURL", "MqttLink"]

log = logging.getLogger("bridge.mqtt")


@dataclass(frozen=True, slots=True)
class BrokerURL:
    """``mqtt://[user[:password]@]host[:port]`` or ``mqtts://...`` (TLS, default port 8883)."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @classmethod
    def parse(cls, url: str) -> BrokerURL:
        """Parse a broker URL; ConfigError if it is not one."""
        parts = urlsplit(url if "://" in url else "mqtt://" + url)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not parts.hostname:
            raise ConfigError(f"not a broker URL: {url!r} (expected mqtt://host:port)")
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"bad port in broker URL {url!r}") from None
        return cls(
            parts.hostname, port, tls,
            unquote(parts.username) if parts.username else None,
            unquote(parts.password) if parts.password else None,
        )


class MqttLink:
    """One MQTT 3.1.1 connection owned by an async context manager."""

    def __init__(
        self,
        url: BrokerURL,
        *,
        client_id: str,
        on_message: Callable[[str, bytes], None],
        subscriptions: list[tuple[str, int]],
        keepalive: int = 30,
        max_queued: int = 100_000,
        max_inflight: int = 1000,
        tls_context: ssl.SSLContext | None = None,
        backoff: tuple[float, float] = (0.25, 30.0),
    ) -> None:
        self.url = url
        self._on_message_cb = on_message
        self._subscriptions = subscriptions
        self._backoff = backoff
        self._keepalive = keepalive
        self.connected = asyncio.Event()
        self.dropped = 0  # publishes refused because too many were queued
        self.connects = 0
        self._unacked = 0
        self._all_acked = asyncio.Event()
        self._all_acked.set()
        self._closing = False
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._writing = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._lost = asyncio.Event()
        c = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False, protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(max_queued)
        if url.username is not None:
            c.username_pw_set(url.username, url.password)
        if url.tls or tls_context is not None:
            c.tls_set_context(tls_context or ssl.create_default_context())
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        self._client = c

    async def __aenter__(self) -> MqttLink:
        self._tasks.append(asyncio.create_task(self._connect_loop(), name="bridge.mqtt.connect"))
        self._tasks.append(asyncio.create_task(self._misc_loop(), name="bridge.mqtt.misc"))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait for the first (or next) connection; False on timeout."""
        try:
            async with asyncio.timeout(timeout):
                await self.connected.wait()
        except TimeoutError:
            return False
        return True

    async def flush(self, timeout: float) -> bool:
        """Wait until every QoS 1 publish is acknowledged by the broker; False on timeout or if disconnected."""
        if not self.connected.is_set():
            return self._unacked == 0
        try:
            async with asyncio.timeout(timeout):
                await self._all_acked.wait()
        except TimeoutError:
            return False
        return True

    async def aclose(self, flush_timeout: float = 2.0) -> None:
        """Flush (bounded), disconnect cleanly and stop the link's tasks."""
        await self.flush(flush_timeout)
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.connected.is_set():
            self._client.disconnect()
        self._client.loop_write()
        self._drop_socket()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish; while disconnected, QoS 1 messages wait (up to max_queued) for the next connection."""
        info = self._client.publish(topic, payload, qos)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("outbound queue full: dropped %d publishes so far (devices recover by retry/sync)",
                            self.dropped)
        elif qos:
            self._unacked += 1
            self._all_acked.clear()

    # -- connection management -----------------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        delay = self._backoff[0]
        first = True
        while True:
            self._lost.clear()
            try:
                if first:
                    await self._loop.run_in_executor(
                        None, self._client.connect, self.url.host, self.url.port, self._keepalive)
                else:
                    await self._loop.run_in_executor(None, self._client.reconnect)
                first = False
                async with asyncio.timeout(10):
                    await self.connected.wait()
                delay = self._backoff[0]
                await self._lost.wait()
            except (OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
                first = first and not isinstance(exc, TimeoutError)
                log.warning("broker %s:%d unreachable (%s); retrying in %.2fs",
                            self.url.host, self.url.port, exc or type(exc).__name__, delay)
                self._drop_socket()
            if self._closing:
                return
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, self._backoff[1])

    async def _misc_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._client.loop_misc()

    def _drop_socket(self) -> None:
        sock = self._client.socket()
        if sock is not None:
            self._unregister(sock)

    # -- paho callbacks (on the loop, except during connect) ------------------------------------------------------

    def _in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _on_connect(self, client: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            log.error("broker refused the connection: %s", rc)
            self._in_loop(self._lost.set)
            return
        self.connects += 1
        self._unacked = len(client._out_messages)  # paho resends these after CONNACK
        if self._unacked == 0:
            self._in_loop(self._all_acked.set)
        for topic, qos in self._subscriptions:
            client.subscribe(topic, qos)
        log.info("connected to broker %s:%d", self.url.host, self.url.port)
        self._in_loop(self.connected.set)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not self._closing:
            log.warning("lost the broker connection (%s); reconnecting", rc)
        self._in_loop(self._disconnected)

    def _disconnected(self) -> None:
        self.connected.clear()
        self._lost.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("dropped a message whose topic is not UTF-8")
            return
        try:
            self._on_message_cb(topic, bytes(msg.payload))
        except Exception:
            log.exception("unexpected failure handling a message on %r", topic[:200])

    def _on_publish(self, *_args: Any) -> None:
        if self._unacked > 0:
            self._unacked -= 1
            if self._unacked == 0:
                self._all_acked.set()

    def _on_socket_open(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        with contextlib.suppress(OSError):  # not a TCP socket (e.g. a test's socketpair)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in_loop(self._loop.add_reader, sock, self._readable)

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._unregister, sock)

    def _unregister(self, sock: Any) -> None:
        try:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        except (ValueError, OSError):
            pass  # already closed
        self._writing = False

    def _on_register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        if not self._writing:
            self._writing = True
            self._loop.add_writer(sock, self._writable)

    def _on_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._in_loop(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        if self._writing:
            self._writing = False
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_writer(sock)

    def _readable(self) -> None:
        self._client.loop_read(100)

    def _writable(self) -> None:
        self._client.loop_write()
