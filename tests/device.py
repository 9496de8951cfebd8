"""A paho-based test device: calls with retries by request id, collects notifications, acks and syncs."""

from __future__ import annotations

import itertools
import json
import os
import queue
import socket
import threading
import time
from typing import Any

import cbor2
import paho.mqtt.client as mqtt


class CallFailed(Exception):
    def __init__(self, err: dict[str, Any]) -> None:
        super().__init__(f"{err['kind']}: {err['name']}: {err['message']}")
        self.err = err


class Device:
    def __init__(self, port: int, ca: str, session: str = "default", *, codec: str = "cbor", prefix: str = "ca",
                 client_id: str | None = None, username: str | None = None, password: str | None = None,
                 tls: str | None = None, clean_session: bool = True) -> None:
        """``username``/``password`` authenticate; ``tls`` is a CA certificate file: connect over TLS verifying it.
        ``clean_session=False`` (with a fixed ``client_id``): the broker keeps this device's subscription and queues
        its messages while it is away."""
        self.ca, self.session, self.codec, self.prefix = ca, session, codec, prefix
        self.replies: dict[str, dict[str, Any]] = {}
        self.notes: list[dict[str, Any]] = []
        self.syncs: list[dict[str, Any]] = []
        self.errors: queue.Queue[dict[str, Any]] = queue.Queue()
        self.raw: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self._tag = os.urandom(4).hex()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"dev-{self._tag}",
                                  clean_session=clean_session)
        self.client.reconnect_delay_set(0.1, 1)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:
            self.client.tls_set(ca_certs=tls)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("no SUBACK")

    def _on_connect(self, client, *_a) -> None:
        sock = client.socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # paho never sets it; Nagle adds ~40 ms
        head = f"{self.prefix}/{self.ca}"
        client.subscribe([(f"{head}/session/{self.session}", 1), (f"{head}/errors", 1)])

    def decode(self, payload: bytes) -> Any:
        return json.loads(payload) if payload[:1] == b"{" else cbor2.loads(payload)

    def encode(self, msg: dict[str, Any]) -> bytes:
        return json.dumps(msg).encode() if self.codec == "json" else cbor2.dumps(msg)

    def _on_message(self, _c, _u, m) -> None:
        self.raw.append((m.topic, m.payload))
        msg = self.decode(m.payload)
        with self._cond:
            if m.topic.endswith("/errors"):
                self.errors.put(msg)
            elif msg["t"] == "reply":
                self.replies[msg["id"]] = msg
            elif msg["t"] == "note":
                self.notes.append(msg)
            elif msg["t"] == "sync":
                self.syncs.append(msg)
            self._cond.notify_all()

    def publish(self, payload: bytes, topic: str | None = None, qos: int = 1) -> None:
        self.client.publish(topic or f"{self.prefix}/{self.ca}/in", payload, qos=qos)

    def new_id(self) -> str:
        return f"{self._tag}-{next(self._ids)}"

    def send_call(self, method: str, *args: Any, rid: str | None = None) -> str:
        rid = rid or self.new_id()
        msg = {"t": "call", "id": rid, "session": self.session, "method": method, "args": list(args)}
        self.publish(self.encode(msg))
        return rid

    def wait_reply(self, rid: str, timeout: float = 10.0) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: rid in self.replies, timeout):
                raise TimeoutError(f"no reply to {rid}")
            return self.replies[rid]

    def call(self, method: str, *args: Any, timeout: float = 10.0, retry: float | None = None) -> Any:
        """Call and return the result; with ``retry``, resend the same id every ``retry`` seconds until answered."""
        rid = self.send_call(method, *args)
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self.wait_reply(rid, retry or timeout)
                break
            except TimeoutError:
                if retry is None or time.monotonic() > deadline:
                    raise
                self.send_call(method, *args, rid=rid)
        if "err" in reply:
            raise CallFailed(reply["err"])
        return reply["ok"]

    def ack(self, seq: int) -> None:
        self.publish(self.encode({"t": "ack", "session": self.session, "seq": seq}))

    def sync(self, seq: int) -> None:
        self.publish(self.encode({"t": "sync", "session": self.session, "seq": seq}))

    def wait_notes(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.notes) >= count, timeout):
                raise TimeoutError(f"got {len(self.notes)} notifications, wanted {count}")
            return list(self.notes)

    def wait_sync(self, count: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.syncs) >= count, timeout):
                raise TimeoutError("no sync answer")
            return self.syncs[count - 1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
