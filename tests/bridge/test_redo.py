"""The SQLite store's redo log (bridge.store.redo): a commit is durable once its record is appended, the SQLite file
catches up later, and whatever the files hold when the bridge dies, opening them again gives every acknowledged
commit and nothing else.

A "crash image" below is a copy of the store's files taken while the store is open (nothing closed, nothing
flushed): what the disk holds when the process is killed, since nothing is buffered in the process. The automatic
application is held off (APPLY_S) so that each image has a known part in the SQLite file and a known part only in
the log (``flush`` applies on demand).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.errors import StoreError
from bridge.store import Backlog, CARecord, Change, MemoryStore, SessionWrite
from bridge.store import redo as redo_module
from bridge.store import sqlite as sqlite_module
from bridge.store.redo import read_records
from bridge.store.sqlite import SQLiteStore

FILES = ("s.db", "s.db-wal", "s.db-shm", "s.db.redo.0", "s.db.redo.1")


@pytest.fixture
def no_timer(monkeypatch):
    monkeypatch.setattr(sqlite_module, "APPLY_S", 3600.0)
    monkeypatch.setattr(sqlite_module, "APPLY_MAX", 10**9)


def image(src: Path, dst: Path) -> Path:
    """Copy the store's files as they are on disk now (a process killed at this instant leaves exactly these)."""
    dst.mkdir()
    for name in FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    return dst / "s.db"


async def contents(path: Path, read_only: bool = False) -> dict[str, CARecord]:
    store = SQLiteStore(path, read_only=read_only)
    await store.open()
    try:
        return {rec.name: rec for rec in await store.load_all()}
    finally:
        await store.close()


async def model(batches: list[list[Change]]) -> dict[str, CARecord]:
    memory = MemoryStore()
    for batch in batches:
        await memory.commit(batch)
    return {rec.name: rec for rec in await memory.load_all()}


