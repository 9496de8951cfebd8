"""The SQLite store: atomic batches, merged writes, purge and recreate, integrity."""

from __future__ import annotations

import sqlite3

import pytest

from bridge.errors import StoreError
from bridge.store.sqlite import SQLiteStore
from bridge.store import Change, MemoryStore, SessionWrite, merge


@pytest.fixture(params=["sqlite", "memory"])
async def store(request, tmp_path):
    s = SQLiteStore(tmp_path / "s.db") if request.param == "sqlite" else MemoryStore()
    await s.open()
    yield s
    await s.close()


def write(meta=b"m", notes=(), floor=0, purge=False):
    return SessionWrite(meta, list(notes), floor, purge)


async def test_round_trip(store):
    await store.commit([Change("a", b"\xa0", {"s": write(notes=[(1, b"n1"), (2, b"n2")])}, [(1, "s", "r1", b"p")])])
    await store.commit([Change("a", None, {"s": write(meta=None, notes=[(3, b"n3")], floor=2)}, [(2, "s", "r2", b"q")],
                               {"s": 2})])
    rec = await store.load("a")
    assert rec.state == b"\xa0"
    assert rec.sessions["s"].notes == [(2, b"n2"), (3, b"n3")]
    assert rec.dedup == [(2, "s", "r2", b"q")]
    assert await store.load("missing") is None
    assert await store.names() == ["a"]


async def test_purging_a_session_keeps_its_dedup_records(store):
    await store.commit([Change("a", b"\xa0", {"s": write()}, [(1, "s", "r1", b"p")])])
    await store.commit([Change("a", None, {"s": SessionWrite(purge=True)})])
    rec = await store.load("a")
    assert rec.sessions == {} and rec.dedup == [(1, "s", "r1", b"p")]


async def test_upgrade_from_per_session_dedup_schema(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE ca (name TEXT PRIMARY KEY, state BLOB NOT NULL) WITHOUT ROWID;"
        "CREATE TABLE dedup (ca TEXT NOT NULL, sid TEXT NOT NULL, pos INTEGER NOT NULL, rid TEXT NOT NULL,"
        " reply BLOB NOT NULL, PRIMARY KEY (ca, sid, pos)) WITHOUT ROWID;"
        "INSERT INTO ca VALUES ('a', x'a0'); INSERT INTO dedup VALUES ('a', 's', 1, 'r', x'00');"
        "PRAGMA user_version = 1;")
    db.close()
    s = SQLiteStore(path)
    await s.open()
    await s.commit([Change("a", None, {}, [(1, "s", "r2", b"p")])])
    assert (await s.load("a")).dedup == [(1, "s", "r2", b"p")]
    await s.close()


async def test_purge_then_recreate_in_one_batch(store):
    await store.commit([Change("a", b"\xa0", {"s": write(notes=[(1, b"old")])})])
    await store.commit([
        Change("a", None, {"s": SessionWrite(purge=True)}),
        Change("a", None, {"s": write(meta=b"new", notes=[(1, b"fresh")], purge=True)}),
    ])
    rec = await store.load("a")
    assert rec.sessions["s"].meta == b"new"
    assert rec.sessions["s"].notes == [(1, b"fresh")]
    await store.commit([Change("a", None, {"s": SessionWrite(purge=True)})])
    assert (await store.load("a")).sessions == {}


def test_merge_keeps_the_last_state_and_all_notes():
    merged = merge([Change("a", b"1", {"s": write(notes=[(1, b"x")])}), Change("a", b"2", {"s": write(
        meta=None, notes=[(2, b"y")], floor=2)}), Change("b", b"3")])
    assert merged["a"].state == b"2" and merged["b"].state == b"3"
    assert merged["a"].sessions["s"].notes == [(1, b"x"), (2, b"y")]
    assert merged["a"].sessions["s"].note_floor == 2


async def test_failed_batch_changes_nothing(tmp_path):
    s = SQLiteStore(tmp_path / "f.db")
    await s.open()
    await s.commit([Change("a", b"\xa0")])
    bad = Change("b", b"\xa0", {"s": write(notes=[(1, "not bytes but a str is fine"), (2, object())])})
    with pytest.raises(Exception):  # noqa: B017 - whatever the store raises, it must change nothing
        await s.commit([Change("a", b"\xa1"), bad])
    assert (await s.load("a")).state == b"\xa0"
    assert await s.names() == ["a"]
    assert s.integrity_check() == []
    await s.close()


