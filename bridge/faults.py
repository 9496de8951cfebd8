"""Deterministic crash points for reliability tests. Off unless CA_BRIDGE_FAULTS is set.

``CA_BRIDGE_FAULTS="after_commit=3"`` makes the process SIGKILL itself the third time it reaches the point
``after_commit``. Several points are separated by commas. Points:

* ``in_commit``: inside a commit, before it is durable: PostgreSQL's transaction before COMMIT (the batch vanishes),
  SQLite's redo log after the record's write and before its fdatasync (the write outlives a killed process); no
  reply has left either way;
* ``after_commit``: the batch is durable, nothing of it is published yet;
* ``after_publish``: the batch's replies and notifications are handed to MQTT (maybe not yet sent);
* ``in_ack``: an ack was applied in memory but not committed;
* ``in_apply``: SQLite only, inside the transaction that applies the redo log to the file, before COMMIT (the
  transaction is lost; opening the store replays the log).
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "armed", "hit"]

POINTS = frozenset({"in_commit", "after_commit", "after_publish", "in_ack", "in_apply"})


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        name, _, count = item.partition("=")
        if name not in POINTS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"CA_BRIDGE_FAULTS: bad item {item!r} (points: {', '.join(sorted(POINTS))})")
        armed[name] = int(count)
    return armed


_armed = _parse(os.environ.get("CA_BRIDGE_FAULTS", ""))


def armed(point: str) -> bool:
    """True if ``point`` will kill the process some time (code may then take a slower, interruptible path)."""
    return bool(_armed) and _armed.get(point, 0) > 0


def hit(point: str) -> None:
    """Count one pass through ``point``; SIGKILL this process when its count runs out."""
    if not _armed or point not in _armed:
        return
    _armed[point] -= 1
    if _armed[point] == 0:
        os.write(2, f"CA_BRIDGE_FAULTS: killing the bridge at {point}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
