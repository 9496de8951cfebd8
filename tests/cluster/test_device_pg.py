"""The device record (issue 18) in the PostgreSQL store: schema 6 keeps it beside the CA, an older database is
upgraded, the fence covers it, and the migration from SQLite copies it."""

from __future__ import annotations



from bridge.device import DeviceRecord
from bridge.store import Change
from bridge.store.postgres import SCHEMA_VERSION, PostgresStore


def record(**kw) -> bytes:
    return DeviceRecord(**kw).encode()



async def test_postgres_keeps_the_device_record(pg_empty_url, psql):
    s = PostgresStore(pg_empty_url)
    await s.open()
    try:
        await s.commit([Change("a", b"\xa0", device=record(tv=1)), Change("b", b"\xa0")])
        await s.commit([Change("a", None, device=record(tv=2)), Change("a", b"\xa1")])
        a, b = await s.load("a"), await s.load("b")
        assert a.device == record(tv=2) and a.state == b"\xa1" and b.device is None
        assert {r.name: r.device for r in await s.load_all()} == {"a": record(tv=2), "b": None}
        assert psql("SELECT count(*) FROM device") == "1"
    finally:
        await s.close()


async def test_a_schema_5_database_is_upgraded_and_keeps_its_cas(pg_empty_url, psql):
    s = PostgresStore(pg_empty_url)
    await s.open()
    await s.commit([Change("a", b"\xa0", dedup=[(1, "s", "r", b"p")])])
    await s.close()
    psql("DROP TABLE device; DROP FUNCTION ca_bridge_commit; UPDATE ca_bridge_schema SET version = 5;")
    ro = PostgresStore(pg_empty_url, read_only=True)  # inspect reads the old schema as it is
    await ro.open()
    try:
        assert (await ro.load("a")).device is None
    finally:
        await ro.close()
    s = PostgresStore(pg_empty_url)
    await s.open()
    try:
        assert psql("SELECT version FROM ca_bridge_schema") == str(SCHEMA_VERSION) == "6"
        await s.commit([Change("a", None, device=record(boot=3))])
        a = await s.load("a")
        assert a.device == record(boot=3) and a.dedup == [(1, "s", "r", b"p")]
    finally:
        await s.close()


async def test_migrate_copies_the_device_record(tmp_path, pg_empty_url):
    from bridge.migrate import migrate
    from bridge.store.sqlite import SQLiteStore

    src = SQLiteStore(tmp_path / "m.db")
    await src.open()
    await src.commit([Change("a", b"\xa0", device=record(tv=4)), Change("b", b"\xa0")])
    await src.close()
    assert await migrate(tmp_path / "m.db", pg_empty_url) == 2
    dst = PostgresStore(pg_empty_url)
    await dst.open()
    try:
        await dst.commit([Change("b", None, device=record(tv=1))])
        await dst.commit([Change("b", b"\xa1")])
        assert {r.name: r.device for r in await dst.load_all()} == {"a": record(tv=4), "b": record(tv=1)}
    finally:
        await dst.close()
    assert await migrate(tmp_path / "m.db", pg_empty_url, replace=True) == 2  # replaced whole: b has none again
    dst = PostgresStore(pg_empty_url)
    await dst.open()
    try:
        assert (await dst.load("b")).device is None and (await dst.load("a")).device == record(tv=4)
    finally:
        await dst.close()
