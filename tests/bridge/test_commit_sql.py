"""Issue 17: the SQLite store writes a batch's rows with multi-row statements (one step each, so its thread gives
the GIL back and takes it again once per statement, not once per row), and the batch still lands whole."""

from __future__ import annotations

from collections import Counter as Tally

from bridge.store import Change, SessionWrite
from bridge.store.sqlite import SQLiteStore


async def test_a_big_batch_takes_a_few_statements_and_keeps_every_row(tmp_path):
    store = SQLiteStore(tmp_path / "b.db")
    await store.open()
    try:
        await store.commit([Change("c0", b"\xa0", {"s": SessionWrite(b"m0", [(1, b"n1")])})])  # a session to extend
        await store.flush()
        seen: Tally[str] = Tally()
        store._db.set_trace_callback(lambda sql: seen.update([sql.split(" VALUES")[0]]))  # type: ignore[union-attr]
        changes = [Change(f"c{i}", bytes([i]), dedup=[(1, "s", f"r{i}", b"reply%d" % i)]) for i in range(40)]
        changes.append(Change("c0", b"\xa1", {"s": SessionWrite(b"m1", [(seq, b"n%d" % seq) for seq in range(2, 39)])},
                              [(2, "s", "again", b"r")]))  # the same CA twice: the later state wins
        await store.commit(changes)
        await store.flush()  # the statements run when the redo log's record is applied to the SQLite file
        store._db.set_trace_callback(None)  # type: ignore[union-attr]
        assert seen["INSERT INTO ca (name, state)"] == 3  # 40 CAs in rows of 16
        assert seen["INSERT OR REPLACE INTO dedup (ca, pos, sid, rid, reply)"] == 3  # 41 records
        assert seen["INSERT OR REPLACE INTO note (ca, sid, seq, args)"] == 3  # 37 notifications
        assert seen["INSERT INTO session (ca, sid, meta)"] == 1
        found = {rec.name: rec for rec in await store.load_all()}
        assert sorted(found) == sorted(f"c{i}" for i in range(40))
        assert found["c0"].state == b"\xa1" and found["c7"].state == b"\x07"
        assert found["c0"].dedup == [(1, "s", "r0", b"reply0"), (2, "s", "again", b"r")]
        assert found["c39"].dedup == [(1, "s", "r39", b"reply39")]
        assert found["c0"].sessions["s"].meta == b"m1"
        assert found["c0"].sessions["s"].notes == [(seq, b"n%d" % seq) for seq in range(1, 39)]
    finally:
        await store.close()


async def test_blobs_are_bound_without_a_failed_adapter_lookup(tmp_path):
    """sqlite3 sends every bytes parameter through its adapter registry (a miss, then two failed attribute lookups,
    a fifth of the store thread's instructions with 16 devices) unless bytes has an adapter: the store registers
    ``bytes.__bytes__``, which returns the very same object, so what is stored is unchanged."""
    import sqlite3

    assert sqlite3.adapters.get((bytes, sqlite3.PrepareProtocol)) == bytes.__bytes__
    store = SQLiteStore(tmp_path / "b.db")
    await store.open()
    try:
        blob = bytes(range(256))
        await store.commit([Change("c", blob, dedup=[(1, "s", "r", blob)])])
        found = await store.load("c")
        assert found is not None and found.state == blob and found.dedup == [(1, "s", "r", blob)]
        assert type(found.state) is bytes
    finally:
        await store.close()
