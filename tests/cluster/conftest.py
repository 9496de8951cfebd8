"""Fixtures for PostgreSQL and multi-bridge tests: one real PostgreSQL server per test session (Debian's
binaries, a throwaway cluster on a free port), and a fresh database per test."""

from __future__ import annotations

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


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the shared server."""
    name = "t_" + uuid.uuid4().hex[:12]
    pg_server.psql(f"CREATE DATABASE {name}")
    try:
        yield pg_server.url.rsplit("/", 1)[0] + "/" + name
    finally:
        pg_server.psql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        pg_server.psql(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture(scope="module")
def pg_module_db(pg_server):
    """One database per test module, for ``pg_empty_url``."""
    name = "m_" + uuid.uuid4().hex[:12]
    pg_server.psql(f"CREATE DATABASE {name}")
    try:
        yield pg_server.url.rsplit("/", 1)[0] + "/" + name
    finally:
        pg_server.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
