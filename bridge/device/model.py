"""The device record of one CA (docs/DEVICES.md): both maps with their versions, the commands the device announced,
its boot number, the bundles not finished yet and the last results. Pure data: no I/O, no clock.

A record is stored as one CBOR blob beside the CA's state (``Change.device``). A transaction works on a copy
decoded from that blob (:meth:`DeviceRecord.decode`), so dropping the copy is the rollback.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from bridge import codec
from bridge.errors import AppError

__all__ = ["MAX_RESULTS", "MAX_TOMBSTONES", "DeviceLimits", "DeviceRecord", "StoredBundle", "device_view"]

MAX_RESULTS: Final = 32  # results kept (the last ones)
MAX_TOMBSTONES: Final = 256  # deleted from_cloud keys remembered; a device older than the forgotten ones gets all
SAFE_MS: Final = 600_000  # apply(safe=True): dropped if it arrives later than this after the send


@dataclass(frozen=True, slots=True)
class DeviceLimits:
    """The options of the device layer (--bundle-margin, --device-map-max, --max-bundles)."""

    bundle_margin: int = 2000  # ms added to a bundle's start when sent
    map_max: int = 16384  # bytes of one map, encoded
    max_bundles: int = 8  # unfinished bundles kept; on overflow the oldest is dropped with result False


@dataclass(slots=True)
class StoredBundle:
    """A sent bundle not finished yet. ``recv``: the boot in which the device acknowledged receiving it (0: never);
    it is delivered while ``recv`` differs from the current boot (``re`` when received in an earlier boot)."""

    index: int
    start: int
    cmds: list[list[Any]]  # [after_ms, method, args]
    mode: str  # "at", "now" or "safe"
    done: list[int] = field(default_factory=list)
    recv: int = 0

    def wire(self, boot: int) -> dict[str, Any]:
        """The bundle as a member of an answer's ``b``."""
        out: dict[str, Any] = {"i": self.index, "start": self.start, "c": self.cmds, "mode": self.mode,
                               "done": self.done}
        if self.recv and self.recv != boot:
            out["re"] = True
        return out

    def same(self, start: int, cmds: list[list[Any]], mode: str) -> bool:
        """True if a new bundle would be this one again (it collapses)."""
        return self.start == start and self.mode == mode and codec.dumps(self.cmds) == codec.dumps(cmds)