def sql_states(path: Path) -> dict[str, bytes]:
    """What the SQLite file alone holds (a reader that knows nothing of the log)."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT name, state FROM ca"))


async def test_a_commit_is_in_the_log_at_once_and_in_the_sqlite_file_after_a_flush(tmp_path, no_timer):
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.commit([Change("a", b"\x01", {"s": SessionWrite(b"m", [(1, b"n")])}, [(1, "s", "r", b"p")])])
        assert sql_states(tmp_path / "s.db") == {}
        [(seq, [change])] = read_records(tmp_path / "s.db", 0)[0]
        assert (change.ca, change.state, change.sessions["s"].notes, change.dedup) == (
            "a", b"\x01", [(1, b"n")], [(1, "s", "r", b"p")])
        assert store.unapplied() == 1 and isinstance(store, Backlog)  # what /metrics shows
        await store.flush()
        assert store.unapplied() == 0
        assert sql_states(tmp_path / "s.db") == {"a": b"\x01"}
        assert read_records(tmp_path / "s.db", store.applied)[0] == []  # nothing beyond the mark
        assert store.applied == seq
    finally:
        await store.close()


async def test_records_are_applied_on_their_own_soon_after(tmp_path, monkeypatch):
    monkeypatch.setattr(sqlite_module, "APPLY_S", 0.02)
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.commit([Change("a", b"\x01")])
        for _ in range(500):
            if sql_states(tmp_path / "s.db"):
                break
            await asyncio.sleep(0.01)
        assert sql_states(tmp_path / "s.db") == {"a": b"\x01"}
    finally:
        await store.close()


async def test_loads_names_and_register_see_commits_not_applied_yet(tmp_path, no_timer):
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.commit([Change("a", b"\x01", {"s": SessionWrite(b"m")})])
        await store.commit([Change("b", b"\x02")])
        assert sql_states(tmp_path / "s.db") == {}
        assert (await store.load("b")).state == b"\x02"  # applies what waits (b's record) first
        assert await store.register("a") is False  # a exists: committed, though not in the file until now
        assert await store.names() == ["a", "b"]
        assert (await store.load("a")).sessions["s"].meta == b"m"
        assert await store.register("c") is True
    finally:
        await store.close()


async def test_a_clean_stop_applies_everything_and_leaves_nothing_to_recover(tmp_path, no_timer):
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    await store.commit([Change("a", b"\x01")])
    await store.commit([Change("a", b"\x02")])
    await store.close()
    assert sql_states(tmp_path / "s.db") == {"a": b"\x02"}
    assert read_records(tmp_path / "s.db", 0)[0] == []  # the heads are wiped: the next open reads nothing


async def test_a_crash_image_recovers_every_commit_and_the_read_only_view_sees_them_before(tmp_path, no_timer):
    store = SQLiteStore(tmp_path / "live" / "s.db")
    (tmp_path / "live").mkdir()
    await store.open()
    try:
        batches = [
            [Change("a", b"\x01", {"s": SessionWrite(b"m", [(1, b"x"), (2, b"y")])}, [(1, "s", "r1", b"p")])],
            [Change("b", b"\x02"), Change("a", None, {"s": SessionWrite(None, [(3, b"z")], note_floor=2)})],
        ]
        for batch in batches:
            await store.commit(batch)
        await store.flush()  # these two in the SQLite file
        batches += [
            [Change("a", b"\x03", {"s": SessionWrite(purge=True), "t": SessionWrite(b"mt")}, [(2, "t", "r2", b"q")],
                    {"s": 2})],
            [Change("c", b"\x04", device=b"dev")],
        ]
        for batch in batches[2:]:
            await store.commit(batch)  # these two only in the log
        crashed = image(tmp_path / "live", tmp_path / "crash")
        want = await model(batches)
        assert set(sql_states(crashed)) == {"a", "b"}
        assert await contents(crashed, read_only=True) == want  # inspect's view: the file plus the log
        assert await contents(crashed) == want  # recovery applies the log
        assert sql_states(crashed) == {"a": b"\x03", "b": b"\x02", "c": b"\x04"}
        assert await contents(crashed) == want  # and a second open finds nothing more to do
    finally:
        await store.close()


async def test_a_torn_last_record_is_not_a_commit(tmp_path, no_timer):
    (tmp_path / "live").mkdir()
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    try:
        for i in range(3):
            await store.commit([Change("a", bytes([i]))])
        crashed = image(tmp_path / "live", tmp_path / "crash")
    finally:
        await store.close()
    assert [seq for seq, _ in read_records(crashed, 0)[0]] == [1, 2, 3]
    tear(crashed.with_name("s.db.redo.0"))
    assert [seq for seq, _ in read_records(crashed, 0)[0]] == [1, 2]
    assert (await contents(crashed))["a"].state == b"\x01"


def tear(log: Path) -> None:
    """Flip the last byte of the file's last current record (a write the disk did not finish)."""
    data = bytearray(log.read_bytes())
    _, _, end = redo_module._scan(bytes(data))[-1]
    data[end - 1] ^= 0xFF
    log.write_bytes(bytes(data))


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("failure", ["flush", "short write"])
async def test_a_failed_append_is_not_a_commit_and_the_next_takes_its_place(tmp_path, no_timer, monkeypatch,
                                                                           failure, direct):
    """The disk fails the flush, or the write writes less than asked (either way: around the page cache or
    through it)."""
    if not direct:
        monkeypatch.setattr(redo_module, "DIRECT", 0)
    (tmp_path / "live").mkdir()
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    try:
        assert store._redo is not None and store._redo.direct is direct
        await store.commit([Change("a", b"\x01")])
        name = "fdatasync" if failure == "flush" else "pwrite"
        real = getattr(redo_module.os, name)
        calls = 0

        def failing(fd: int, *args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1 and failure == "flush":
                raise OSError(errno.EIO, "I/O error")
            done = real(fd, *args)
            return done - 1 if calls == 1 else done

        monkeypatch.setattr(redo_module.os, name, failing)
        with pytest.raises(StoreError, match=r"commit failed: .*(I/O error|short write)"):
            await store.commit([Change("a", b"\x02")])
        crashed = image(tmp_path / "live", tmp_path / "crash")
        assert (await contents(crashed))["a"].state == b"\x01"  # the failed batch is not there
        await store.commit([Change("a", b"\x03")])
        assert [seq for seq, _ in read_records(tmp_path / "live" / "s.db", 0)[0]] == [1, 2]
        crashed = image(tmp_path / "live", tmp_path / "crash2")
        assert (await contents(crashed))["a"].state == b"\x03"
    finally:
        await store.close()


async def test_a_value_that_cannot_be_stored_fails_the_batch_alone(tmp_path, no_timer):
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        with pytest.raises(StoreError, match="commit failed"):
            await store.commit([Change("a", b"\x01", {"s": SessionWrite(b"m", [(1, object())])})])  # type: ignore
        await store.commit([Change("b", b"\x02")])
        assert await store.names() == ["b"]
    finally:
        await store.close()


def _random_batch(rng: random.Random, cas: dict[str, dict[str, int]], pos: dict[str, int]) -> list[Change]:
    """A batch shaped like the actors' changes: states, dedup records with floors, sessions created with a meta
    row, notes numbered on, floors rising, now and then a purge."""
    batch = []
    for _ in range(rng.randint(1, 4)):
        ca = f"c{rng.randint(0, 5)}"
        sessions = cas.setdefault(ca, {})
        change = Change(ca, rng.randbytes(rng.randint(1, 40)))
        sid = f"s{rng.randint(0, 2)}"
        pos[ca] = pos.get(ca, 0) + 1
        change.dedup.append((pos[ca], sid, f"r{pos[ca]}", rng.randbytes(8)))
        if rng.random() < 0.2:
            change.dedup_floors[sid] = pos[ca] - rng.randint(0, 3)
        if rng.random() < 0.6:
            write = SessionWrite()
            if sid not in sessions or rng.random() < 0.1:
                write.purge = sid in sessions and rng.random() < 0.5
                write.meta = rng.randbytes(6)
                sessions[sid] = sessions.get(sid, 0) if not write.purge else 0
            nxt = sessions[sid]
            write.notes = [(nxt + k + 1, rng.randbytes(5)) for k in range(rng.randint(0, 3))]
            sessions[sid] = nxt + len(write.notes)
            if rng.random() < 0.3:
                write.note_floor = rng.randint(0, sessions[sid])
            change.sessions[sid] = write
        batch.append(change)
    return batch


@pytest.mark.parametrize(("seed", "direct"), [(1, True), (2, True), (3, True), (1, False), (2, False)])
async def test_random_commits_crashed_anywhere_recover_exactly_across_both_files(tmp_path, no_timer, monkeypatch,
                                                                               seed, direct):
    """Small files, so the log switches files and grows them many times; the SQLite file is caught up at random
    moments; at random moments a crash image must give exactly the model's contents (inspect's view too). Written
    around the page cache (O_DIRECT, 4 KiB blocks written again as records fill them) and through it."""
    monkeypatch.setattr(redo_module, "SWITCH_AT", 1500)
    monkeypatch.setattr(redo_module, "FILE_BYTES", 2048)
    if not direct:
        monkeypatch.setattr(redo_module, "DIRECT", 0)
    rng = random.Random(seed)
    (tmp_path / "live").mkdir()
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    assert store._redo is not None and store._redo.direct is direct
    batches: list[list[Change]] = []
    cas: dict[str, dict[str, int]] = {}
    pos: dict[str, int] = {}
    images = 0
    try:
        for i in range(300):
            batch = _random_batch(rng, cas, pos)
            await store.commit(batch)
            batches.append(batch)
            if rng.random() < 0.1:
                await store.flush()
            if rng.random() < 0.05 or i == 299:
                images += 1
                crashed = image(tmp_path / "live", tmp_path / f"crash{images}")
                want = await model(batches)
                assert await contents(crashed, read_only=True) == want, i
                assert await contents(crashed) == want, i
        files = redo_module._paths(tmp_path / "live" / "s.db")
        assert all(f.stat().st_size >= 2048 for f in files)
    finally:
        await store.close()
    assert await contents(tmp_path / "live" / "s.db") == await model(batches)


async def test_a_gap_in_the_log_ends_recovery_there_and_numbering_goes_on_past_it(tmp_path, no_timer, monkeypatch,
                                                                                caplog):
    """The first records in one file with the last of them torn, the rest in the other (only a power loss under
    synchronous=NORMAL, which never flushes the log, can leave that): recovery applies what comes before the gap,
    warns, and numbers new records past everything the files held."""
    monkeypatch.setattr(redo_module, "SWITCH_AT", 150)  # a few records per file
    (tmp_path / "live").mkdir()
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    try:
        for i in range(1, 7):
            await store.commit([Change("a", bytes([i]) * 20)])
        crashed = image(tmp_path / "live", tmp_path / "crash")  # nothing applied: no flush, no timer
    finally:
        await store.close()
    first, second = ([seq for seq, _, _ in redo_module._scan(p.read_bytes())] for p in redo_module._paths(crashed))
    assert len(first) >= 2 and first + second == [1, 2, 3, 4, 5, 6]  # the log went on in the second file
    tear(redo_module._paths(crashed)[0])
    with caplog.at_level(logging.WARNING, logger="bridge.store"):
        assert (await contents(crashed))["a"].state == bytes([len(first) - 1]) * 20
    assert "gap" in caplog.text
    store = SQLiteStore(crashed)
    await store.open()
    try:
        assert store.applied == 6  # past every number the files held
        await store.commit([Change("a", b"\x09")])
    finally:
        await store.close()
    assert (await contents(crashed))["a"].state == b"\x09"


def test_a_reused_file_reads_only_up_to_where_its_new_records_end(tmp_path):
    """Writing a file over from its start leaves old records after the new ones, whole and with good CRCs: their
    numbers do not follow on, which is where reading stops."""
    log = redo_module.RedoLog(tmp_path / "s.db", flush=False)
    log.start(0)
    try:
        for i in range(4):
            log.append([Change("a", bytes([i]))])
        log.applied = 10  # (as if all were applied) the next record goes back to the start of the first file
        log.seq = 10
        log._offset = 0
        log.append([Change("a", b"\x09")])  # the same size as each old one: record 2 starts right after it
    finally:
        log.close()
    data = log.paths[0].read_bytes()
    assert [seq for seq, _, _ in redo_module._scan(data)] == [11]
    assert read_records(tmp_path / "s.db", 10)[0][0][0] == 11


async def test_the_tools_store_sees_a_stopped_bridges_log(tmp_path, no_timer):
    """`ca-bridge create` and `ca-bridge migrate` open the file as a tool (exclusive=False, no log writer): after a
    bridge was killed they still see its last commits, which only its log holds."""
    (tmp_path / "live").mkdir()
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    try:
        await store.commit([Change("a", b"\x01")])
        crashed = image(tmp_path / "live", tmp_path / "crash")
    finally:
        await store.close()
    tool = SQLiteStore(crashed, exclusive=False)
    await tool.open()
    try:
        assert await tool.names() == ["a"]
        assert (await tool.load("a")).state == b"\x01"
        assert await tool.register("a") is False
        assert await tool.register("b") is True
        assert [r.name for r in await tool.load_all()] == ["a", "b"]
    finally:
        await tool.close()
    assert {n: r.state for n, r in (await contents(crashed)).items()} == {"a": b"\x01", "b": b""}


async def test_a_failed_application_keeps_the_records_and_a_load_that_needs_them_fails(tmp_path, no_timer, caplog):
    """The SQLite file refuses an application (a full disk, say): the commits stay durable in the log and waiting;
    a load that needs them fails rather than read without them, and the next application takes them all."""
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.commit([Change("a", b"\x01")])
        await store.commit([Change("b", b"\x02")])
        write = store._write
        failures = 0

        def refusing(changes, mark=0):
            nonlocal failures
            if failures == 0:
                failures += 1
                raise StoreError("disk full")
            write(changes, mark)

        store._write = refusing  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="bridge.store"), pytest.raises(StoreError, match="redo log"):
            await store.load("a")
        assert "stay in the redo log" in caplog.text
        assert sql_states(tmp_path / "s.db") == {}
        assert (await store.load("b")).state == b"\x02"  # the retry applies both, in order
        assert sql_states(tmp_path / "s.db") == {"a": b"\x01", "b": b"\x02"}
    finally:
        await store.close()


