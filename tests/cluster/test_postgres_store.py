"""The PostgreSQL store on a real PostgreSQL: the Store contract (records identical to SQLite's), atomic and fenced
batches, ownership claims, schema versions, and a database that goes away, comes back or cuts its connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import time
import uuid

import psycopg
import pytest

from bridge import faults
from bridge.errors import StoreError
from bridge.store import CARecord, Change, MemoryStore, SessionRecord, SessionWrite, redact_url
from bridge.store.postgres import SCHEMA_VERSION, PostgresStore
from bridge.store.postgres_membership import PostgresMembership
from bridge.store.sqlite import SQLiteStore
from tests import pgserver
from tests.conftest import ROOT, free_port
from tests.skips import missing

# -- helpers -----------------------------------------------------------------------------------------------------



@pytest.fixture(params=["sqlite", "postgres"])
async def store(request, tmp_path):
    s = SQLiteStore(tmp_path / "s.db") if request.param == "sqlite" else PostgresStore(
        request.getfixturevalue("pg_empty_url"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()



# A realistic life: several CAs per batch, a CA changed twice in a batch, acknowledgements trimming queues,
# a session purged (its dedup records stay: they are not in the session's rows), purge-and-recreate in one batch,
# binary data, request ids with NUL and non-ASCII characters (a device chooses them), a session's dedup window
# sliding without touching another session's older records.
BATCHES: list[list[Change]] = [
    [
        Change("dev1", b"s1", {"default": SessionWrite(b"m1", [(1, b"n1"), (2, b"n2")])},
               [(1, "default", "r1", b"p1")]),
        Change("dev2", b"t1", {"phone": SessionWrite(b"pm1", [(1, b"x1")])}, [(1, "phone", "q1", b"o1")]),
        Change("dev1", b"s2", {"default": SessionWrite(None, [(3, b"n3")])}, [(2, "default", "r2", b"p2")]),
    ],
    [
        Change("dev1", b"s3", {"default": SessionWrite(b"m2", [], note_floor=3),
                               "watch": SessionWrite(b"w1", [(1, b"a"), (2, b"b")])},
               [(3, "watch", "r3", b"p3")], {"default": 2}),
    ],
    [
        Change("dev2", None, {"phone": SessionWrite(purge=True)}),
        Change("dev3", bytes(range(256)), {"s-1.x_y": SessionWrite(b"\x00meta\xff", [(10, b"\x00"), (11, b"")])},
               [(1, "s-1.x_y", "id\x00\u00e9\u2713", b"\x00")]),
    ],
    [
        Change("dev1", None, {"watch": SessionWrite(purge=True)}),
        Change("dev1", None, {"watch": SessionWrite(b"w2", [(1, b"fresh")], purge=True)}),
        Change("dev2", b"t2"),
        Change("dev3", None, {"s-1.x_y": SessionWrite(None, [], note_floor=100)},
               [(2, "s-1.x_y", "r", b"p"), (3, "other", "r\x00", b"q")], {"s-1.x_y": 3}),
    ],
    [Change("dev4", b"u1",
            dedup=[(0, "early", "e", b"e"), *((i, "default", f"r{i}", b"p%d" % i) for i in range(1, 70))],
            dedup_floors={"default": 6, "nobody": 99})],
]

EXPECTED = {
    "dev1": CARecord("dev1", b"s3", {
        "default": SessionRecord(b"m2", [(3, b"n3")]),
        "watch": SessionRecord(b"w2", [(1, b"fresh")]),
    }, [(2, "default", "r2", b"p2"), (3, "watch", "r3", b"p3")]),
    "dev2": CARecord("dev2", b"t2", {}, [(1, "phone", "q1", b"o1")]),
    "dev3": CARecord("dev3", bytes(range(256)), {"s-1.x_y": SessionRecord(b"\x00meta\xff", [])},
                     [(3, "other", "r\x00", b"q")]),
    "dev4": CARecord("dev4", b"u1", {},
                     [(0, "early", "e", b"e"), *((i, "default", f"r{i}", b"p%d" % i) for i in range(6, 70))]),
    "fresh": CARecord("fresh", b""),
}


async def live(store, batches=BATCHES) -> None:
    for batch in batches:
        assert await store.commit(batch) == frozenset()
    assert await store.register("fresh") is True
    assert await store.register("fresh") is False
    assert await store.register("dev1") is False  # exists: untouched


async def snapshot(store) -> dict[str, CARecord]:
    every = await store.load_all()
    assert len({r.name for r in every}) == len(every)
    return {r.name: r for r in every}


# -- 1. the Store contract -----------------------------------------------------------------------------------------


async def test_store_contract_gives_the_expected_records(store):
    await live(store)
    assert await store.names() == sorted(EXPECTED)
    assert await snapshot(store) == EXPECTED
    for name, want in EXPECTED.items():
        assert await store.load(name) == want
    assert await store.load("nope") is None
    assert (await store.load("fresh")).state == b""  # registered: on_init has not run


async def test_sqlite_postgres_and_memory_load_identical_records(tmp_path, pg):
    sqlite, memory = SQLiteStore(tmp_path / "c.db"), MemoryStore()
    await sqlite.open()
    try:
        for s in (sqlite, pg, memory):
            await live(s)
        records = [await snapshot(s) for s in (sqlite, pg, memory)]
        assert records[0] == records[1] == records[2]
        assert [await s.names() for s in (sqlite, pg, memory)] == [sorted(EXPECTED)] * 3
        for name in EXPECTED:
            assert await sqlite.load(name) == await pg.load(name)
    finally:
        await sqlite.close()


async def test_names_sort_like_python_whatever_the_database_collation(pg_server, tmp_path):
    """A database created with a linguistic collation (ICU en-US: 'a' < 'B') still lists names as sorted() does."""
    db = "icu_" + uuid.uuid4().hex[:10]
    try:
        pg_server.psql(f"CREATE DATABASE {db} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' "
                       "LOCALE 'C.UTF-8'")
    except RuntimeError as exc:  # PostgreSQL built without ICU
        missing(f"PostgreSQL has no ICU collation: {exc}")
    url = pg_server.url.rsplit("/", 1)[0] + "/" + db
    names = ["b", "B", "a", "A-1", "a.2", "Z", "_x", "a_", "0"]
    s = PostgresStore(url)
    await s.open()
    try:
        assert await s.commit([Change(n, b"\xa0") for n in names]) == frozenset()
        assert await s.names() == sorted(names)
        assert [r.name for r in await s.load_all()] == sorted(names)
    finally:
        await s.close()
        pg_server.psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


async def test_closed_store_refuses_work(pg_empty_url):
    s = PostgresStore(pg_empty_url)
    await s.open()
    await s.close()
    await s.close()  # twice is fine
    with pytest.raises(StoreError, match="closed"):
        await s.load("a")
    with pytest.raises(StoreError, match="closed"):
        await s.commit([Change("a", b"\xa0")])


# -- 2. atomicity --------------------------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


async def test_a_failure_inside_the_transaction_writes_nothing_of_the_batch(store, monkeypatch):
    await store.commit(BATCHES[0])
    before = await snapshot(store)
    real_hit = faults.hit

    def hit(point: str) -> None:
        if point == "in_commit":
            raise Boom("fault at in_commit")
        real_hit(point)

    monkeypatch.setattr(faults, "hit", hit)
    monkeypatch.setattr(faults, "armed", lambda point: point == "in_commit")
    with pytest.raises(Boom):  # every write of the batch has run when the fault point is reached
        await store.commit([
            *BATCHES[1],
            Change("dev2", None, {"phone": SessionWrite(purge=True)}, [(2, "x", "y", b"")]),
            Change("dev9", b"new", {"s": SessionWrite(b"m", [(1, b"n")])}, [(1, "s", "r", b"p")]),
        ])
    assert await snapshot(store) == before
    assert await store.names() == ["dev1", "dev2"]
    monkeypatch.setattr(faults, "hit", real_hit)
    assert await store.commit(BATCHES[1]) == frozenset()  # the store (and its connection) still works
    assert (await store.load("dev1")).state == b"s3"


async def test_a_database_error_midway_raises_store_error_and_writes_nothing(pg):
    await pg.commit(BATCHES[0])
    before = await snapshot(pg)
    bad = [
        Change("dev1", b"changed", {"default": SessionWrite(b"m9", [(4, b"n4")])}),  # runs first: state, session...
        Change("dev5", b"new"),
        Change("dev2", None, {"phone": SessionWrite(None, [(2**63, b"seq out of bigint range")])}),  # ...this fails
    ]
    with pytest.raises(StoreError, match="out of range"):
        await pg.commit(bad)
    assert await snapshot(pg) == before
    assert await pg.names() == ["dev1", "dev2"]
    assert await pg.commit(BATCHES[1]) == frozenset()


async def test_request_ids_any_device_may_send_do_not_break_the_batch(pg):
    """Ids are any 1..64-character string: NUL (which PostgreSQL text refuses) and, from JSON, lone surrogates."""
    odd = ["nul\x00", "\ud800lone", "\x00", "\U0001f600"]
    changes = [Change(f"c{i}", b"\xa0", {}, [(1, "default", rid, b"r")]) for i, rid in enumerate(odd)]
    assert await pg.commit([Change("bystander", b"ok"), *changes]) == frozenset()
    for i, rid in enumerate(odd):
        assert (await pg.load(f"c{i}")).dedup == [(1, "default", rid, b"r")]
    assert (await pg.load("bystander")).state == b"ok"


async def test_a_bridge_killed_inside_the_transaction_leaves_nothing(pg, pg_empty_url):
    """CA_BRIDGE_FAULTS=in_commit=1: the process SIGKILLs itself after the writes, before COMMIT."""
    await pg.commit([Change("a", b"old", {"s": SessionWrite(b"m", [(1, b"n1")])})])
    script = textwrap.dedent(f"""
        import asyncio
        from bridge.store.postgres import PostgresStore
        from bridge.store import Change, SessionWrite

        async def main():
            s = PostgresStore({pg_empty_url!r})
            await s.open()
            await s.commit([Change("a", b"new", {{"s": SessionWrite(None, [(2, b"n2")], note_floor=2)}},
                                   [(1, "s", "r", b"p")]), Change("b", b"born")])
            print("committed?!")

        asyncio.run(main())
    """)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "CA_BRIDGE_FAULTS": "in_commit=1"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == -9, err.decode()
    assert b"killing the bridge at in_commit" in err
    assert b"committed?!" not in out
    assert await pg.load("a") == CARecord("a", b"old", {"s": SessionRecord(b"m", [(1, b"n1")])})
    assert await pg.names() == ["a"]
    # the dead backend's row locks are gone: a new commit of the same CA does not wait for them
    assert await asyncio.wait_for(pg.commit([Change("a", b"next")]), 5) == frozenset()


# -- 3. fencing ----------------------------------------------------------------------------------------------------


async def test_commits_are_fenced_on_the_owner_token(pg_empty_url, psql):
    a, b, tool = PostgresStore(pg_empty_url), PostgresStore(pg_empty_url), PostgresStore(pg_empty_url)
    for s in (a, b, tool):
        await s.open()
    ma, mb = PostgresMembership(a), PostgresMembership(b)
    try:
        await ma.join("A", "node-a", 30)
        await mb.join("B", "node-b", 30)
        a.owner, b.owner = "A", "B"
        assert (await ma.claim("x", "A", create=True)).outcome == "mine"
        assert (await mb.claim("y", "B", create=True)).outcome == "mine"
        assert await a.commit([Change("x", b"a1", {"s": SessionWrite(b"m", [(1, b"n")])}, [(1, "s", "r", b"p")])]) \
            == frozenset()

        # B writes x (not its own) and y (its own) in one batch: x refused and untouched, y written
        refused = await b.commit([
            Change("x", b"evil", {"s": SessionWrite(purge=True), "t": SessionWrite(b"bad")}, [(2, "t", "r", b"z")]),
            Change("y", b"b1", {"d": SessionWrite(b"md", [(1, b"hello")])}, [(1, "d", "q", b"o")]),
        ])
        assert refused == frozenset({"x"})
        assert await a.load("x") == CARecord("x", b"a1", {"s": SessionRecord(b"m", [(1, b"n")])}, [(1, "s", "r", b"p")])
        assert await a.load("y") == CARecord("y", b"b1", {"d": SessionRecord(b"md", [(1, b"hello")])},
                                             [(1, "d", "q", b"o")])
        # a CA nobody claimed is refused too (never created behind the cluster's back)
        assert await a.commit([Change("ghost", b"g"), Change("x", b"a2")]) == frozenset({"ghost"})
        assert await a.load("ghost") is None
        assert (await a.load("x")).state == b"a2"

        # A is presumed dead (its node row expired); B takes x over: A's late commit is refused
        psql("UPDATE node SET expires = now() - interval '1 second' WHERE token = 'A'")
        took = await mb.claim("x", "B", create=False)
        assert took.outcome == "mine" and took.record is not None and took.record.state == b"a2"
        assert await a.commit([Change("x", b"stale")]) == frozenset({"x"})
        assert await b.commit([Change("x", b"b2")]) == frozenset()
        assert (await tool.load("x")).state == b"b2"

        # a store without an owner token (tools, migration) is not fenced
        assert tool.owner is None
        assert await tool.commit([Change("x", b"tool"), Change("new", b"n")]) == frozenset()
        assert (await tool.load("x")).state == b"tool"
    finally:
        for s in (a, b, tool):
            await s.close()


# -- 4. claims and membership --------------------------------------------------------------------------------------


async def test_claim_outcomes(pg, psql):
    m = PostgresMembership(pg)
    await m.join("A", "node-a", 30)
    await m.join("B", "node-b", 30)
    assert (await m.claim("nope", "A", create=False)).outcome == "missing"
    assert await pg.names() == []

    made = await m.claim("x", "A", create=True)
    assert made.outcome == "mine" and made.record == CARecord("x", b"")
    assert psql("SELECT owner, epoch FROM ca WHERE name = 'x'") == "A|1"
    again = await m.claim("x", "A", create=True)  # ours already: loaded, not re-owned
    assert again.outcome == "mine" and again.record == CARecord("x", b"")
    assert psql("SELECT epoch FROM ca WHERE name = 'x'") == "1"

    other = await m.claim("x", "B", create=True)
    assert (other.outcome, other.node, other.token, other.record) == ("other", "node-a", "A", None)

    await pg.register("r")  # made by `ca-bridge create`: unowned, claimable, record loaded
    pg.owner = None
    await pg.commit([Change("r", b"state-r", {"s": SessionWrite(b"m", [(5, b"n")])}, [(1, "s", "id", b"p")])])
    got = await m.claim("r", "B", create=False)
    assert got.outcome == "mine"
    assert got.record == CARecord("r", b"state-r", {"s": SessionRecord(b"m", [(5, b"n")])}, [(1, "s", "id", b"p")])
    assert psql("SELECT owner, epoch FROM ca WHERE name = 'r'") == "B|1"


async def test_concurrent_creating_claims_make_one_owner(pg_empty_url):
    stores = [PostgresStore(pg_empty_url) for _ in range(4)]
    for s in stores:
        await s.open()
    try:
        for i, s in enumerate(stores):
            await PostgresMembership(s).join(f"T{i}", f"n{i}", 30)
        claims = await asyncio.gather(*[PostgresMembership(s).claim("hot", f"T{i}", create=True)
                                        for i, s in enumerate(stores)])
        mine = [c for c in claims if c.outcome == "mine"]
        assert len(mine) == 1
        winner = f"T{claims.index(mine[0])}"
        assert all(c.outcome == "other" and c.token == winner for c in claims if c is not mine[0])
        assert await stores[0].names() == ["hot"]
    finally:
        for s in stores:
            await s.close()


async def test_takeover_once_the_owner_node_expires(pg):
    m = PostgresMembership(pg)
    await m.join("A", "node-a", 1.0)
    await m.join("B", "node-b", 30)
    assert (await m.claim("x", "A", create=True)).outcome == "mine"
    pg.owner = "A"
    await pg.commit([Change("x", b"by-a", {"s": SessionWrite(b"m", [(1, b"n")])})])
    assert (await m.claim("x", "B", create=False)).outcome == "other"
    await asyncio.sleep(1.2)
    took = await m.claim("x", "B", create=False)
    assert took.outcome == "mine"
    assert took.record == CARecord("x", b"by-a", {"s": SessionRecord(b"m", [(1, b"n")])})
    assert await m.owners() == {"node-b": 1}
    back = await m.claim("x", "A", create=False)  # A comes back: x is B's now
    assert (back.outcome, back.node) == ("other", "node-b")


async def test_heartbeat_keeps_a_node_alive_and_rejoins_a_forgotten_one(pg):
    m = PostgresMembership(pg)
    await m.join("A", "node-a", 0.5)
    await m.join("B", "node-b", 30)
    await m.claim("x", "A", create=True)
    present, live_nodes = await m.heartbeat("A", "node-a", 30)
    assert present is True and live_nodes == {"A": "node-a", "B": "node-b"}
    await asyncio.sleep(0.7)
    assert (await m.claim("x", "B", create=False)).outcome == "other"  # renewed: still alive
    assert await m.leave("A") == 1
    present, live_nodes = await m.heartbeat("A", "node-a", 30)  # the row was gone: it is made again
    assert present is False and live_nodes == {"A": "node-a", "B": "node-b"}


async def test_joining_again_frees_the_previous_incarnation(pg):
    m = PostgresMembership(pg)
    await m.join("A1", "node-a", 30)
    await m.join("B", "node-b", 30)
    for name in ("x", "y"):
        assert (await m.claim(name, "A1", create=True)).outcome == "mine"
    assert await m.owners() == {"node-a": 2, "node-b": 0}
    assert (await m.claim("x", "B", create=False)).outcome == "other"
    await m.join("A2", "node-a", 30)  # node-a restarted after a crash: its old CAs are free at once
    assert await m.orphans() == 2
    assert await m.owners() == {"node-a": 0, "node-b": 0}
    assert (await m.claim("x", "B", create=False)).outcome == "mine"
    assert (await m.claim("y", "A2", create=False)).outcome == "mine"
    assert await m.owners() == {"node-a": 1, "node-b": 1}
    assert await m.orphans() == 0


async def test_leave_releases_everything(pg):
    m = PostgresMembership(pg)
    await m.join("A", "node-a", 30)
    await m.join("B", "node-b", 30)
    for name in ("x", "y", "z"):
        await m.claim(name, "A", create=True)
    await m.claim("w", "B", create=True)
    assert await m.orphans() == 0
    assert await m.leave("A") == 3
    assert await m.owners() == {"node-b": 1}
    assert await m.orphans() == 3
    assert (await m.claim("y", "B", create=False)).outcome == "mine"
    assert await m.orphans() == 2
    assert await m.leave("nobody") == 0


async def test_adopt_claims_orphans_up_to_the_limit_with_their_records(pg):
    m = PostgresMembership(pg)
    await m.join("A", "node-a", 30)
    await m.join("B", "node-b", 30)
    names = [f"o{i}" for i in range(7)]
    for n in names:
        await pg.register(n)
    await pg.commit([Change(n, n.encode(), {"s": SessionWrite(b"m", [(1, n.encode())])}, [(1, "s", "r", b"p")])
                     for n in names[:3]])
    await m.claim("owned", "B", create=True)  # alive: never adopted
    assert await m.orphans() == 7

    first = await m.adopt("A", limit=4)
    assert sorted(r.name for r in first) == names[:4]  # in name order
    by_name = {r.name: r for r in first}
    assert by_name["o0"] == CARecord("o0", b"o0", {"s": SessionRecord(b"m", [(1, b"o0")])}, [(1, "s", "r", b"p")])
    assert by_name["o3"] == CARecord("o3", b"")
    assert await m.orphans() == 3
    assert await m.owners() == {"node-a": 4, "node-b": 1}

    rest = await m.adopt("A", limit=10)
    assert sorted(r.name for r in rest) == names[4:]
    assert await m.adopt("A", limit=10) == []
    assert await m.orphans() == 0
    assert await m.owners() == {"node-a": 7, "node-b": 1}
    pg.owner = "A"
    assert await pg.commit([Change(n, b"adopted") for n in [*names, "owned"]]) == frozenset({"owned"})


# -- 5. schema -----------------------------------------------------------------------------------------------------


async def test_opening_twice_is_idempotent(pg_empty_url, psql):
    s = PostgresStore(pg_empty_url)
    await s.open()
    await s.commit(BATCHES[0])
    await s.close()
    await s.open()  # the same object again
    t = PostgresStore(pg_empty_url)
    await t.open()
    try:
        assert psql("SELECT version FROM ca_bridge_schema") == str(SCHEMA_VERSION)
        assert (await t.load("dev1")).state == b"s2"
        assert await s.names() == ["dev1", "dev2"]
    finally:
        await s.close()
        await t.close()


async def test_a_newer_schema_is_refused(pg_empty_url, psql):
    s = PostgresStore(pg_empty_url)
    await s.open()
    await s.close()
    psql(f"UPDATE ca_bridge_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=f"schema {SCHEMA_VERSION + 1}, newer than this bridge"):
        await s.open()
    assert s._pool is None  # nothing left open
    assert psql("SELECT version FROM ca_bridge_schema") == str(SCHEMA_VERSION + 1)  # and nothing downgraded


async def test_stores_opening_together_on_an_empty_database_all_succeed(pg_empty_url, psql):
    stores = [PostgresStore(pg_empty_url) for _ in range(4)]
    await asyncio.gather(*[s.open() for s in stores])
    try:
        assert psql("SELECT count(*), min(version) FROM ca_bridge_schema") == f"1|{SCHEMA_VERSION}"
        await stores[0].commit([Change("a", b"\xa0")])
        assert [await s.names() for s in stores] == [["a"]] * 4
    finally:
        for s in stores:
            await s.close()


async def test_version_1_databases_are_upgraded_keeping_their_dedup_records(pg_empty_url, psql):
    psql("""
        CREATE TABLE ca_bridge_schema (version integer NOT NULL);
        INSERT INTO ca_bridge_schema VALUES (1);
        CREATE TABLE ca (name text PRIMARY KEY, state bytea NOT NULL, owner text, epoch bigint NOT NULL DEFAULT 0);
        CREATE INDEX ca_owner ON ca (owner);
        CREATE TABLE session (ca text NOT NULL, sid text NOT NULL, meta bytea NOT NULL, PRIMARY KEY (ca, sid));
        CREATE TABLE note (ca text NOT NULL, sid text NOT NULL, seq bigint NOT NULL, args bytea NOT NULL,
                           PRIMARY KEY (ca, sid, seq));
        CREATE TABLE dedup (ca text NOT NULL, pos bigint NOT NULL, sid text NOT NULL, rid text NOT NULL,
                            reply bytea NOT NULL, PRIMARY KEY (ca, pos));
        CREATE TABLE node (token text PRIMARY KEY, name text NOT NULL, started timestamptz NOT NULL DEFAULT now(),
                           expires timestamptz NOT NULL);
        INSERT INTO ca (name, state) VALUES ('a', '\\xa0');
        INSERT INTO dedup VALUES ('a', 7, 's', 'r-\u00e9', '\\x01');
    """)
    s = PostgresStore(pg_empty_url)
    await s.open()
    try:
        assert (await s.load("a")).dedup == [(7, "s", "r-\u00e9", b"\x01")]
        assert psql("SELECT version FROM ca_bridge_schema") == str(SCHEMA_VERSION)
        assert await s.commit([Change("a", None, {}, [(8, "s", "nul\x00", b"\x02")])]) == frozenset()
        assert (await s.load("a")).dedup == [(7, "s", "r-\u00e9", b"\x01"), (8, "s", "nul\x00", b"\x02")]
    finally:
        await s.close()


async def test_the_first_app_owns_the_database_and_older_databases_are_adopted(pg_empty_url, psql):
    """Issue 14 item 3 on PostgreSQL: the database records its app (bridges starting together agree on one), a
    database from before the record (schema 4) is upgraded and adopted by the first app, and the record lasts."""
    stores = [PostgresStore(pg_empty_url) for _ in range(3)]
    await asyncio.gather(*[s.open() for s in stores])
    try:
        results = await asyncio.gather(*[s.bind_app(app) for s, app in zip(stores, ["a:A", "b:B", "a:A"], strict=True)])
        winner = await stores[0].app()
        assert winner in ("a:A", "b:B")
        assert results == [None if app == winner else winner for app in ["a:A", "b:B", "a:A"]]
        await stores[0].commit([Change("c1", b"\xa0", dedup=[(1, "s", "r", b"p")])])
    finally:
        for s in stores:
            await s.close()
    psql("DROP TABLE ca_bridge_meta; DROP FUNCTION ca_bridge_commit; UPDATE ca_bridge_schema SET version = 4;")
    s = PostgresStore(pg_empty_url)
    await s.open()
    try:
        assert psql("SELECT version FROM ca_bridge_schema") == str(SCHEMA_VERSION)
        assert await s.app() is None
        assert await s.bind_app("b:B") is None  # adopted
        assert await s.bind_app("a:A") == "b:B"
        assert await s.commit([Change("c1", None, dedup=[(2, "s", "r2", b"q")], dedup_floors={"s": 2})]) == frozenset()
        assert (await s.load("c1")).dedup == [(2, "s", "r2", b"q")]
    finally:
        await s.close()


async def test_a_read_only_store_never_writes(pg_empty_url, psql):
    """Issue 14 item 13 (the store side): read-only opens no schema on an empty database, and refuses writes."""
    ro = PostgresStore(pg_empty_url, read_only=True)
    with pytest.raises(StoreError, match="no ca-bridge schema in"):
        await ro.open()
    assert psql("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public'") == "0"
    rw = PostgresStore(pg_empty_url)
    await rw.open()
    await rw.commit([Change("a", b"\xa0")])
    await rw.close()
    psql("DROP TABLE ca_bridge_meta; UPDATE ca_bridge_schema SET version = 4;")  # an older database: readable
    ro = PostgresStore(pg_empty_url, read_only=True)
    await ro.open()
    try:
        assert [r.name for r in await ro.load_all()] == ["a"]
        assert await ro.app() is None
        with pytest.raises(StoreError):
            await ro.commit([Change("b", b"\xa0")])
        with pytest.raises(StoreError):
            await ro.register("b")
    finally:
        await ro.close()
    assert psql("SELECT version FROM ca_bridge_schema") == "4"  # not upgraded
    assert psql("SELECT string_agg(name, ',') FROM ca") == "a"


async def test_opening_waits_for_no_running_transaction(pg, pg_empty_url):
    """Opening a store at the current schema version takes no table lock: a bridge starting or `ca-bridge inspect`
    neither waits for the commits in flight nor holds up the next ones (DDL would take a SHARE lock on ca)."""
    await pg.commit([Change("a", b"\xa0")])
    conn = await psycopg.AsyncConnection.connect(pg_empty_url)
    try:
        await conn.execute("UPDATE ca SET state = '\\xa1' WHERE name = 'a'")  # a commit in flight
        other = PostgresStore(pg_empty_url)
        await asyncio.wait_for(other.open(), 3)
        try:
            assert await asyncio.wait_for(other.names(), 3) == ["a"]
        finally:
            await other.close()
    finally:
        await conn.rollback()
        await conn.close()


# -- 6. the database goes away -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def _own_server():
    pgserver.require()
    server = pgserver.PostgresServer(fsync=False).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def own_server(_own_server):
    """A server of these tests' own, to stop and start without disturbing the session one (running)."""
    if not _own_server._running:  # a failed test left it stopped
        _own_server.start()
    return _own_server


