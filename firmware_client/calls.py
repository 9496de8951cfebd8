"""Client.call(): the blocking call with its re-sends (loaded on first use, see client.py)."""

from firmware_client.client import _RESEND_MAX, _RETRY_KINDS, CAError
from firmware_client.compat import Timeout, deadline_in, rand_below, remaining, ticks_diff


def call(self, method, args, timeout):
    """``Client.call(method, *args, timeout=timeout)``."""
    t = self.timeout if timeout is None else timeout
    deadline = deadline_in(t * 1000)
    self._count += 1
    rid = "%s-%d" % (self._rid, self._count)
    msg = {"t": "call", "id": rid, "session": self.session, "method": method, "args": list(args)}
    entry = [self._dumps(msg), None, None, None]
    self._calls[rid] = entry
    pause = 50
    silence = int(self.resend * 1000) if self.resend else 0
    try:
        while True:
            self.mqtt.publish(self.in_topic, entry[0], 1, rid)
            reply = _await(self, rid, entry, deadline, silence)
            if reply is None:
                raise Timeout("no reply to %s within %s s" % (method, t))
            err = reply.get("err")
            if err is None:
                return reply.get("ok")
            if not isinstance(err, dict):
                err = {"kind": "internal", "name": "BadReply", "message": "malformed err"}
            kind = err.get("kind")
            if kind not in _RETRY_KINDS or remaining(deadline) <= pause:
                raise CAError(kind, err.get("name"), err.get("message"), err.get("data"))
            entry[1] = None  # busy / unavailable: nothing ran; pause, then same id again
            self._run(deadline_in(pause // 2 + rand_below(pause)), None)
            pause = min(pause * 2, 2000)
    finally:
        del self._calls[rid]


def _await(self, rid, entry, deadline, silence):
    """Wait for ``entry``'s reply until ``deadline``; re-send the request after each silence.

    A request or its reply can vanish without a trace (a bridge killed with the request in
    flight: its clean MQTT session drops what it had not acknowledged). The silence is jittered
    (0.75-1.25 x) and doubles after each re-send, up to 30 s; returns the reply or None.
    """
    while True:
        until = deadline
        if silence > 0:
            nxt = deadline_in(silence * 3 // 4 + rand_below(silence // 2 + 1))
            if ticks_diff(nxt, deadline) < 0:
                until = nxt
        self._run(until, lambda: entry[1] is not None)
        if entry[1] is not None or remaining(deadline) <= 0:
            return entry[1]
        self.resent += 1
        self.mqtt.publish(self.in_topic, entry[0], 1, rid)  # replaces an unacknowledged copy
        silence = min(silence * 2, _RESEND_MAX)