async def test_a_commit_while_the_store_closes_is_refused_not_lost(tmp_path):
    """commit_soon between the start of close() and its end answers "store is closed" (before, a batch queued
    behind the log thread's stop would never have been answered)."""
    store = SQLiteStore(tmp_path / "s.db")
    await store.open()
    await store.commit([Change("a", b"\x01")])
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)  # close() has stopped taking appends and waits for the log's thread
    outcome: list[object] = []
    answered = asyncio.Event()
    store.commit_soon([Change("a", b"\x02")], lambda o: (outcome.append(o), answered.set()),
                      asyncio.get_running_loop())
    await asyncio.wait_for(answered.wait(), 10)
    await closing
    assert len(outcome) == 1 and isinstance(outcome[0], StoreError)
    assert sql_states(tmp_path / "s.db") == {"a": b"\x01"}


async def test_a_tool_reads_a_stopped_bridges_log_once_for_many_loads(tmp_path, no_timer, monkeypatch):
    """`ca-bridge migrate` loads CA after CA: the log is read again only when a file (or the mark) changed."""
    (tmp_path / "live").mkdir()
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    try:
        await store.commit([Change("a", b"\x01"), Change("b", b"\x02")])
        crashed = image(tmp_path / "live", tmp_path / "crash")
    finally:
        await store.close()
    reads = 0
    real = redo_module.read_records

    def counting(base, after):
        nonlocal reads
        reads += 1
        return real(base, after)

    monkeypatch.setattr(redo_module, "read_records", counting)
    tool = SQLiteStore(crashed, exclusive=False)
    await tool.open()
    try:
        assert [(await tool.load(n)).state for n in ("a", "b")] == [b"\x01", b"\x02"]
        assert await tool.load("c") is None
        assert await tool.names() == ["a", "b"]
        assert reads == 1
        log = crashed.with_name("s.db.redo.1")
        log.write_bytes(log.read_bytes())  # rewritten (no new record): read again, same answer
        assert (await tool.load("a")).state == b"\x01" and reads == 2
    finally:
        await tool.close()