async def timed(coro):
    t0 = time.monotonic()
    try:
        return await coro, time.monotonic() - t0
    except BaseException as exc:
        exc.elapsed = time.monotonic() - t0
        raise


async def test_database_down_then_back(own_server):
    connect_timeout = 1.0
    # an operation waits for a connection at most connect_timeout, libpq's attempt takes 2 s at least, and a broken
    # connection's pool check waits connect_timeout: far below psycopg_pool's own 30 s wait, or a hang
    fail_within = 2 * connect_timeout + 2.0 + 5.0
    s = PostgresStore(own_server.url, connect_timeout=connect_timeout)
    await s.open()
    try:
        await s.commit(BATCHES[0])
        await fill_pool(s, 3)  # several pooled connections, all to go stale
        own_server.stop("fast")
        for op in (lambda: s.load("dev1"), lambda: s.commit([Change("dev1", b"lost")]), s.names):
            with pytest.raises(StoreError) as err:
                await timed(op())
            assert err.value.elapsed < fail_within, f"took {err.value.elapsed:.1f}s"
            assert str(err.value).startswith(("database unavailable", "database error")), err.value
            assert not isinstance(err.value, psycopg.Error) and err.value.__cause__ is None
        own_server.start()
        assert (await s.load("dev1")).state == b"s2"  # the pool reconnects
        assert await s.commit([Change("dev1", b"after")]) == frozenset()
        assert (await s.load("dev1")).state == b"after"
        assert await s.names() == ["dev1", "dev2"]
    finally:
        await s.close()


