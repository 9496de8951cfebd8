"""A notification writes its note, not its session's row: while notifications are queued the newest carries the
session's next sequence number, and the row is written when another of its fields changes or the queue runs empty
(bridge.session.SessionData). Sequence numbers stay contiguous across restarts in every case."""

from __future__ import annotations

import sqlite3

from bridge import codec
from bridge.testing import Harness
from tests.apps import Teller


async def _row_seq(h: Harness, path, ca: str, sid: str) -> int:
    await h.store.flush()  # the redo log's records into the SQLite file, read below
    with sqlite3.connect(path) as db:
        (meta,) = db.execute("SELECT meta FROM session WHERE ca = ? AND sid = ?", (ca, sid)).fetchone()
    return codec.loads(meta)[4]


async def _note_seqs(h: Harness, path, ca: str, sid: str) -> list[int]:
    await h.store.flush()
    with sqlite3.connect(path) as db:
        return [r[0] for r in db.execute("SELECT seq FROM note WHERE ca = ? AND sid = ? ORDER BY seq", (ca, sid))]


async def test_notifications_write_notes_and_the_row_catches_up_when_the_queue_empties(tmp_path):
    path = tmp_path / "n.db"
    async with Harness(Teller, db=path) as h:
        await h.call("c", "dev", "hello")  # creates session dev: its row holds next_seq 1
        await h.call("c", "dev", "unbounded")
        assert await _row_seq(h, path, "c", "dev") == 1
        await h.call("c", "x", "tell", 3)
        await h.call("c", "x", "tell", 2)
        assert await _note_seqs(h, path, "c", "dev") == [1, 2, 3, 4, 5]
        assert await _row_seq(h, path, "c", "dev") == 1  # not rewritten by the notifications: the notes carry next_seq

        await h.restart()
        assert h.outq("c", "dev") == [[1], [2], [3], [4], [5]]
        await h.call("c", "x", "tell", 1)
        assert await _note_seqs(h, path, "c", "dev") == [1, 2, 3, 4, 5, 6]  # continues after a load

        await h.ack("c", "dev", 4)  # notes left: no row write needed
        assert await _note_seqs(h, path, "c", "dev") == [5, 6] and await _row_seq(h, path, "c", "dev") == 1
        await h.ack("c", "dev", 6)  # the queue runs empty: the row takes next_seq now
        assert await _note_seqs(h, path, "c", "dev") == [] and await _row_seq(h, path, "c", "dev") == 7

        await h.restart()
        assert h.outq("c", "dev") == []
        assert await h.sync("c", "dev", 6) == [{"t": "sync", "first": 7, "next": 7}]
        await h.call("c", "x", "tell", 1)
        assert await _note_seqs(h, path, "c", "dev") == [7]  # no seq reused after an empty queue and a restart


async def test_a_row_written_for_another_field_takes_the_current_next_seq(tmp_path):
    path = tmp_path / "n.db"
    async with Harness(Teller, db=path) as h:
        await h.call("c", "dev", "hello")
        await h.call("c", "x", "tell", 2)
        await h.call("c", "dev", "unbounded")  # the limit changed: the row is written, with next_seq 3
        assert await _row_seq(h, path, "c", "dev") == 3
        await h.ack("c", "dev", 2)
        assert await _row_seq(h, path, "c", "dev") == 3  # the queue ran empty, but the row holds next_seq already
        await h.restart()
        await h.call("c", "x", "tell", 1)
        assert await _note_seqs(h, path, "c", "dev") == [3]
