"""The embedded broker's security policy: one amqtt plugin for authentication and the per-device ACL.

amqtt's own plugins do not fit: its ACL plugin wants one static entry per user (no ``%u`` patterns, no reload),
only its deprecated ``acl`` key works in 0.12.1, and its FileAuthPlugin checks argon2 on the event loop and never
rereads the file. :class:`DevicePolicyPlugin` reads the same ``user:$argon2id$...`` file (``amqtt.passwd`` of an
auth directory, see bridge.auth) and:

* refuses anonymous clients, unknown users and wrong passwords; the hash check runs on a worker thread;
* rereads the password file when it changes (checked on every CONNECT, at most once a second otherwise), so a
  removed device is refused on its next CONNECT and loses publish/receive rights within about a second;
* refuses a client id that belongs to another user: the prefixes of ``mosquitto.clientids`` next to the password
  file (device ``X`` owns ``<prefix>-X-...``, the bridge ``ca-bridge-...``; the same file mosquitto's plugin
  reads), and any other id once a user has authenticated with it; so a device can neither disconnect another
  device (or the bridge) nor take over its persistent session and queued messages;
* allows device ``X`` to publish only to ``<prefix>/X/in``, to subscribe to and receive only
  ``<prefix>/X/session/<one level>`` and ``<prefix>/X/errors``; the bridge user may use everything under
  ``<prefix>/``; nobody may use anything else;
* refuses a CONNECT whose will topic the client may not publish to (amqtt publishes wills without asking the topic
  plugins, so a device could otherwise send a request to any CA by dying), and keeps the will of a client id's
  existing session when a CONNECT for it is refused (amqtt copies the new will into that session beforehand).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.contexts import Action  # type: ignore[import-untyped]
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin  # type: ignore[import-untyped]

from bridge.auth import BRIDGE_USER, CLIENTIDS_FILE, argon2_verify, read_clientids, read_passwd

__all__ = ["DevicePolicyPlugin", "UserDB", "allowed", "reload_all"]

log = logging.getLogger("bridge.broker.policy")

_LIVE: weakref.WeakSet[UserDB] = weakref.WeakSet()
_WILL = ("will_flag", "will_topic", "will_message", "will_qos")  # what amqtt copies from a CONNECT into a session


def reload_all() -> None:
    """Reread every loaded password file now (the CLI calls this on SIGHUP)."""
    for db in list(_LIVE):
        db.refresh(force=True)


class UserDB:
    """A password file (or another ``key value`` file) kept in memory and reread when its inode, size or mtime
    changes."""

    def __init__(self, path: Path, recheck: float = 1.0,
                 reader: Callable[[Path], dict[str, str]] = read_passwd) -> None:
        self.path = path
        self.recheck = recheck
        self.reader = reader
        self.users: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = 0.0
        _LIVE.add(self)
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked < self.recheck:
            return
        self._checked = now
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and not force:
            return
        self._stamp = stamp
        self.users = self.reader(self.path)
        log.info("loaded %d entries from %s", len(self.users), self.path)  # names and hashes are not logged


def allowed(username: str | None, topic: str, action: str, prefix: str, bridge_user: str = BRIDGE_USER) -> bool:
    """The ACL: may ``username`` ``publish``/``subscribe``/``receive`` on ``topic`` (a filter for subscribe)?"""
    if not username or not topic:
        return False
    base = prefix + "/"
    if username == bridge_user:
        return topic.startswith(base) or (action == "subscribe" and topic == prefix + "/#")
    own = f"{base}{username}/"
    if action == "publish":
        return topic == own + "in"
    if topic == own + "errors":
        return True
    rest = topic[len(own) + len("session/"):] if topic.startswith(own + "session/") else None
    if rest is None or not rest or "/" in rest or "#" in rest:
        return False
    return rest == "+" if "+" in rest else True


class DevicePolicyPlugin(BaseAuthPlugin, BaseTopicPlugin):  # type: ignore[misc]
    """Authentication + per-device ACL for amqtt 0.12 (configure under ``plugins`` by its dotted path)."""

    @dataclass
    class Config:
        password_file: str = ""
        prefix: str = "ca"
        bridge_user: str = BRIDGE_USER

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        cfg = self.context.config
        if not cfg.password_file:
            raise ValueError("DevicePolicyPlugin needs password_file")
        self.prefix: str = cfg.prefix
        self.bridge_user: str = cfg.bridge_user
        self.db = UserDB(Path(cfg.password_file))
        self.prefixes = UserDB(Path(cfg.password_file).parent / CLIENTIDS_FILE, reader=read_clientids)
        self.owners: dict[str, str] = {}  # client id -> the user that first authenticated with it
        self.wills: dict[str, tuple[Any, ...]] = {}  # client id -> the will of its last accepted CONNECT

    async def authenticate(self, *, session: Any) -> bool:
        username = getattr(session, "username", None)
        client_id = getattr(session, "client_id", None)
        owner = self.owners.get(client_id) if client_id else None
        ok = await self._check(session, username, client_id) and self._will_allowed(session, username, client_id)
        if ok and client_id:
            if owner is None and username:
                self.owners[client_id] = username
            self.wills[client_id] = tuple(getattr(session, attr, None) for attr in _WILL)
        elif not ok and owner is not None:
            # amqtt copied this CONNECT's username and will into the existing session of that client id before
            # asking us; put the owner's back so that session keeps the owner's rights and the owner's will.
            session.username = owner
            for attr, value in zip(_WILL, self.wills.get(client_id or "", (False, None, None, 0)), strict=True):
                setattr(session, attr, value)
        return ok

    def _will_allowed(self, session: Any, username: str | None, client_id: str | None) -> bool:
        if not getattr(session, "will_flag", False):
            return True
        topic = getattr(session, "will_topic", None)
        if username and topic and allowed(username, topic, "publish", self.prefix, self.bridge_user):
            return True
        log.info("refused client %r: its will is on a topic it may not publish to", client_id)
        return False

    async def _check(self, session: Any, username: str | None, client_id: str | None) -> bool:
        if not username:
            log.info("refused an anonymous client")
            return False
        self.db.refresh(force=True)  # a stat per CONNECT: a removed device is refused at once
        encoded = self.db.users.get(username)
        password = session.password or ""
        if encoded is None or not await asyncio.to_thread(argon2_verify, password, encoded):
            log.info("refused client %r: bad credentials", client_id)
            return False
        owner = self._owner(client_id) if client_id else None
        if owner is not None and owner != username:
            log.warning("refused client %r: its client id belongs to another user", client_id)
            return False
        return True

    def _owner(self, client_id: str) -> str | None:
        """The user a client id belongs to: the owner of its longest prefix in mosquitto.clientids, else the first
        user that authenticated with it, else nobody."""
        self.prefixes.refresh(force=True)
        best = max((p for p in self.prefixes.users if client_id.startswith(p)), key=len, default=None)
        return self.prefixes.users[best] if best is not None else self.owners.get(client_id)

    async def topic_filtering(self, *, session: Any = None, topic: str | None = None, action: Any = None) -> bool:
        username = getattr(session, "username", None)
        if not topic or not username:
            return False
        self.db.refresh()
        if username not in self.db.users:  # revoked while connected
            return False
        if action == Action.PUBLISH:
            kind = "publish"
        elif action == Action.SUBSCRIBE:
            kind = "subscribe"
        elif action == Action.RECEIVE:
            kind = "receive"
        else:
            return False
        ok = allowed(username, topic, kind, self.prefix, self.bridge_user)
        if not ok and kind != "receive":
            log.debug("denied %s on a topic outside %r's own (client %r)", kind, username,
                     getattr(session, "client_id", None))
        return ok


# Set while amqtt reads a CONNECT (a clean session's old state is deleted only after authentication), and while
# an authenticated client's session runs (amqtt's own authentication call is answered from it). Per task.
_READING_CONNECT: ContextVar[bool] = ContextVar("_READING_CONNECT", default=False)
_AUTHENTICATED: ContextVar[bool] = ContextVar("_AUTHENTICATED", default=False)


def broker_class() -> type[Any]:
    """amqtt's Broker with the retained-message leak closed and a refused CONNECT kept away from other sessions.

    amqtt 0.12.1 inverts a check in ``_handle_subscription``: it sends the retained messages matching a filter
    only when the SUBSCRIBE was *refused* (return code 0x80), so a device refused ``#`` by the ACL still got every
    retained message. Here a retained message is sent only if the subscription is allowed by the topic plugins
    and the message's own topic may be received by that client.

    amqtt also acts on a CONNECT's client id before it authenticates: a clean-session CONNECT deletes the stored
    session of that id, and any CONNECT disconnects the client connected with that id ("take-over") and puts
    itself in its place, and only then answers "not authorised". So a device refused for using another device's
    client id still cut that device off and wiped its saved session. Here authentication comes first: a refused
    CONNECT gets its CONNACK and is closed without touching any session; an accepted one proceeds as in amqtt.
    """
    from amqtt.broker import Broker  # type: ignore[import-untyped]
    from amqtt.session import Session  # type: ignore[import-untyped]

    class SafeBroker(Broker):  # type: ignore[misc]
        async def _initialize_client_session(self, *args: Any) -> Any:
            token = _READING_CONNECT.set(True)
            try:
                return await super()._initialize_client_session(*args)
            finally:
                _READING_CONNECT.reset(token)

        async def _delete_session(self, client_id: str) -> None:
            if not _READING_CONNECT.get():  # a clean session's old state goes once the CONNECT is authenticated
                await super()._delete_session(client_id)

        async def _authenticate(self, session: Any, listener: Any) -> bool:
            return True if _AUTHENTICATED.get() else bool(await super()._authenticate(session, listener))

        async def _handle_client_session(self, reader: Any, writer: Any, client_session: Any, handler: Any,
                                         server: Any, listener_name: str) -> None:
            if not await super()._authenticate(client_session, self.listeners_config[listener_name]):
                refused = Session()  # not the session of that client id: it stays as it was
                refused.client_id, refused.keep_alive, refused.parent = client_session.client_id, 0, 0
                handler.attach(refused, reader, writer)
                await handler.mqtt_connack_authorize(False)
                await writer.close()
                return
            if client_session.clean_session and client_session.client_id:
                await super()._delete_session(client_session.client_id)
            token = _AUTHENTICATED.set(True)
            try:
                await super()._handle_client_session(reader, writer, client_session, handler, server, listener_name)
            finally:
                _AUTHENTICATED.reset(token)

        async def _publish_retained_messages_for_subscription(self, subscription: tuple[str, int],
                                                              session: Any) -> None:
            topic_filter, qos = subscription
            handler = self._get_handler(session)
            if handler is None or not await self._topic_filtering(session, topic_filter, Action.SUBSCRIBE):
                return
            tasks = []
            for topic, retained in list(self._retained_messages.items()):
                if self._matches(topic, topic_filter) and await self._topic_filtering(session, topic, Action.RECEIVE):
                    send_qos = min(qos, retained.qos or qos)
                    tasks.append(asyncio.ensure_future(
                        handler.mqtt_publish(retained.topic, retained.data, send_qos, retain=True)))
            if tasks:
                await asyncio.wait(tasks)

    return SafeBroker
