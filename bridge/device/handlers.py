"""The device kinds' effects on a device record (the actor runs them in a CA transaction): dstart and dsync, and
the answers they get (docs/PROTOCOL.md, Device messages). Pure: no I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridge import codec
from bridge.device.model import DeviceRecord
from bridge.errors import CodecError
from bridge.protocol import DStart, DSync

__all__ = ["SyncOutcome", "apply_dstart", "apply_dsync", "dstart_answer", "dsync_answer"]


def apply_dstart(record: DeviceRecord, req: DStart) -> bool:
    """Record the announced commands; True if this is a new start (boot bumped, the hook runs), False for a
    re-sent announcement of the current start. Every unfinished bundle is delivered again in a new boot."""
    record.cmds = dict(req.cmds)
    if req.id == record.start_id:
        return False
    record.boot += 1
    record.start_id = req.id
    return True


def dstart_answer(record: DeviceRecord) -> dict[str, Any]:
    """Both maps, their versions, the boot and every bundle the device must (re)run."""
    return {"boot": record.boot, "tc": record.to_cloud, "tv": record.tv, "fc": record.from_cloud, "fv": record.fv,
            "b": [b.wire(record.boot) for b in record.to_deliver()]}


@dataclass(slots=True)
class SyncOutcome:
    """What a dsync did: the to_cloud keys changed (the hook's argument), whether a resync is asked, and the
    counts for the metrics."""

    changed: set[str] = field(default_factory=set)
    delta: bool = False  # a to_cloud delta (or full map) was applied
    resync: bool = False
    finished: list[bool] = field(default_factory=list)  # results of the bundles this sync finished


def apply_dsync(record: DeviceRecord, req: DSync, map_max: int) -> SyncOutcome:
    """Apply a sync of the current boot (the caller checked ``req.boot``). Raises CodecError if the device's
    to_cloud would pass ``map_max`` bytes (nothing is changed then)."""
    out = SyncOutcome()
    if req.d or req.x or req.full:
        current = record.tv
        if req.full:
            new = dict(req.d)
            _check_size(new, map_max)
            old = record.to_cloud
            out.changed = {k for k in old.keys() | new.keys()
                           if k not in old or k not in new or not _same(old[k], new[k])}
            record.to_cloud, record.tv, out.delta = new, req.tv, True
        elif req.tv <= current:
            pass  # an old or repeated delta
        elif req.tb == current:
            new = dict(record.to_cloud)
            old = record.to_cloud
            for key, value in req.d.items():
                if key not in old or not _same(old[key], value):
                    out.changed.add(key)
                new[key] = value
            for key in req.x:
                if new.pop(key, _MISSING) is not _MISSING:
                    out.changed.add(key)
            _check_size(new, map_max)
            record.to_cloud, record.tv, out.delta = new, req.tv, True
        else:
            out.resync = True  # a gap: the device sends its whole map next
    for index in req.ba:
        for b in record.bundles:
            if b.index == index:
                b.recv = record.boot
    for index, pos in req.bd:
        for b in record.bundles:
            if b.index == index and pos < len(b.cmds) and pos not in b.done:
                b.done.append(pos)
                b.done.sort()
    for index, ok in req.br:
        if record.finish(index, ok):
            out.finished.append(ok)
    return out


def dsync_answer(record: DeviceRecord, req: DSync, resync: bool) -> dict[str, Any]:
    """What the device lacks: its to_cloud version as stored, the from_cloud changes since its version, the bundles
    to deliver, and whether to send its whole to_cloud."""
    fc, fx, full = record.from_cloud_since(req.fv)
    answer: dict[str, Any] = {"tv": record.tv, "fv": record.fv}
    if fc:
        answer["fc"] = fc
    if fx:
        answer["fx"] = fx
    if full:
        answer["ffull"] = True
    bundles = record.to_deliver()
    if bundles:
        answer["b"] = [b.wire(record.boot) for b in bundles]
    if resync:
        answer["resync"] = True
    return answer


_MISSING: Any = object()


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and (a == b if type(a) in (str, int, bool, bytes) else codec.dumps(a) == codec.dumps(b))


def _check_size(to_cloud: dict[str, Any], map_max: int) -> None:
    size = len(codec.dumps(to_cloud))
    if size > map_max:
        raise CodecError(f"to_cloud would take {size} bytes, over the limit of {map_max} (--device-map-max)")
