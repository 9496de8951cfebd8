"""Fixtures for PostgreSQL and multi-bridge tests: one real PostgreSQL server per test session (Debian's
binaries, a throwaway cluster on a free port), and a fresh database per test."""

from __future__ import annotations

import contextlib
import subprocess
import uuid

import pytest

from tests import pgserver


@pytest.fixture(scope="session")
def pg_server():
    pgserver.require()
    server = pgserver.PostgresServer(fsync=False).start()  # tests check logic, not the disk; benchmarks fsync
    try:
        yield server
    finally:
        server.cleanup()


@contextlib.contextmanager
def _database(server, prefix: str):
    """A new database on ``server``, dropped (whoever is still connected) afterwards; yields its URL."""
    name = prefix + uuid.uuid4().hex[:12]
    server.psql(f"CREATE DATABASE {name}")
    try:
        yield server.url.rsplit("/", 1)[0] + "/" + name
    finally:
        server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the shared server."""
    with _database(pg_server, "t_") as url:
        yield url


@pytest.fixture(scope="module")
def pg_module_db(pg_server):
    """One database per test module, for ``pg_empty_url``."""
    with _database(pg_server, "m_") as url:
        yield url


@pytest.fixture
def pg_empty_url(pg_module_db):
    """An empty database, as ``pg_url`` gives, in a fraction of the time: the module's database with its public
    schema dropped and made again (CREATE DATABASE takes most of a second even without fsync)."""
    import psycopg

    with psycopg.connect(pg_module_db, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return pg_module_db


@pytest.fixture
async def pg(pg_empty_url):
    """An open PostgresStore on an empty database."""
    from bridge.store.postgres import PostgresStore

    store = PostgresStore(pg_empty_url)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def psql(pg_server, pg_empty_url):
    """Run SQL in the test's database (pg_server.psql runs it in the server's default one); returns its output."""

    def run(sql: str) -> str:
        done = subprocess.run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", pg_empty_url, "-c", sql],
                              capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        return done.stdout.strip()

    return run