async def test_a_file_system_that_refuses_direct_writes_gets_them_through_the_page_cache(tmp_path, no_timer,
                                                                                     monkeypatch):
    real = redo_module.os.open

    def refusing(path, flags, *args):
        if flags & redo_module.DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(path, flags, *args)

    (tmp_path / "live").mkdir()
    monkeypatch.setattr(redo_module.os, "open", refusing)
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    try:
        assert store._redo is not None and not store._redo.direct
        await store.commit([Change("a", b"\x01")])
        await store.commit([Change("b", b"\x02")])
        crashed = image(tmp_path / "live", tmp_path / "crash")
    finally:
        await store.close()
    assert {n: r.state for n, r in (await contents(crashed)).items()} == {"a": b"\x01", "b": b"\x02"}


async def test_direct_writes_keep_the_records_before_them_in_a_block_and_take_records_larger_than_the_buffer(
        tmp_path, no_timer):
    """Records smaller than a block share it (each write puts the earlier ones back, unchanged); a record larger
    than the direct buffer gets a larger one, and the next records go on right after it."""
    (tmp_path / "live").mkdir()
    store = SQLiteStore(tmp_path / "live" / "s.db")
    await store.open()
    batches = [[Change("a", bytes([i]) * 50)] for i in range(100)]  # about 70 bytes each: many to a block
    batches.insert(40, [Change("big", bytes(range(256)) * 1000)])  # 256,000 bytes: past the 64 KiB buffer
    try:
        assert store._redo is not None and store._redo.direct
        for n, batch in enumerate(batches):
            await store.commit(batch)
            if n in (10, 40, 41, len(batches) - 1):
                crashed = image(tmp_path / "live", tmp_path / f"crash{n}")
                assert await contents(crashed, read_only=True) == await model(batches[:n + 1]), n
        assert store._redo._buffer is not None and len(store._redo._buffer) == redo_module.BUFFER
    finally:
        await store.close()
    assert [seq for seq, _ in read_records(crashed, 0)[0]] == list(range(1, 102))


def test_a_failed_direct_write_wipes_a_header_that_crosses_into_the_next_block(tmp_path, monkeypatch):
    log = redo_module.RedoLog(tmp_path / "s.db", flush=True)
    log.start(0)
    try:
        assert log.direct
        log._offset = redo_module.BLOCK - 8  # (the file holds zeros there, as the buffer does)

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "I/O error")

        monkeypatch.setattr(redo_module.os, "fdatasync", failing)
        with pytest.raises(OSError):
            log.append([Change("a", b"\x01" * 100)])
        monkeypatch.undo()
        at = redo_module.BLOCK - 8
        assert log.paths[0].read_bytes()[at:at + 16] == bytes(16)  # all of the header, in both blocks
        assert log.append([Change("a", b"\x02")]) == 1  # the same place and number
        head = log.paths[0].read_bytes()[at:at + 16]
        assert redo_module._HEAD.unpack(head)[2] == 1
    finally:
        log.close()