async def fill_pool(s: PostgresStore, n: int) -> None:
    """Make the pool grow to ``n`` idle connections (it grows while clients wait)."""
    for _ in range(50):
        if s._pool.get_stats().get("pool_available", 0) >= n:
            return
        await asyncio.gather(*[s.load("a") for _ in range(8)])
        await asyncio.sleep(0.02)
    raise AssertionError(f"the pool did not grow: {s._pool.get_stats()}")


async def test_cut_connections_cost_at_most_one_failure(own_server):
    app = "ca-bridge-cut-" + uuid.uuid4().hex[:6]
    s = PostgresStore(own_server.url, pool_size=4, application_name=app)
    await s.open()
    try:
        await s.commit([Change("a", b"\xa0")])
        for round_ in range(3):
            await fill_pool(s, 3)
            assert own_server.cut_connections(app) >= 3
            with contextlib.suppress(StoreError):  # the connection it got was cut
                await s.commit([Change("a", b"r%d" % round_)])
            for _ in range(3):  # every later operation succeeds: no other stale connection is handed out
                assert await s.commit([Change("a", b"after%d" % round_)]) == frozenset()
                assert (await s.load("a")).state == b"after%d" % round_
    finally:
        await s.close()


async def test_opening_on_a_closed_port_fails_fast_and_clearly():
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/postgres"
    connect_timeout = 30.0
    s = PostgresStore(url, connect_timeout=connect_timeout)
    with pytest.raises(StoreError) as err:
        await timed(s.open())
    # the refusal itself ends it, not the connect timeout (a pool that only retries would wait it out)
    assert err.value.elapsed < connect_timeout / 2
    assert "cannot connect to PostgreSQL" in str(err.value) and "refused" in str(err.value)
    assert "secret" not in str(err.value)


