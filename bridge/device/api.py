"""``self.device`` of a running CA method or hook, and :class:`Bundle` (docs/DEVICES.md).

The object works on the transaction's copy of the device record (bridge.device.model): what a method writes is
committed with it, or dropped with it if the method raises. The actor makes that copy only when a method first
touches ``self.device``, so CAs that never do pay nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from bridge import codec
from bridge.device.model import SAFE_MS, DeviceLimits, DeviceRecord, StoredBundle
from bridge.errors import AppError

__all__ = ["Bundle", "DeviceAPI", "wall_ms"]


def wall_ms() -> int:
    """Cloud time: the bridge's wall clock in Unix epoch milliseconds."""
    return time.time_ns() // 1_000_000


class Bundle:
    """Commands to run on the device at times relative to the bundle's start: ``cmd(after_ms, method, *args)``
    chains (``after_ms`` counts from the previous command; the first one's from the start)."""

    __slots__ = ("_record", "cmds", "margin_ms")

    def __init__(self, record: DeviceRecord, margin_ms: int) -> None:
        self._record = record
        self.margin_ms = margin_ms
        self.cmds: list[list[Any]] = []

    def cmd(self, after_ms: int, method: str, *args: Any) -> Bundle:
        """Add a command; raises AppError for a command the device did not announce, the wrong number of
        arguments, or a negative or non-int ``after_ms``."""
        if type(after_ms) is not int or after_ms < 0:
            raise AppError(f"after_ms of command {str(method)[:100]!r} must be a non-negative int, not {after_ms!r}",
                           command=str(method)[:100])
        self._record.check_cmd(method, args)
        codec.check_subset(list(args))
        self.cmds.append([after_ms, method, list(args)])
        return self

    def __len__(self) -> int:
        return len(self.cmds)

    def __repr__(self) -> str:
        return f"Bundle({self.cmds!r}, margin_ms={self.margin_ms})"


class DeviceAPI:
    """``self.device``: both maps, bundles and results of the CA's own gadget (session ``iot``)."""

    __slots__ = ("_limits", "_online", "_record")

    def __init__(self, record: DeviceRecord, limits: DeviceLimits, online: Callable[[], bool]) -> None:
        self._record = record
        self._limits = limits
        self._online = online

    @property
    def to_cloud(self) -> Mapping[str, Any]:
        """The device's latest synced values (read-only)."""
        return MappingProxyType(self._record.to_cloud)

    @property
    def from_cloud(self) -> dict[str, Any]:
        """The values the CA sends the device: write it like a dict; committed with the call, delivered after."""
        return self._record.from_cloud

    @property
    def results(self) -> Mapping[int, bool]:
        """Bundle index -> True (every command ran once, on time, without raising) or False; the last 32."""
        return MappingProxyType(self._record.results)

    @property
    def pending(self) -> int | None:
        """The newest sent bundle not finished yet, or None."""
        return self._record.pending()

    @property
    def online(self) -> bool:
        """The device's presence (session ``iot``)."""
        return self._online()

    @property
    def boot(self) -> int:
        """How many times the device started (0: never)."""
        return self._record.boot

    @property
    def commands(self) -> Mapping[str, int]:
        """The commands the device announced at its last start (name -> number of arguments)."""
        return MappingProxyType(self._record.cmds or {})

    def now_ms(self) -> int:
        """Cloud time in Unix epoch milliseconds (tests replace ``bridge.device.api.wall_ms``)."""
        return wall_ms()

    def bundle(self, margin_ms: int | None = None) -> Bundle:
        """A new empty bundle; ``margin_ms`` (default --bundle-margin) is added to its start when sent."""
        if margin_ms is None:
            margin_ms = self._limits.bundle_margin
        elif type(margin_ms) is not int or margin_ms < 0:
            raise AppError(f"margin_ms must be a non-negative int, not {margin_ms!r}")
        return Bundle(self._record, margin_ms)

    def send(self, bundle: Bundle, offset_ms: int | None = None, at_ms: int | None = None) -> int:
        """Send a bundle; returns its index. Start: ``at_ms`` when given, else now + ``offset_ms`` + margin.
        An identical unfinished bundle (same start and commands) is not sent again: its index is returned."""
        if not isinstance(bundle, Bundle):
            raise AppError("send() takes a Bundle made by self.device.bundle()")
        if not bundle.cmds:
            raise AppError("cannot send an empty bundle")
        if at_ms is not None:
            if type(at_ms) is not int:
                raise AppError(f"at_ms must be an int (Unix epoch ms), not {at_ms!r}")
            start = at_ms
        else:
            if offset_ms is None:
                offset_ms = 0
            elif type(offset_ms) is not int:
                raise AppError(f"offset_ms must be an int, not {offset_ms!r}")
            start = wall_ms() + offset_ms + bundle.margin_ms
        return self._add(start, [list(c) for c in bundle.cmds], "at")

    def apply(self, method: str, *args: Any, safe: bool = False) -> int:
        """Send one command to run on arrival (``safe``: unless it arrives more than 10 minutes late, then it is
        dropped and reported False); returns the bundle index."""
        self._record.check_cmd(method, args)
        codec.check_subset(list(args))
        now = wall_ms()
        return self._add(now + SAFE_MS if safe else now, [[0, method, list(args)]], "safe" if safe else "now")

    def _add(self, start: int, cmds: list[list[Any]], mode: str) -> int:
        record = self._record
        for b in record.bundles:
            if b.same(start, cmds, mode):
                return b.index
        index = record.next_index
        record.next_index = index + 1
        record.bundles.append(StoredBundle(index, start, cmds, mode))
        while len(record.bundles) > self._limits.max_bundles:
            oldest = record.bundles.pop(0)
            record.add_result(oldest.index, False)
        return index

    def __repr__(self) -> str:
        r = self._record
        return f"<device boot={r.boot} tv={r.tv} fv={r.fv} pending={r.pending()}>"
