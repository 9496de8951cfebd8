"""open_store: the one place a store is chosen from ``--db``, and membership_for: the cluster that comes with it."""

from __future__ import annotations

import pytest

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.store import Change, MemoryStore, membership_for, open_store
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_membership import PostgresMembership
from bridge.store.sqlite import SQLiteStore


def test_none_is_a_memory_store():
    store = open_store(None)
    assert isinstance(store, MemoryStore)
    assert membership_for(store) is None


@pytest.mark.parametrize("as_path", [True, False], ids=["Path", "str"])
async def test_a_path_is_a_sqlite_file(tmp_path, as_path):
    where = tmp_path / "s.db"
    store = open_store(where if as_path else str(where), synchronous="normal")
    assert isinstance(store, SQLiteStore)
    assert (store.path, store.synchronous, store.read_only) == (where, "NORMAL", False)
    assert membership_for(store) is None
    await store.open()
    try:
        await store.commit([Change("a", b"\xa0")])
    finally:
        await store.close()
    assert where.exists()
    ro = open_store(where, read_only=True)
    assert isinstance(ro, SQLiteStore) and ro.read_only


def test_a_bad_synchronous_setting_is_refused(tmp_path):
    with pytest.raises(ValueError, match="synchronous"):
        open_store(tmp_path / "s.db", synchronous="OFF")


@pytest.mark.parametrize("url", ["postgresql://u:pw@db.example/fleet", "postgres://db.example/fleet"])
def test_a_postgres_url_is_postgresql_with_its_membership(url):
    store = open_store(url, pool_size=7, application_name="ca-bridge b1", read_only=True)
    assert isinstance(store, PostgresStore)  # not connected yet: open() does that
    assert (store.url, store.pool_size, store.application_name, store.read_only) == (url, 7, "ca-bridge b1", True)
    membership = membership_for(store)
    assert isinstance(membership, PostgresMembership) and membership.store is store
    membership.fence("tok")
    assert store.owner == "tok"  # the fence is the store's: its commit checks it
    membership.fence(None)
    assert store.owner is None


@pytest.mark.parametrize("url", ["mysql://u:secret@db/x", "sqlite:///tmp/x.db", "redis://db:6379"])
def test_another_url_scheme_is_a_clear_error_without_the_password(url):
    with pytest.raises(ConfigError) as caught:
        open_store(url)
    message = str(caught.value)
    assert message.startswith("unsupported store URL ") and "postgresql://" in message
    assert "secret" not in message


def test_the_cli_says_so_in_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing is made for such a --db (it used to be taken for a file path)
    assert main(["inspect", "--db", "mysql://u:secret@db/x"]) == 2
    err = capsys.readouterr().err
    assert err == "ca-bridge: unsupported store URL mysql://u@db/x: give a SQLite file path or a postgresql:// URL\n"
    assert main(["create", "--db", "ftp://host/file.db", "c1"]) == 2
    assert "unsupported store URL ftp://host/file.db" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
