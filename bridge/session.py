"""Logical sessions of a CA: notification queues, nonce/memento, and the per-call transactional view.

Every session effect of a call is made on copy-on-write working copies held by a :class:`SessionTxn`, so the
call reads its own writes, and nothing reaches the committed sessions unless the call succeeds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bridge import codec
from bridge.protocol import check_name, token

__all__ = ["SessionAPI", "SessionData", "SessionLimits", "SessionTxn"]

Customizer = Callable[[str, list[Any]], list[Any]]


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """Per-CA settings: Caf.js's session defaults, a hard cap no queue may pass, and the dedup window (the
    replies of the last ``dedup_window`` calls of each session are remembered, whatever its CA's other sessions
    do, so a device that waits for each reply before its next call can always retry its last one; and those of
    the CA's last 8 x ``dedup_window`` calls)."""

    max_sessions: int = 10
    default_queue: int = 5
    hard_queue_cap: int = 10_000
    dedup_window: int = 8


@dataclass(slots=True)
class SessionData:
    """The committed (or working) data of one logical session.

    ``queue`` holds ``(seq, cbor(args))`` with contiguous sequence numbers ending at ``next_seq - 1``.
    ``online`` is the presence the session's device last announced (committed with the rest); ``presence_at`` is
    the loop time of the last change seen by this process (memory only: 0.0 after a load).

    The session row does not follow ``next_seq`` on every notification: while notifications are queued, their own
    rows carry it (the newest is ``next_seq - 1``), so a notify writes only its note. The row is written when one of
    its other fields changes, or when the queue runs empty (then nothing else holds ``next_seq``); ``stored_seq`` is
    the ``next_seq`` the row holds, and :meth:`from_record` takes the larger of the two on load.
    """

    limit: int
    pinned: bool = False
    nonce: str | None = None
    memento: Any = None
    next_seq: int = 1
    codec: codec.Codec = "cbor"
    queue: list[tuple[int, bytes]] = field(default_factory=list)
    online: bool = False
    presence_at: float = 0.0
    stored_seq: int = 0  # the next_seq the stored session row holds (0: no row yet)

    @property
    def first_seq(self) -> int:
        """The oldest queued sequence number (``next_seq`` when the queue is empty)."""
        return self.queue[0][0] if self.queue else self.next_seq

    def meta(self) -> tuple[Any, ...]:
        """The fields stored in the session row."""
        return (self.limit, self.pinned, self.nonce, self.memento, self.next_seq, self.codec, self.online)

    def settings(self) -> tuple[Any, ...]:
        """The session row's fields but ``next_seq``: when they change, the row is written."""
        return (self.limit, self.pinned, self.nonce, self.memento, self.codec, self.online)

    def row_due(self, old: SessionData) -> bool:
        """Whether a call that turned ``old`` into this must write the session row (see the class's note)."""
        return self.settings() != old.settings() or (not self.queue and self.next_seq != self.stored_seq)

    @classmethod
    def from_record(cls, meta: list[Any] | tuple[Any, ...], notes: list[tuple[int, bytes]]) -> SessionData:
        """A stored session: its row's fields and its queued notifications, whose newest sets ``next_seq`` when the
        row's is older (see the class's note)."""
        data = cls.from_meta(meta)
        data.stored_seq = data.next_seq
        data.queue = notes
        if notes and notes[-1][0] >= data.next_seq:
            data.next_seq = notes[-1][0] + 1
        return data

    @classmethod
    def from_meta(cls, meta: list[Any] | tuple[Any, ...]) -> SessionData:
        """Rebuild from :meth:`meta` (the queue is loaded separately). Rows written before presence existed have
        six fields: those sessions are offline."""
        limit, pinned, nonce, memento, next_seq, session_codec = meta[:6]
        online = bool(meta[6]) if len(meta) > 6 else False
        return cls(limit, pinned, nonce, memento, next_seq, session_codec, online=online)

    def copy(self) -> SessionData:
        """A working copy for one call."""
        return SessionData(
            self.limit, self.pinned, self.nonce, self.memento, self.next_seq, self.codec, list(self.queue),
            self.online, self.presence_at, self.stored_seq)

    def trim(self, hard_cap: int) -> None:
        """Drop the oldest notifications beyond the limit (and always beyond the hard cap)."""
        cap = self.limit if 0 < self.limit < hard_cap else hard_cap
        if len(self.queue) > cap:
            del self.queue[: len(self.queue) - cap]

    def collectable(self, default_limit: int) -> bool:
        """Caf.js GC rule, made safe: unpinned, default limit, pending notifications, no nonce or memento, and
        offline (collecting an online session would lose its presence and the transition to offline)."""
        return (
            bool(self.queue) and not self.pinned and self.limit == default_limit
            and self.nonce is None and self.memento is None and not self.online
        )


