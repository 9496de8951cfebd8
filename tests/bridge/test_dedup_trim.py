"""Issue 17: a live session's dedup floor reaches the store once it has moved by a window, not on every call, so a
steady call writes the state and its dedup record and no DELETE. The records the store keeps a little longer must
never count again: a loaded CA keeps exactly what memory kept before."""

from __future__ import annotations

import sqlite3
from collections import Counter as Tally

from bridge.session import SessionLimits
from bridge.testing import Harness
from tests.apps import Counter


def _statements(h: Harness) -> Tally[str]:
    """Count the store's statements on the CAs' rows by their first two words from now on (sqlite3's trace
    callback)."""
    seen: Tally[str] = Tally()
    db = h.store._db  # type: ignore[attr-defined]
    assert isinstance(db, sqlite3.Connection)
    db.set_trace_callback(lambda sql: "INTO meta" in sql or seen.update([" ".join(sql.split()[:2])]))  # (not the
    # redo log's mark, which each application writes)
    return seen


async def test_steady_calls_delete_old_dedup_records_once_per_window(tmp_path):
    async with Harness(Counter, db=tmp_path / "s.db") as h:
        for i in range(100):  # past the CA's window of 64: from here on every call drops a record in memory
            await h.call("c1", "default", "record", f"warm{i}")
        await h.store.flush()
        seen = _statements(h)
        for i in range(80):
            await h.call("c1", "default", "record", f"t{i}", request_id=f"t{i}")
            await h.store.flush()  # each call's record applied alone, as one batch
        assert seen["INSERT INTO"] == 80 and seen["INSERT OR"] == 80  # the state, the dedup record
        assert 80 // 8 - 1 <= seen["DELETE FROM"] <= 80 // 8 + 1  # one floor per window (8), not one per call
        actor = h.runtime.actors["c1"]
        kept = sorted(actor.dedup)
        on_disk = len((await h.store.load("c1")).dedup)
        assert len(kept) == 64 <= on_disk < 64 + 8  # at most a window more in the store
        await h.restart()
        assert sorted(h.runtime.actors["c1"].dedup) == kept
        assert await h.call("c1", "default", "record", "t79", request_id="t79") == 1  # replayed


async def test_records_left_in_the_store_do_not_count_after_a_restart(tmp_path):
    """Memory dropped a record whose floor was not written yet: after a restart its retry runs again, as it would
    have before the restart, instead of being answered from the record the store still held."""
    limits = SessionLimits(dedup_window=4)  # a session keeps its last 4, the CA its last 32
    async with Harness(Counter, db=tmp_path / "r.db", limits=limits) as h:
        for i in range(45):
            await h.call("c1", "s", "record", f"t{i}", request_id=f"r{i}")
        actor = h.runtime.actors["c1"]
        kept = sorted(actor.dedup)
        stored = sorted((sid, rid) for _, sid, rid, _ in (await h.store.load("c1")).dedup)
        extra = sorted(set(stored) - set(kept))
        assert len(kept) == 32 and extra  # the store still holds records that memory dropped
        await h.restart()
        assert sorted(h.runtime.actors["c1"].dedup) == kept
        sid, rid = extra[0]
        token = f"t{rid[1:]}"
        assert await h.call("c1", sid, "record", token, request_id=rid) == 2  # ran again: not replayed


async def test_a_collected_session_leaves_no_records_behind_for_its_next_life(tmp_path):
    """A session collected while its floor lagged, then recreated with one call: a restart loads the same records
    memory holds (none of its first life counts as its last window)."""
    limits = SessionLimits(max_sessions=2, dedup_window=4)
    async with Harness(Counter, db=tmp_path / "c.db", limits=limits) as h:
        for i in range(41):  # its floor lags behind memory's by up to a window
            await h.call("c1", "s", "record", f"t{i}", request_id=f"r{i}")
        await h.call("c1", "s", "notify_to", "s", "pending", request_id="n")  # collectable: a pending notification
        for i in range(40):  # two more sessions collect s; their calls push s's records out of the CA's window
            await h.call("c1", f"o{i % 2}", "incr", request_id=f"o{i}")
        assert "s" not in h.sessions("c1")
        await h.call("c1", "s", "incr", request_id="again")  # s lives again, with one call
        actor = h.runtime.actors["c1"]
        kept = sorted(actor.dedup)
        assert [k for k in kept if k[0] == "s"] == [("s", "again")]
        await h.restart()
        assert sorted(h.runtime.actors["c1"].dedup) == kept
        assert await h.call("c1", "s", "record", "t40", request_id="r40") == 2  # its first life is forgotten
