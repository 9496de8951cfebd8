"""The device's two synced maps (DEVICE_SPEC.md, dsync): to_cloud deltas and the from_cloud copy.

``ToCloud`` is written by the device and tracks changed keys by assignment (``m[k] = v``, ``del
m[k]``): a value changed in place must be assigned again to be synced. Deltas are versioned, one
in flight at a time; a gap reported by the bridge makes the next delta the full map.
``FromCloud`` is read-only for the application; the runtime applies answers to it between
handler calls.
"""


class _Map:
    def __init__(self):
        self._d = {}

    def __getitem__(self, k):
        return self._d[k]

    def __contains__(self, k):
        return k in self._d

    def __iter__(self):
        return iter(self._d)

    def __len__(self):
        return len(self._d)

    def get(self, k, default=None):
        return self._d.get(k, default)

    def items(self):
        return self._d.items()


class ToCloud(_Map):
    def __init__(self):
        super().__init__()
        self.version = 0  # the version of the last delta built (what the bridge has once it is answered)
        self._dirty = {}  # key -> True (changed since the last delta built)
        self.full = False  # the bridge asked for a resync: the next delta is the whole map
        self.inflight = None  # (tb, tv) of the delta sent and not yet answered

    def __setitem__(self, k, v):
        if not isinstance(k, str):
            raise TypeError("to_cloud keys are strings")
        self._d[k] = v
        self._dirty[k] = True

    def __delitem__(self, k):
        del self._d[k]
        self._dirty[k] = True

    def changed(self):
        """True when a delta is due (changed keys or a resync asked)."""
        return bool(self._dirty) or self.full

    def load(self, data, version):
        """Replace with the CA's copy (at a start): nothing pending."""
        self._d = dict(data)
        self.version = version
        self._dirty = {}
        self.full = False
        self.inflight = None

    def delta(self, msg):
        """Put the next delta (if any) into the dsync ``msg``; call only with no delta in flight."""
        if self.full:
            msg["full"] = True
            msg["d"] = dict(self._d)
            msg["tb"] = self.version
            msg["tv"] = self.version
            self.full = False
        elif self._dirty:
            d = {}
            x = []
            for k in self._dirty:
                if k in self._d:
                    d[k] = self._d[k]
                else:
                    x.append(k)
            if d:
                msg["d"] = d
            if x:
                msg["x"] = x
            msg["tb"] = self.version
            self.version += 1
            msg["tv"] = self.version
        else:
            return False
        self._dirty = {}
        self.inflight = (msg["tb"], msg["tv"])
        return True

    def answered(self, ok):
        """The dsync carrying the in-flight delta was answered (``ok``: the answer map, or None on error)."""
        self.inflight = None
        if ok is None or ok.get("resync"):
            self.full = True  # not applied (an error) or a gap: send everything


class FromCloud(_Map):
    def __init__(self):
        super().__init__()
        self.version = 0

    def __setitem__(self, k, v):
        raise TypeError("from_cloud is read-only on the device")

    def __delitem__(self, k):
        raise TypeError("from_cloud is read-only on the device")

    def load(self, data, version):
        self._d = dict(data)
        self.version = version

    def apply(self, ok):
        """Apply a dsync answer's fc/fx/ffull/fv; returns the keys that changed."""
        fc = ok.get("fc") or {}
        fx = ok.get("fx") or []
        changed = []
        if ok.get("ffull"):
            old = self._d
            self._d = dict(fc)
            for k in old:
                if k not in self._d or old[k] != self._d[k]:
                    changed.append(k)
            for k in self._d:
                if k not in old:
                    changed.append(k)
        else:
            for k in fc:
                if k not in self._d or self._d[k] != fc[k]:
                    changed.append(k)
                self._d[k] = fc[k]
            for k in fx:
                if k in self._d:
                    del self._d[k]
                    changed.append(k)
        fv = ok.get("fv")
        if isinstance(fv, int):
            self.version = fv
        return changed
