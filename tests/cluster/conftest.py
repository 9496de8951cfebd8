"""Fixtures for PostgreSQL and multi-bridge tests: one real PostgreSQL server per test session (Debian's
binaries, a throwaway cluster on a free port), and a fresh database per test."""

from __future__ import annotations

import os
import uuid

import pytest

from tests import pgserver


@pytest.fixture(scope="session")
def pg_server():
    if not pgserver.available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run should have installed it)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
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