class SessionTxn:
    """The session side of one call: working copies, created and collected sessions, new notifications."""

    __slots__ = ("committed", "current", "deleted", "limits", "working")

    def __init__(self, committed: dict[str, SessionData], current: str, limits: SessionLimits) -> None:
        self.committed = committed
        self.current = current
        self.limits = limits
        self.working: dict[str, SessionData] = {}
        self.deleted: set[str] = set()

    def ids(self) -> list[str]:
        """Every session visible to the call, in creation order."""
        ids = [sid for sid in self.committed if sid not in self.deleted]
        ids.extend(sid for sid in self.working if sid not in self.committed)
        return ids

    def peek(self, sid: str) -> SessionData | None:
        """Read a session as the call sees it, without copying."""
        if sid in self.working:
            return self.working[sid]
        if sid in self.deleted:
            return None
        return self.committed.get(sid)

    def write(self, sid: str) -> SessionData:
        """A writable working copy of ``sid``, creating the session (and collecting others) if needed."""
        data = self.working.get(sid)
        if data is not None:
            return data
        base = None if sid in self.deleted else self.committed.get(sid)
        if base is None:
            data = SessionData(self.limits.default_queue)
            self.working[sid] = data
            self._collect(sid)
        else:
            data = base.copy()
            self.working[sid] = data
        return data

    def _collect(self, created: str) -> None:
        ids = self.ids()
        excess = len(ids) - self.limits.max_sessions
        if excess <= 0:
            return
        victims = []
        for sid in ids:
            data = self.peek(sid)
            if sid not in (created, self.current) and data is not None and data.collectable(self.limits.default_queue):
                victims.append((len(data.queue), sid))
        victims.sort(key=lambda v: -v[0])
        for _, sid in victims[:excess]:
            self.deleted.add(sid)
            self.working.pop(sid, None)

    def notify(self, sid: str, args_cbor: bytes) -> None:
        """Queue one notification (already encoded) for ``sid``."""
        data = self.working.get(sid)
        if data is None:
            data = self.write(sid)
        queue = data.queue
        queue.append((data.next_seq, args_cbor))
        data.next_seq += 1
        if len(queue) > data.limit or len(queue) > self.limits.hard_queue_cap:  # else trim has nothing to drop
            data.trim(self.limits.hard_queue_cap)

    def ack(self, sid: str, seq: int) -> None:
        """Drop every queued notification of ``sid`` up to ``seq``."""
        data = self.peek(sid)
        if data is None or not data.queue or data.queue[0][0] > seq:
            return
        data = self.write(sid)
        keep = [item for item in data.queue if item[0] > seq]
        data.queue[:] = keep


