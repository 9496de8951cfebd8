"""`ca-bridge create`, `inspect` and `migrate` on PostgreSQL, run as real processes (`python -m bridge ...`).

Every command gets a URL with a password (trust authentication ignores it) and no output may ever show it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time

import psycopg
import pytest

from bridge import codec
from bridge.inspect import describe
from bridge.protocol import Call
from bridge.store.postgres import PostgresStore
from bridge.session import SessionData
from bridge.store.sqlite import SQLiteStore
from bridge.store import CARecord, Change, SessionWrite
from bridge.testing import Harness
from tests.apps import Counter
from tests.conftest import ROOT, free_port

PASSWORD = "secret"


def cli(*args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bridge ARGS``; check its exit code, and that no output shows the password."""
    return clis((args, expect))[0]


def clis(*calls: tuple[tuple[str, ...], int]) -> list[subprocess.CompletedProcess[str]]:
    """Several independent ``(args, expected exit code)`` invocations at once (each costs a Python start-up)."""
    procs = [subprocess.Popen([sys.executable, "-m", "bridge", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args, _ in calls]
    done = []
    for proc, (args, expect) in zip(procs, calls, strict=True):
        out, err = proc.communicate(timeout=60)
        assert PASSWORD not in out + err, (args, out, err)
        assert proc.returncode == expect, (args, proc.returncode, out, err)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


@pytest.fixture
def url(pg_empty_url):
    """The test's empty database, reached with a password in the URL."""
    with_password = re.sub(r"://([^:@/]+)@", rf"://\1:{PASSWORD}@", pg_empty_url, count=1)
    assert PASSWORD in with_password
    return with_password


def records(store) -> dict[str, CARecord]:
    async def load() -> dict[str, CARecord]:
        await store.open()
        try:
            return {r.name: r for r in await store.load_all()}
        finally:
            await store.close()

    return asyncio.run(load())


def build_sqlite_store(path) -> dict[str, CARecord]:
    """A real bridge's store: calls with notifications queued and acknowledged, dedup records, a sliding dedup
    window, a request id with a NUL (which a bridge refuses now, but a store written before may hold), several
    sessions and CAs."""

    async def build() -> None:
        async with Harness(Counter, db=path) as h:
            for ca in ("c1", "c2", "c3"):
                for i in range(3):
                    assert await h.call(ca, "default", "record_notify", f"t{i}") == 1  # notifies session "watch"
            await h.ack("c1", "watch", 2)
            # past the ingress (which refuses it), straight into the runtime, as an older bridge ran it
            future = asyncio.get_running_loop().create_future()
            h.runtime.submit("c1", Call("phone", "cbor", "id\x00with-nul", "record", ["x"]), future)
            assert (await future)["ok"] == 1
            assert await h.call("c2", "default", "notify_to", "desk", "hello", {"b": b"\x00\xff"}) == 1
            for _ in range(90):  # more than the CA's window (64) plus the store's lag of one session window (8)
                await h.call("c4", "default", "incr")
        # made by `ca-bridge create`, never loaded: empty state
        s = SQLiteStore(path)
        await s.open()
        try:
            assert await s.register("c5")
        finally:
            await s.close()

    asyncio.run(build())
    found = records(SQLiteStore(path))
    assert sorted(found) == ["c1", "c2", "c3", "c4", "c5"]
    assert [seq for seq, _ in found["c1"].sessions["watch"].notes] == [3]  # acked up to 2
    assert len(found["c2"].sessions["watch"].notes) == 3
    assert any(rid == "id\x00with-nul" for _, _, rid, _ in found["c1"].dedup)
    assert 0 < len(found["c4"].dedup) < 90  # the window slid
    assert found["c5"].state == b""
    return found


def sql(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


# -- create and inspect --------------------------------------------------------------------------------------------


def test_create_then_inspect(url):
    out = cli("create", "--db", url, "a", "b").stdout
    assert out.splitlines() == ["created a", "created b"]
    out = cli("create", "--db", url, "a", "c").stdout
    assert out.splitlines() == ["exists already: a", "created c"]
    err = cli("create", "--db", url, "d", "bad name!", expect=2).stderr
    assert "invalid CA name" in err

    as_json, as_text = clis((("inspect", "--db", url, "--json"), 0), (("inspect", "--db", url), 0))
    listed = json.loads(as_json.stdout)
    assert [ca["name"] for ca in listed] == ["a", "b", "c"]  # "d" was not made: every name is checked first
    assert all(ca["state"] is None and ca["sessions"] == {} and ca["dedup_records"] == 0 for ca in listed)
    text = as_text.stdout.splitlines()
    assert text[0].split() == ["CA", "sessions", "queued"]
    assert [line.split() for line in text[1:]] == [["a", "0", "0"], ["b", "0", "0"], ["c", "0", "0"]]
    assert sql(url, "SELECT count(*) FROM ca WHERE owner IS NOT NULL") == [(0,)]  # unowned: any bridge claims


def test_inspect_one_ca_and_an_unknown_one(url):
    async def fill() -> None:
        s = PostgresStore(url)
        await s.open()
        try:
            meta = codec.dumps(list(SessionData(5, next_seq=2).meta()))
            await s.commit([Change("dev", codec.dumps({"n": 7}), {"phone": SessionWrite(meta, [(1, codec.dumps([1]))])},
                                   [(1, "phone", "r1", b"\xa0")])])
        finally:
            await s.close()

    asyncio.run(fill())
    as_json, as_text, unknown, unknown_param = clis(
        (("inspect", "dev", "--db", url, "--json"), 0),
        (("inspect", "dev", "--db", url), 0),
        (("inspect", "nope", "--db", url), 1),
        # a password given as a parameter is hidden too
        (("inspect", "nope", "--db", url.replace(f":{PASSWORD}@", "@") + f"?password={PASSWORD}"), 1),
    )
    one = json.loads(as_json.stdout)
    assert one["name"] == "dev" and one["state"] == {"n": 7} and one["dedup_records"] == 1
    assert one["sessions"]["phone"]["queued"] == 1
    assert as_text.stdout.startswith("CA dev\nstate:") and "phone: 1 queued" in as_text.stdout
    assert "no CA named 'nope'" in unknown.stderr
    assert url.replace(f":{PASSWORD}@", "@") in unknown.stderr  # the database is named, without its password
    assert "password=***" in unknown_param.stderr


def test_inspect_never_writes_not_even_to_an_empty_database(url):
    """Issue 14 item 13: `ca-bridge inspect` on an empty database created the whole schema. It opens the database
    read-only now: it says there is no ca-bridge schema, and the database stays empty."""
    listing, one = clis((("inspect", "--db", url), 2), (("inspect", "dev", "--db", url, "--json"), 2))
    for out in (listing, one):
        assert out.stderr.splitlines() == [
            f"ca-bridge: no ca-bridge schema in {url.replace(f':{PASSWORD}@', '@')} (no bridge has run on it)"]
        assert out.stdout == ""
    assert sql(url, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public'") == [(0,)]
    assert sql(url, "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = 'public'") == [(0,)]


# -- migrate -------------------------------------------------------------------------------------------------------


def test_migrate_copies_every_record(tmp_path, url):
    src = tmp_path / "bridge.db"
    want = build_sqlite_store(src)
    out = cli("migrate", str(src), url, "--batch", "2").stdout.splitlines()
    assert out[:3] == ["copied 2/5 CAs", "copied 4/5 CAs", "copied 5/5 CAs"]
    assert out[3].startswith(f"migrated 5 CAs from {src} to postgresql://")
    assert records(PostgresStore(url)) == want
    assert sql(url, "SELECT count(*) FROM ca WHERE owner IS NOT NULL") == [(0,)]
    assert sql(url, "SELECT value FROM ca_bridge_meta WHERE key = 'app'") == [("apps:Counter",)]  # the app came too

    # inspect reads the copy as it read the original
    copy_c1, original_c1, copy_all = clis((("inspect", "c1", "--db", url, "--json"), 0),
                                          (("inspect", "c1", "--db", str(src), "--json"), 0),
                                          (("inspect", "--db", url, "--json"), 0))
    assert json.loads(copy_c1.stdout) == json.loads(original_c1.stdout)
    assert json.loads(copy_all.stdout) == json.loads(
        json.dumps([describe(want[n]) for n in sorted(want)], default=lambda b: {"$bytes": b.hex()}))


def test_migrate_refuses_a_database_of_another_app(tmp_path, url):
    """The database records its app like a SQLite store (issue 14 item 3): another app's store is not mixed in."""
    src = tmp_path / "bridge.db"
    build_sqlite_store(src)  # apps:Counter

    async def other_app() -> None:
        s = PostgresStore(url)
        await s.open()
        try:
            assert await s.bind_app("ca:HelloWorld") is None
        finally:
            await s.close()

    asyncio.run(other_app())
    err = cli("migrate", str(src), url, expect=2).stderr
    where = url.replace(f":{PASSWORD}@", "@")
    assert err.splitlines() == [f"ca-bridge: {src} is the store of app apps:Counter, {where} the store of app "
                                "ca:HelloWorld: migrate into a database of its own"]
    assert sql(url, "SELECT count(*) FROM ca") == [(0,)]


def test_migrating_again_refuses_unless_replace(tmp_path, url):
    src = tmp_path / "bridge.db"
    want = build_sqlite_store(src)
    cli("migrate", str(src), url)

    async def diverge() -> None:  # the copy lives on: more notes, another session, dedup records, a new CA
        s = PostgresStore(url)
        await s.open()
        try:
            await s.commit([
                Change("c1", b"\xa1", {"watch": SessionWrite(None, [(4, b"late")]), "extra": SessionWrite(b"m")},
                       [(999, "extra", "late-id", b"r")]),
                Change("only-in-pg", b"\xa0"),
            ])
        finally:
            await s.close()

    asyncio.run(diverge())
    diverged = records(PostgresStore(url))
    err = cli("migrate", str(src), url, expect=2).stderr
    assert "5 of these CAs exist in the target already" in err and "--replace" in err
    assert records(PostgresStore(url)) == diverged  # nothing copied

    cli("migrate", str(src), url, "--replace")
    after = records(PostgresStore(url))
    assert after.pop("only-in-pg") == CARecord("only-in-pg", b"\xa0")  # not in the source: left alone
    assert after == want  # the copies are whole again: no late note, session or dedup record survives


def test_migrate_errors_are_clear(tmp_path, url):
    src = tmp_path / "bridge.db"
    asyncio.run(_empty_sqlite(src))
    t0 = time.monotonic()
    missing, not_pg, closed_port, malformed, empty = clis(
        (("migrate", str(tmp_path / "missing.db"), url), 2),
        (("migrate", str(src), str(tmp_path / "other.db")), 2),
        (("migrate", str(src), f"postgresql://postgres:{PASSWORD}@127.0.0.1:{free_port()}/db"), 2),
        (("inspect", "--db", f"postgresql://postgres:{PASSWORD}@[127.0.0.1/db"), 2),  # libpq quotes this URL
        (("migrate", str(src), url), 0),
    )
    assert time.monotonic() - t0 < 20  # nobody waits for a pool timeout
    assert "no store at" in missing.stderr
    assert "postgresql:// URL" in not_pg.stderr
    assert "cannot connect to PostgreSQL" in closed_port.stderr and "refused" in closed_port.stderr
    assert "cannot connect to PostgreSQL" in malformed.stderr
    assert empty.stdout.splitlines() == [f"migrated 0 CAs from {src} to {url.replace(f':{PASSWORD}@', '@')}"]


async def _empty_sqlite(path) -> None:
    s = SQLiteStore(path)
    await s.open()
    await s.close()
