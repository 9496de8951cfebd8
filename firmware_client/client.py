"""The CA client: calls, notifications and persistent sessions over the bridge protocol.

See docs/PROTOCOL.md. One ``Client`` is one logical session of one CA. It is synchronous: the
application drives it by calling ``call()`` (which waits for its reply) and ``poll()`` (which
handles notifications, keepalive, acks and reconnects). Nothing runs in the background.
"""

import os
import sys

from firmware_client import cbor
from firmware_client.compat import deadline_in, hexlify, rand_below, remaining, ticks_diff, ticks_ms
from firmware_client.mqtt import MQTT

_RETRY_KINDS = ("busy", "unavailable")
_RESEND_MAX = 30000  # ms: the silence before a re-send doubles up to this
_MICRO = sys.implementation.name == "micropython"
_PUNCT = "_.-"


def valid_name(s):
    """CA names and session ids: 1-64 of [A-Za-z0-9_.-], not starting with punctuation."""
    if not isinstance(s, str) or not 0 < len(s) <= 64 or s[0] in _PUNCT:
        return False
    for ch in s:
        if not (ch.isalpha() or ch.isdigit() or ch in _PUNCT) or ord(ch) > 127:
            return False
    return True


class CAError(Exception):
    """The CA answered a call with an error.

    ``kind`` is one of app / internal / bad_request (permanent: the same id gives the same answer)
    or busy / unavailable (transient: raised only when the call's timeout ran out while retrying).
    ``name``, ``message`` and ``data`` come from the reply's ``err`` map.
    """

    def __init__(self, kind, name, message, data=None):
        super().__init__("%s: %s" % (name, message))
        self.kind = kind
        self.name = name
        self.message = message
        self.data = data if data is not None else {}


def _loads(payload):
    for b in payload:
        if b not in b" \t\r\n":
            break
    else:
        b = 0
    if b == 0x7B:  # '{': JSON (PROTOCOL.md, Encoding)
        from firmware_client import jsoncodec

        return jsoncodec.loads(payload)
    return cbor.loads(payload)


