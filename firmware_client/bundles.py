"""Timed command bundles on the device (DEVICE_SPEC.md, Bundles and Device-side rules).

``Scheduler`` is pure: times are cloud epoch ms passed in by the caller (``now``), so tests
drive it with any clock. The runtime asks ``next_at()`` when to wake, ``due(now)`` for the next
command to run (or None), and reports back with ``finished(cmd, ok)``. Acks (``ba``), done
commands (``bd``) and results (``br``) collect in lists until a sync carries them (``taken`` /
``confirm``).
"""

_MAX_BUNDLES = 32  # bundles tracked at once; the bridge bounds its queue well below this


class Scheduler:
    def __init__(self):
        self.high = -1  # the highest bundle index received this boot
        self.cmds = []  # [at, index, pos, method, args, offset0, timed], sorted by at
        self.acts = []  # [at, index]: timed bundles whose start cancels older tails
        self.open = {}  # index -> [commands left, ok]
        self.ba = []  # indices received, to ack
        self.bd = []  # [index, pos] ran, to report
        self.br = []  # [index, ok] finished, to report
        self.late = 0  # bundles not run (late on arrival, expired, superseded or skipped commands)

    # -------------------------------------------------------------------- arrival

    def reset(self):
        """A new boot: forget what was scheduled (the bridge re-sends active bundles with ``re``);
        reports not yet synced stay, and their done commands count as done if re-sent."""
        self.high = -1
        self.cmds = []
        self.acts = []
        self.open = {}

    def add_all(self, bundles, now):
        """Process the bundles of one answer in index order (each index once per boot)."""
        good = [b for b in bundles if isinstance(b, dict) and isinstance(b.get("i"), int)]
        good.sort(key=lambda b: b["i"])
        for b in good:
            self.add(b, now)

    def add(self, b, now):
        i = b["i"]
        if i not in self.ba:
            self.ba.append(i)
        if i <= self.high or len(self.open) >= _MAX_BUNDLES:
            return False
        self.high = i
        mode = b.get("mode", "at")
        start = b.get("start", 0)
        cs = b.get("c")
        if not isinstance(cs, list) or not cs or not isinstance(start, int):
            self._result(i, False)
            return False
        re = bool(b.get("re"))
        done = list(b.get("done") or [])
        for d in self.bd:
            if d[0] == i and d[1] not in done:
                done.append(d[1])
        timed = mode == "at"
        if mode == "safe" and now > start and not re:
            self._result(i, False)  # NOW_SAFE arriving more than its bound late: dropped
            return False
        if timed and not re and start < now:
            self._result(i, False)  # late on first arrival: judged as a whole
            return False
        at = start if timed else now
        left = 0
        ok = True
        tail = False
        off = 0
        for pos in range(len(cs)):
            c = cs[pos]
            after = c[0]
            off += after
            at += after
            if pos in done:
                continue
            if re and (not timed or at < now):
                ok = False  # passed (now/safe of a re-sent bundle: may have run): never run twice
                continue
            self.cmds.append([at, i, pos, c[1], c[2] if len(c) > 2 else [], off == 0, timed])
            left += 1
            if timed and off > 0:
                tail = True
        if left == 0:
            self._result(i, ok)
            return True
        self.open[i] = [left, ok]
        self.cmds.sort()  # by (at, index, pos): unique per command, so the rest is never compared
        if tail:
            self.acts.append([start, i])
            self.acts.sort()  # by (start, index)
        return True

    # -------------------------------------------------------------------- running

    def next_at(self):
        """Cloud ms of the earliest pending event, or None."""
        t = None
        if self.cmds:
            t = self.cmds[0][0]
        if self.acts and (t is None or self.acts[0][0] < t):
            t = self.acts[0][0]
        return t

    def due(self, now):
        """The next command whose time has come ([at, index, pos, method, args, ...]), or None.
        Activations at or before that time are applied first (they may cancel it)."""
        while True:
            if self.acts and self.acts[0][0] <= now and (not self.cmds or self.acts[0][0] <= self.cmds[0][0]):
                self._activate(self.acts.pop(0)[1])
                continue
            if self.cmds and self.cmds[0][0] <= now:
                return self.cmds.pop(0)
            return None

    def _activate(self, index):
        """Timed bundle ``index`` starts: cancel the tails (offset > 0) of older timed bundles."""
        keep = []
        for c in self.cmds:
            if c[6] and not c[5] and c[1] < index:
                self._count(c[1], False)
            else:
                keep.append(c)
        self.cmds = keep

    def finished(self, cmd, ok):
        """``cmd`` (from ``due``) ran; ``ok`` False if it raised. It is reported done either way:
        a command that may have run is never run again."""
        self.bd.append([cmd[1], cmd[2]])
        self._count(cmd[1], ok)

    def _count(self, i, ok):
        o = self.open.get(i)
        if o is None:
            return
        o[0] -= 1
        if not ok:
            o[1] = False
        if o[0] <= 0:
            del self.open[i]
            self._result(i, o[1])

    def _result(self, i, ok):
        if not ok:
            self.late += 1
        self.br.append([i, ok])

    # -------------------------------------------------------------------- reporting

    def pending(self):
        return bool(self.ba or self.bd or self.br)

    def taken(self, msg):
        """Put the reports into a dsync ``msg``; returns the counts to ``confirm`` when answered."""
        if self.ba:
            msg["ba"] = list(self.ba)
        if self.bd:
            msg["bd"] = [list(d) for d in self.bd]
        if self.br:
            msg["br"] = [list(r) for r in self.br]
        return (len(self.ba), len(self.bd), len(self.br))

    def confirm(self, counts):
        """The dsync that carried ``counts`` reports was answered: drop them."""
        self.ba = self.ba[counts[0] :]
        self.bd = self.bd[counts[1] :]
        self.br = self.br[counts[2] :]
