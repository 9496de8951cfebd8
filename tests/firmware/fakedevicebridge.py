"""A scripted fake bridge for the device side (DEVICE_SPEC.md): dstart / dsync / poke on session iot.

A small in-memory model of the CA's device record, enough to drive firmware_client.Device in
tests before (and independently of) the real bridge side. ``drop_device_replies`` loses that
many answers (the request was processed: a re-send gets a fresh answer).
"""

import time

from fakebroker import FakeBroker


def now_ms():
    return int(time.time() * 1000)


class FakeDeviceBridge(FakeBroker):
    def __init__(self, ca="dev", prefix="ca"):
        super().__init__(ca=ca, session="iot", prefix=prefix)
        self.cmds = None
        self.boot = 0
        self.start_id = None
        self.tc = {}
        self.tv = 0
        self.fc = {}
        self.fver = {}  # key -> version of its last change (deletions: tombstones with value None)
        self.fv = 0
        self.bundles = []  # dicts: i, start, c, mode, done (set), acked_boot, first_boot
        self.results = {}
        self.next_index = 1
        self.changes = []  # the `changed` key sets, per applied to_cloud change
        self.drop_device_replies = 0
        self.device_requests = []  # (t, id, payload bytes) per dstart/dsync received

    # ------------------------------------------------------------ CA side helpers

    def set_fc(self, key, value, poke=True):
        with self.lock:
            self.fv += 1
            if value is None:
                self.fc.pop(key, None)
            else:
                self.fc[key] = value
            self.fver[key] = (self.fv, value is None)
        if poke:
            self.poke()

    def send_bundle(self, start, cmds, mode="at", poke=True):
        with self.lock:
            i = self.next_index
            self.next_index += 1
            self.bundles.append(
                {"i": i, "start": start, "c": cmds, "mode": mode, "done": set(), "acked_boot": None, "first_boot": None}
            )
        if poke:
            self.poke()
        return i

    def poke(self):
        c = self.conn
        if c is not None:
            c.publish(self.topic_session, self.encode({"t": "poke"}))

    # ------------------------------------------------------------ wire

    def _on_in(self, conn, payload):
        msg = self._decode(payload)
        t = msg.get("t")
        if t in ("dstart", "dsync"):
            self.log(t, msg)
            rx = now_ms()
            self.device_requests.append((t, msg.get("id"), bytes(payload)))
            with self.lock:
                reply = self._dstart(msg) if t == "dstart" else self._dsync(msg)
                reply["t"] = "reply"
                reply["id"] = msg["id"]
                reply["rx"] = rx
                reply["tx"] = now_ms()
                if self.drop_device_replies > 0:
                    self.drop_device_replies -= 1
                    return
            conn.publish(self.topic_session, self.encode(reply))
            return
        super()._on_in(conn, payload)

    def _decode(self, payload):
        import json

        import cbor2

        return json.loads(payload) if payload[:1] == b"{" else cbor2.loads(payload)

    def _active(self):
        return [b for b in self.bundles if b["i"] not in self.results]

    def _wire(self, b):
        w = {"i": b["i"], "start": b["start"], "c": b["c"], "mode": b["mode"]}
        if b["done"]:
            w["done"] = sorted(b["done"])
        if b["first_boot"] is not None and b["first_boot"] < self.boot:
            w["re"] = True
        return w

    def _deliver(self):
        return [self._wire(b) for b in self._active() if b["acked_boot"] != self.boot]

    def _dstart(self, msg):
        self.cmds = msg.get("cmds")
        if msg["id"] != self.start_id:
            self.boot += 1
            self.start_id = msg["id"]
        return {
            "ok": {
                "boot": self.boot,
                "tc": dict(self.tc),
                "tv": self.tv,
                "fc": dict(self.fc),
                "fv": self.fv,
                "b": self._deliver(),
            }
        }

    def _dsync(self, msg):
        if msg.get("boot") != self.boot:
            return {"err": {"kind": "bad_request", "name": "StaleBoot", "message": "old boot"}}
        ok = {}
        if msg.get("full"):
            changed = {k for k in set(self.tc) | set(msg.get("d", {})) if self.tc.get(k) != msg["d"].get(k)}
            self.tc = dict(msg.get("d", {}))
            self.tv = msg["tv"]
            self.changes.append(changed)
        elif "tv" in msg:
            if msg["tv"] <= self.tv:
                pass
            elif msg["tb"] == self.tv:
                changed = set()
                for k, v in msg.get("d", {}).items():
                    if self.tc.get(k) != v or k not in self.tc:
                        changed.add(k)
                    self.tc[k] = v
                for k in msg.get("x", []):
                    if k in self.tc:
                        del self.tc[k]
                        changed.add(k)
                self.tv = msg["tv"]
                self.changes.append(changed)
            else:
                ok["resync"] = True
        for i in msg.get("ba", []):
            for b in self.bundles:
                if b["i"] == i:
                    b["acked_boot"] = self.boot
                    if b["first_boot"] is None:
                        b["first_boot"] = self.boot
        for i, pos in msg.get("bd", []):
            for b in self.bundles:
                if b["i"] == i:
                    b["done"].add(pos)
        for i, res in msg.get("br", []):
            self.results.setdefault(i, res)
        have = msg.get("fv", 0)
        ok["tv"] = self.tv
        ok["fv"] = self.fv
        if have > self.fv:
            ok["ffull"] = True
            ok["fc"] = dict(self.fc)
        else:
            ok["fc"] = {k: self.fc[k] for k, (v, gone) in self.fver.items() if v > have and not gone}
            ok["fx"] = [k for k, (v, gone) in self.fver.items() if v > have and gone]
        ok["b"] = self._deliver()
        return {"ok": ok}