async def test_settings_and_errors(tmp_path):
    s = SQLiteStore(tmp_path / "x.db", synchronous="normal")
    await s.open()
    assert s.synchronous == "NORMAL"
    await s.close()
    with pytest.raises(StoreError):
        await s.commit([Change("a", b"\xa0")])
    with pytest.raises(ValueError):
        SQLiteStore(tmp_path / "y.db", synchronous="OFF")
    db = sqlite3.connect(tmp_path / "x.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


async def test_the_first_app_to_bind_owns_the_store(store):
    """Issue 14 item 3: a store records the app it belongs to; another app is told whose store it is."""
    assert await store.bind_app("ca:HelloWorld") is None
    assert await store.bind_app("ca:HelloWorld") is None
    assert await store.bind_app("ca:HelloPersistent") == "ca:HelloWorld"
    assert await store.bind_app("ca:HelloWorld") is None  # the refusal changed nothing


async def test_the_app_record_is_durable_and_old_stores_are_adopted(tmp_path):
    path = tmp_path / "s.db"
    s = SQLiteStore(path)
    await s.open()
    await s.commit([Change("a", b"\xa0", {"s": write()}, [(1, "s", "r1", b"p")])])
    await s.close()
    db = sqlite3.connect(path)  # as a bridge from before the record left its store: schema 2, no meta table
    db.executescript("DROP TABLE meta; PRAGMA user_version = 2;")
    db.close()
    s = SQLiteStore(path)
    await s.open()
    assert await s.app() is None
    assert await s.bind_app("apps:Counter") is None  # adopted
    await s.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        assert await s.app() == "apps:Counter"
        assert await s.bind_app("apps:Pulsing") == "apps:Counter"
        assert (await s.load("a")).dedup == [(1, "s", "r1", b"p")]  # the data came through the upgrade
    finally:
        await s.close()


async def test_a_runtime_refuses_the_store_of_another_app(tmp_path):
    from bridge.errors import ConfigError
    from bridge.testing import Harness
    from tests.apps import Counter, Pulsing

    async with Harness(Counter, db=tmp_path / "h.db") as h:
        assert await h.call("c1", "s", "incr") == 1
    other = Harness(Pulsing, db=tmp_path / "h.db")
    with pytest.raises(ConfigError) as err:
        await other.start()
    await other.stop()
    assert str(err.value) == (f"{tmp_path / 'h.db'} is the store of app apps:Counter, not apps:Pulsing: "
                              "give apps:Pulsing its own store with --db")
    async with Harness(Counter, db=tmp_path / "h.db") as h:
        assert await h.call("c1", "s", "incr") == 2


def test_app_identity_is_file_and_class_wherever_the_checkout_is(tmp_path):
    """Moving (or renaming) the checkout must not orphan a store: the identity holds no directory."""
    import shutil

    from bridge.cli import load_app
    from bridge.runtime import app_identity
    from tests.conftest import ROOT

    moved = tmp_path / "moved" / "somewhere"
    shutil.copytree(ROOT / "examples" / "hellopersistent", moved)
    here = load_app(f"{ROOT}/examples/hellopersistent/ca.py:HelloPersistent")
    there = load_app(f"{moved}/ca.py:HelloPersistent")
    assert here is not there
    assert app_identity(here) == app_identity(there) == "ca:HelloPersistent"
    assert app_identity(load_app(f"{ROOT}/examples/helloworld/ca.py:HelloWorld")) == "ca:HelloWorld"
    assert app_identity(load_app("tests.apps:Counter")) == app_identity(load_app("tests/apps.py:Counter"))


async def test_a_read_only_store_reads_and_never_writes(tmp_path):
    """Issue 14 item 13 (SQLite side): `ca-bridge inspect` opens the store read-only: an older store is not
    upgraded, nothing is created, any write fails."""
    path = tmp_path / "r.db"
    s = SQLiteStore(path)
    await s.open()
    await s.commit([Change("a", b"\xa0", {"s": write()})])
    await s.close()
    db = sqlite3.connect(path)
    db.executescript("DROP TABLE meta; PRAGMA user_version = 2;")
    db.close()
    ro = SQLiteStore(path, read_only=True)
    await ro.open()
    try:
        assert [r.name for r in await ro.load_all()] == ["a"]
        assert await ro.app() is None
        with pytest.raises(StoreError):
            await ro.commit([Change("b", b"\xa0")])
    finally:
        await ro.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2  # not upgraded
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'meta'").fetchone()[0] == 0
    db.close()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).close()
    with pytest.raises(StoreError, match="no ca-bridge store in"):
        await SQLiteStore(empty, read_only=True).open()
    assert sqlite3.connect(empty).execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