@dataclass(slots=True)
class DeviceRecord:
    """Everything the bridge keeps about a CA's device."""

    to_cloud: dict[str, Any] = field(default_factory=dict)
    tv: int = 0
    from_cloud: dict[str, Any] = field(default_factory=dict)
    fv: int = 0
    fkeys: dict[str, int] = field(default_factory=dict)  # key -> the from_cloud version that last set it
    tombs: dict[str, int] = field(default_factory=dict)  # deleted key -> the version that deleted it (oldest first)
    floor: int = 0  # a device holding a from_cloud version below this gets the whole map
    cmds: dict[str, int] | None = None  # None: the device never started
    boot: int = 0
    start_id: str | None = None
    bundles: list[StoredBundle] = field(default_factory=list)
    results: dict[int, bool] = field(default_factory=dict)  # index -> result, the last MAX_RESULTS, oldest first
    next_index: int = 1

    # -- storage --------------------------------------------------------------------------------------------

    def encode(self) -> bytes:
        """The record as stored."""
        return codec.dumps([
            1, self.to_cloud, self.tv, self.from_cloud, self.fv, self.fkeys, self.tombs, self.floor, self.cmds,
            self.boot, self.start_id,
            [[b.index, b.start, b.cmds, b.mode, b.done, b.recv] for b in self.bundles],
            [[i, ok] for i, ok in self.results.items()], self.next_index,
        ])

    @classmethod
    def decode(cls, blob: bytes) -> DeviceRecord:
        """A fresh record (a working copy) from :meth:`encode`'s bytes."""
        (_, tc, tv, fc, fv, fkeys, tombs, floor, cmds, boot, start_id, bundles, results,
         next_index) = codec.loads(blob)
        return cls(tc, tv, fc, fv, fkeys, tombs, floor, cmds, boot, start_id,
                   [StoredBundle(*b) for b in bundles], {i: ok for i, ok in results}, next_index)

    # -- from_cloud versions ----------------------------------------------------------------------------------

    def settle(self, before: DeviceRecord | None, map_max: int) -> bool:
        """End a transaction that may have written ``from_cloud``: check it, and give the keys that changed since
        ``before`` (the committed record) the next version. True if from_cloud changed. Raises CodecError for a
        value outside the wire subset and AppError for a map over ``map_max`` bytes."""
        old = before.from_cloud if before is not None else {}
        new = self.from_cloud
        blob = codec.dumps(new)  # CodecError for what CBOR cannot encode at all
        if blob == (codec.dumps(old) if old else b"\xa0"):
            return False  # read, or written back as it was (the committed map was checked when it was written)
        for key in new:
            if type(key) is not str:
                raise AppError(f"from_cloud keys must be text, not {type(key).__name__}", key=repr(key)[:100])
        codec.check_subset(new)
        if len(blob) > map_max:
            raise AppError(f"from_cloud would take {len(blob)} bytes, over the limit of {map_max} "
                           "(--device-map-max)", size=len(blob), limit=map_max)
        changed = [k for k, v in new.items() if k not in old or codec.dumps(v) != codec.dumps(old[k])]
        deleted = [k for k in old if k not in new]
        if not changed and not deleted:
            return False
        self.fv = version = (before.fv if before is not None else self.fv) + 1
        for key in changed:
            self.fkeys[key] = version
            self.tombs.pop(key, None)
        for key in deleted:
            self.fkeys.pop(key, None)
            self.tombs.pop(key, None)
            self.tombs[key] = version
        while len(self.tombs) > MAX_TOMBSTONES:
            key = next(iter(self.tombs))
            self.floor = max(self.floor, self.tombs.pop(key))
        return True

    def from_cloud_since(self, have: int) -> tuple[dict[str, Any], list[str], bool]:
        """What a device holding version ``have`` lacks: (values, deleted keys, full). ``full``: replace the copy
        (``have`` below the tombstone floor, or newer than anything this record ever had)."""
        if have == self.fv:
            return {}, [], False
        if have < self.floor or have > self.fv:
            return dict(self.from_cloud), [], True
        fkeys = self.fkeys
        values = {k: v for k, v in self.from_cloud.items() if fkeys.get(k, 0) > have}
        return values, [k for k, ver in self.tombs.items() if ver > have], False

    # -- bundles --------------------------------------------------------------------------------------------

    def to_deliver(self) -> list[StoredBundle]:
        """The bundles the device has not received in its current boot."""
        return [b for b in self.bundles if b.recv != self.boot]

    def finish(self, index: int, ok: bool) -> bool:
        """Record a bundle's result; False if it is not an unfinished bundle (already collected)."""
        for pos, b in enumerate(self.bundles):
            if b.index == index:
                del self.bundles[pos]
                self.add_result(index, ok)
                return True
        return False

    def add_result(self, index: int, ok: bool) -> None:
        """Keep a result (the last MAX_RESULTS)."""
        self.results[index] = ok
        while len(self.results) > MAX_RESULTS:
            del self.results[next(iter(self.results))]

    def pending(self) -> int | None:
        """The newest unfinished bundle's index, or None."""
        return self.bundles[-1].index if self.bundles else None

    def check_cmd(self, method: Any, args: tuple[Any, ...] | list[Any]) -> None:
        """Raise AppError unless the device announced ``method`` with ``len(args)`` arguments."""
        if type(method) is not str:
            raise AppError(f"a command name must be text, not {type(method).__name__}")
        if self.cmds is None:
            raise AppError(f"cannot send command {method[:100]!r}: the device has never started (no commands "
                           "announced)", command=method[:100])
        arity = self.cmds.get(method)
        if arity is None:
            raise AppError(f"the device has no command {method[:100]!r}", command=method[:100])
        if arity != len(args):
            raise AppError(f"command {method!r} takes {arity} arguments, not {len(args)}", command=method)


def device_view(blob: bytes | None) -> dict[str, Any] | None:
    """A device record as `ca-bridge inspect` and the dashboard show it (None: the CA has no device data): both
    maps and versions, boot, commands, the pending (newest unfinished) bundle, and the recent results."""
    if not blob:
        return None
    r = DeviceRecord.decode(blob)
    newest = r.bundles[-1] if r.bundles else None
    return {
        "boot": r.boot,
        "commands": r.cmds,
        "to_cloud": r.to_cloud, "tv": r.tv,
        "from_cloud": r.from_cloud, "fv": r.fv,
        "unfinished": len(r.bundles),
        "pending": None if newest is None else {
            "index": newest.index, "start": newest.start, "mode": newest.mode, "commands": newest.cmds,
            "done": newest.done, "received": newest.recv == r.boot and r.boot > 0},
        "results": [[i, ok] for i, ok in reversed(r.results.items())],  # newest first
    }