async def test_opening_an_unknown_database_says_so(pg_server):
    url = pg_server.url.rsplit("/", 1)[0].replace("@", ":secret@", 1) + "/no_such_db"
    with pytest.raises(StoreError, match='database "no_such_db" does not exist') as err:
        await PostgresStore(url).open()
    assert "secret" not in str(err.value)


@pytest.mark.parametrize("url", [
    "postgresql://postgres:secret@[127.0.0.1/db",  # libpq quotes the whole URI
    "postgresql://postgres:sec ret@127.0.0.1:1/db",  # libpq quotes the password
    "postgresql://postgres@127.0.0.1:1/db?password=secret&sslmode=bogus",
])
async def test_connection_errors_never_show_the_password(url):
    with pytest.raises(StoreError) as err:
        await PostgresStore(url, connect_timeout=2).open()
    assert "secret" not in str(err.value) and "sec ret" not in str(err.value)
    assert "cannot connect to PostgreSQL" in str(err.value)


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://u:secret@h:5432/db", "postgresql://u@h:5432/db"),
    ("postgres://u:p@ss:w0rd@h/db", "postgres://u@h/db"),
    ("postgresql://u@h/db?sslmode=require&password=secret", "postgresql://u@h/db?sslmode=require&password=***"),
    ("postgresql://h/db?PASSWORD=secret&x=1", "postgresql://h/db?PASSWORD=***&x=1"),
    ("postgresql://h/db", "postgresql://h/db"),
    ("bridge.db", "bridge.db"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


async def test_commits_are_fenced_on_the_ownership_epoch_too(pg_empty_url):
    """Owner A, then B, then A again: a change computed on A's first copy is refused although A owns the CA."""
    a, b = PostgresStore(pg_empty_url), PostgresStore(pg_empty_url)
    for s in (a, b):
        await s.open()
    ma, mb = PostgresMembership(a), PostgresMembership(b)
    try:
        await ma.join("A", "node-a", 30)
        await mb.join("B", "node-b", 30)
        a.owner, b.owner = "A", "B"
        first = (await ma.claim("x", "A", create=True)).record
        assert first is not None and first.epoch == 1
        assert await a.commit([Change("x", b"a1", epoch=first.epoch)]) == frozenset()
        await ma.leave("A")  # A's membership ends: x is free
        taken = (await mb.claim("x", "B", create=False)).record
        assert taken is not None and taken.epoch == 2 and taken.state == b"a1"
        assert await b.commit([Change("x", b"b1", epoch=taken.epoch)]) == frozenset()
        await mb.leave("B")
        await ma.join("A", "node-a", 30)
        again = (await ma.claim("x", "A", create=False)).record
        assert again is not None and again.epoch == 3 and again.state == b"b1"
        assert await a.commit([Change("x", b"stale", epoch=first.epoch)]) == frozenset({"x"})
        assert (await a.load("x")).state == b"b1"
        assert await a.commit([Change("x", b"a2", epoch=again.epoch)]) == frozenset()
        assert (await a.load("x")).state == b"a2"
    finally:
        for s in (a, b):
            await s.close()