class Client:
    """See the package README. Keyword arguments beyond the documented ones are tuning knobs."""

    def __init__(
        self,
        ca,
        session="default",
        *,  # everything else by keyword: Client("shop1", "s1", host="10.0.0.5", port=1883)
        host="127.0.0.1",
        port=None,
        user=None,
        password=None,
        client_id=None,
        keepalive=30,
        codec="cbor",
        ssl=None,
        prefix="ca",
        timeout=10.0,
        connect_timeout=10.0,
        clean=False,
        will=None,
        bufsize=None,
        hold=16,
        reconnect_max=30.0,
        resync=5.0,
        presence=True,
        resend=3.0,
    ):
        if not valid_name(ca) or not valid_name(session):
            raise ValueError("invalid CA name or session id")
        if codec == "json":
            from firmware_client import jsoncodec

            self._dumps = jsoncodec.dumps
        elif codec == "cbor":
            self._dumps = cbor.dumps
        else:
            raise ValueError("codec must be 'cbor' or 'json'")
        self.ca = ca
        self.session = session
        self.timeout = timeout
        self.resend = resend  # seconds of silence before a call is re-sent (same id, same bytes); 0: never
        self.resent = 0  # calls re-sent after a silence
        self.in_topic = "%s/%s/in" % (prefix, ca)
        self.topic = "%s/%s/session/%s" % (prefix, ca, session)
        self.on_notify = None  # fn(args), called once per notification, in sequence order
        self.last_seq = 0  # last notification processed (delivered to on_notify)
        self.lost = 0  # notifications the bridge dropped (queue limit) before we saw them
        self.recreated = 0  # times the bridge told us the session was recreated
        self.held_dropped = 0  # out-of-order notifications not held (re-fetched by sync)
        self.undecodable = 0  # payloads that were neither CBOR nor JSON maps
        self._hold = hold
        self._held = {}  # seq -> args, waiting for their predecessors
        self._delivering = False
        self._acked = 0
        self._syncs = 0  # sync requests without an answer yet
        self._sync_at = ticks_ms()
        self._resync_ms = int(resync * 1000)
        self._calls = {}  # request id -> [payload, reply or None, t1 or None, t4 or None]
        self.clock = None  # fn() -> local ms: when set, send() records t1/t4 for time samples
        self.on_other = None  # fn(msg): replies' other kinds on the session topic (e.g. "poke")
        self._req = None  # send(): [rid, next re-send (ticks), silence ms]
        self._rid = hexlify(os.urandom(6))  # fresh per boot: ids never repeat across reboots
        self._count = 0
        self.presence = presence
        if presence:
            # the broker publishes this if the connection dies without DISCONNECT (QoS 1, never retained)
            if will is not None:
                raise ValueError("presence uses the MQTT will: pass presence=False to set your own will")
            will = (self.in_topic, self._presence_msg(False), 1, False)
        if port is None:
            port = 8883 if ssl else 1883
        if client_id is None:
            client_id = "%s-%s-%s" % (prefix, ca, session)
        if bufsize is None:
            bufsize = 4096 if _MICRO else 1 << 20
        self.mqtt = MQTT(
            host,
            port,
            client_id,
            keepalive=keepalive,
            user=user,
            password=password,
            ssl=ssl,
            will=will,
            clean=clean,
            connect_timeout=connect_timeout,
            bufsize=bufsize,
            reconnect_max=reconnect_max,
        )
        self.mqtt.subs = [(self.topic, 1)]
        self.mqtt.on_message = self._on_message
        self.mqtt.on_connect = self._on_connect

    # ------------------------------------------------------------------ public API

    def connect(self, timeout=None, retry=True):
        """Connect (retrying with backoff within ``timeout`` seconds; ``retry=False``: one attempt, its
        error raised at once), subscribe and sync."""
        t = self.mqtt.connect_ms / 1000 if timeout is None else timeout
        self.mqtt.connect(deadline_in(t * 1000), retry)

    def close(self):
        """Flush the pending ack and announce offline (best effort), send DISCONNECT and close the socket."""
        if self.mqtt.connected and self.last_seq > self._acked:
            self._send_ack()
        if self.mqtt.connected and self.presence:
            # a clean DISCONNECT cancels the will, so say it ourselves; if this is lost, the connection breaks
            # before DISCONNECT arrives and the broker publishes the will instead
            self.mqtt.publish(self.in_topic, self._presence_msg(False), 1, "presence")
        self.mqtt.close()

    @property
    def connected(self):
        return self.mqtt.connected

    def poll(self, timeout=0, until=None):
        """Handle traffic for ``timeout`` seconds (0: what is already there), then return; with
        ``until`` (fn() -> bool), return as soon as it is true."""
        self._run(deadline_in(timeout * 1000), until)

    def call(self, method, *args, timeout=None):
        """Call ``method(*args)`` on the CA; return its result or raise CAError / Timeout / OSError.

        Until the reply arrives, the identical request (same id, same bytes) is sent again after a
        reconnect, after a busy/unavailable answer and after ``resend`` seconds of silence, all
        within ``timeout``: the bridge runs one id once, so retries never repeat an effect.
        """
        from firmware_client.calls import call  # loaded on first use: a Device (send/collect) never pays it

        return call(self, method, args, timeout)

    # ------------------------------------------------------------------ non-blocking requests

    def send(self, msg):
        """Start a request without waiting (one at a time): ``msg`` gets a fresh ``id`` and
        ``session``; returns the id. ``poll()`` re-sends it unchanged (same id, same bytes) after
        ``resend`` seconds of silence and after a reconnect, until ``collect()`` takes its reply.
        The local send and receive times (``clock``) are kept only if it was sent once."""
        if self._req is not None:
            raise ValueError("a request is already in flight")
        self._count += 1
        rid = "%s-%d" % (self._rid, self._count)
        msg["id"] = rid
        msg["session"] = self.session
        entry = [self._dumps(msg), None, self.clock() if self.clock else None, None]
        self._calls[rid] = entry
        silence = int(self.resend * 1000) if self.resend else 0
        self._req = [rid, deadline_in(silence), silence]
        self.mqtt.publish(self.in_topic, entry[0], 1, rid)
        return rid

    def collect(self, rid):
        """The reply to ``send()``'s request ``rid`` as ``(reply, t1, t4)`` (t1/t4 None unless it
        was sent once), or None while it has not arrived. A busy/unavailable answer is not
        returned: the request is sent again after a pause."""
        entry = self._calls.get(rid)
        if entry is None or entry[1] is None:
            return None
        err = entry[1].get("err")
        if isinstance(err, dict) and err.get("kind") in _RETRY_KINDS:
            entry[1] = None
            entry[2] = None
            self._req[1] = deadline_in(200 + rand_below(200))  # re-sent by _resend_due
            if self._req[2] <= 0:
                self._req[2] = 1000
            return None
        del self._calls[rid]
        self._req = None
        return (entry[1], entry[2], entry[3])

    def forget(self, rid):
        """Abandon ``send()``'s request ``rid`` (its reply, if any, is ignored)."""
        self._calls.pop(rid, None)
        if self._req is not None and self._req[0] == rid:
            self._req = None

    def _resend_due(self):
        r = self._req
        entry = self._calls.get(r[0])
        if entry is None or entry[1] is not None or not self.mqtt.connected:
            return
        if r[2] <= 0 or remaining(r[1]) > 0:
            return
        entry[2] = None  # sent more than once: no time sample
        self.resent += 1
        self.mqtt.publish(self.in_topic, entry[0], 1, r[0])
        r[2] = min(r[2] * 2, _RESEND_MAX)
        r[1] = deadline_in(r[2] * 3 // 4 + rand_below(r[2] // 2 + 1))

    # ------------------------------------------------------------------ internals

    def _run(self, deadline, done):
        first = True
        while True:
            if done is not None and done():
                return
            if not first and remaining(deadline) <= 0:
                return
            first = False
            self.mqtt.pump(deadline)
            self._housekeeping()

    def _housekeeping(self):
        if not self.mqtt.connected:
            return
        if self._req is not None:
            self._resend_due()
        if self._held and not self._delivering:
            self._deliver()
            if self._held and ticks_diff(ticks_ms(), self._sync_at) > self._resync_ms:
                self._send_sync()  # a gap that did not heal: ask again
        if self.last_seq > self._acked and not self._delivering:
            self._send_ack()

    def _publish(self, msg, key):
        self.mqtt.publish(self.in_topic, self._dumps(msg), 1, key)

    def _send_ack(self):
        self._acked = self.last_seq
        self._publish({"t": "ack", "session": self.session, "seq": self.last_seq}, "ack")

    def _send_sync(self):
        if not self.mqtt.has_key("sync"):
            self._syncs += 1
        self._sync_at = ticks_ms()
        self._acked = self.last_seq  # a sync is also an ack
        self._publish({"t": "sync", "session": self.session, "seq": self.last_seq}, "sync")

    def _presence_msg(self, online):
        return self._dumps({"t": "presence", "session": self.session, "online": online})

    def _on_connect(self, session_present):
        self._send_sync()
        if self.presence:
            self.mqtt.publish(self.in_topic, self._presence_msg(True), 1, "presence")
        for rid in self._calls:
            entry = self._calls[rid]
            if entry[1] is None:
                entry[2] = None  # sent again (here or as a DUP): no time sample from its reply
            if entry[1] is None and not self.mqtt.has_key(rid):
                self.mqtt.publish(self.in_topic, entry[0], 1, rid)  # reply may be lost: ask again

    def _on_message(self, topic, payload):
        if topic != self.topic:
            return
        try:
            msg = _loads(payload)
        except ValueError:
            msg = None
        if not isinstance(msg, dict):
            self.undecodable += 1
            return
        t = msg.get("t")
        if t == "reply":
            entry = self._calls.get(msg.get("id"))
            if entry is not None:
                entry[1] = msg
                if entry[2] is not None and self.clock is not None:
                    entry[3] = self.clock()
        elif t == "note":
            seq = msg.get("seq")
            if isinstance(seq, int) and not isinstance(seq, bool):
                self._on_note(seq, msg.get("args", []))
        elif t == "sync":
            first, nxt = msg.get("first"), msg.get("next")
            if isinstance(first, int) and isinstance(nxt, int):
                self._on_sync(first, nxt)
        elif self.on_other is not None:
            self.on_other(msg)

    def _on_note(self, seq, args):
        if seq <= self.last_seq or seq in self._held:
            return  # duplicate
        if len(self._held) >= self._hold:
            # full: keep the lowest numbers, they are the ones delivered next (a resent gap must get in)
            worst = max(self._held)
            self.held_dropped += 1  # not acked, so the next sync brings it again
            if seq < worst:
                del self._held[worst]
                self._held[seq] = args
        else:
            self._held[seq] = args
        if seq != self.last_seq + 1 and self._syncs == 0:
            self._send_sync()  # a gap: never skip, ask the bridge to resend
        if not self._delivering:
            self._deliver()

    def _on_sync(self, first, nxt):
        answered = self._syncs > 0
        if answered:
            self._syncs -= 1
        if self.last_seq >= nxt and answered:
            # the bridge recreated the session: numbering starts again from `first`
            self.recreated += 1
            self.last_seq = self._acked = first - 1
            self._held = {}
        elif self.last_seq < first - 1:
            # dropped by the bridge's queue limit before we saw them: count as lost, move on
            self.lost += first - 1 - self.last_seq
            self.last_seq = first - 1
            for s in [s for s in self._held if s <= self.last_seq]:
                del self._held[s]
        if not self._delivering:
            self._deliver()

    def _deliver(self):
        self._delivering = True
        try:
            while self.last_seq + 1 in self._held:
                seq = self.last_seq + 1
                args = self._held.pop(seq)
                if self.on_notify is not None:
                    try:
                        self.on_notify(args)
                    except BaseException:
                        self._held[seq] = args  # not processed: deliver again on the next poll
                        raise
                self.last_seq = seq
        finally:
            self._delivering = False