class SessionAPI:
    """``self.session`` of a running call: Caf.js's session proxy in snake_case, with read-your-writes."""

    __slots__ = ("_txn",)

    def __init__(self, txn: SessionTxn) -> None:
        self._txn = txn

    def get_session_id(self) -> str:
        """The session of the running call (``"default"`` for init, resume and pulse)."""
        return self._txn.current

    def get_all_session_ids(self) -> list[str]:
        """Every session of this CA, including sessions created earlier in this call."""
        return self._txn.ids()

    def notify(
        self,
        args: list[Any],
        session_id: str | re.Pattern[str] | None = None,
        customizer: Customizer | None = None,
    ) -> None:
        """Queue a notification for the current session, a named one, or every existing session a pattern matches.

        ``args`` is copied now (encoded), so later changes to the objects it references do not leak into it.
        ``customizer(session_id, args)`` returns the args for each target.
        """
        if type(args) is not list:
            raise TypeError("notify args must be a list")
        txn = self._txn
        if customizer is None and (session_id is None or (type(session_id) is str and session_id in txn.committed)):
            codec.check_subset(args)  # one target that needs no name check: the current session, or an existing one
            txn.notify(txn.current if session_id is None else session_id, codec.dumps(args))
            return
        if session_id is None:
            targets = [self._txn.current]
        elif type(session_id) is str and session_id in self._txn.committed:  # an existing session's id is valid
            targets = [session_id]
        elif isinstance(session_id, re.Pattern):
            targets = [sid for sid in self._txn.ids() if session_id.search(sid)]
        else:
            targets = [check_name(session_id, "session id")]
        if customizer is None:
            codec.check_subset(args)
        encoded = None if customizer else codec.dumps(args)
        for sid in targets:
            if customizer is None:
                payload = encoded
            else:
                custom = customizer(sid, args)
                if type(custom) is not list:
                    raise TypeError("a customizer must return a list")
                codec.check_subset(custom)
                payload = codec.dumps(custom)
            assert payload is not None
            self._txn.notify(sid, payload)

    def limit_queue(self, max_msgs: int, session_id: str | None = None) -> None:
        """Bound a session's queue (``<= 0``: unlimited up to the hard cap), dropping the oldest; pins the session."""
        if type(max_msgs) is not int:
            raise TypeError("max_msgs must be an int")
        data = self._txn.write(self._target(session_id))
        data.limit = max_msgs
        data.pinned = True
        data.trim(self._txn.limits.hard_queue_cap)

    def outq(self, session_id: str | None = None) -> list[list[Any]]:
        """The args of the pending (unacknowledged) notifications, oldest first."""
        data = self._txn.peek(self._target(session_id))
        return [codec.loads(args) for _, args in data.queue] if data else []

    def begin(self) -> dict[str, Any]:
        """Start a persistent-session instance: a new nonce, and the memento left by an instance that did not end."""
        data = self._txn.write(self._txn.current)
        data.nonce = token(15)
        return {"nonce": data.nonce, "memento": data.memento}

    def remember(self, nonce: str, memento: Any) -> bool:
        """Store ``memento`` if ``nonce`` is the current instance's; False (change nothing) otherwise."""
        data = self._txn.peek(self._txn.current)
        if type(nonce) is not str or data is None or data.nonce != nonce:
            return False
        codec.check_subset(memento)
        self._txn.write(self._txn.current).memento = memento
        return True

    def end(self, nonce: str) -> bool:
        """End the instance ``nonce``: clears nonce and memento. True if it matched or was already ended."""
        if type(nonce) is not str:
            return False
        data = self._txn.peek(self._txn.current)
        if data is None or (data.nonce is None and data.memento is None):
            return True
        if data.nonce != nonce:
            return False
        data = self._txn.write(self._txn.current)
        data.nonce = None
        data.memento = None
        return True

    def is_online(self, session_id: str | None = None) -> bool:
        """True if the session's device announced it is online (and has not gone offline since); False for a
        session that does not exist. Sees a presence change in the running on_presence hook."""
        data = self._txn.peek(self._target(session_id))
        return data is not None and data.online

    def memento(self, session_id: str | None = None) -> Any:
        """Read a session's memento without side effects (Caf.js has no such accessor)."""
        data = self._txn.peek(self._target(session_id))
        return None if data is None else data.memento

    def _target(self, session_id: str | None) -> str:
        if session_id is None:
            return self._txn.current
        return check_name(session_id, "session id")
