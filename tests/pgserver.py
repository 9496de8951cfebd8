"""A real PostgreSQL server for tests, benchmarks and the chaos run: Debian's binaries, a fresh cluster in a
temporary directory, listening on 127.0.0.1 on a free port. Run as root, the server runs as the postgres user
(initdb refuses root); run as anyone else, it runs as that user.

Usable as a script too: ``python tests/pgserver.py`` starts one and prints its URL until interrupted.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def _bindir() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(candidates[-1]).parent if candidates else None


def available() -> bool:
    """True if PostgreSQL's server binaries are installed."""
    return _bindir() is not None


def require() -> None:
    """In a test: skip when PostgreSQL is not installed, or fail under CI (where .ci/run installs it)."""
    from tests.skips import require as need

    need(available(), "PostgreSQL is not installed", "apt-get install postgresql")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One throwaway PostgreSQL cluster. ``start()``, ``url``, ``stop()``; ``cut_connections()`` for chaos."""

    def __init__(self, *, fsync: bool = True, max_connections: int = 200) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = bindir
        self.port = _free_port()
        self.fsync = fsync
        self.max_connections = max_connections
        self.dir = Path(tempfile.mkdtemp(prefix="ca-bridge-pg-"))
        self.data = self.dir / "data"
        self.user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"
        self._running = False

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *argv], capture_output=True, text=True, timeout=120, check=False)

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        if not self.data.exists():
            done = self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                             "-E", "UTF8", "--no-instructions")
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr.strip()}")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections={self.max_connections}"
            f" -c fsync={'on' if self.fsync else 'off'} -c shared_buffers=64MB"
        )
        done = self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
                         str(self.dir / "server.log"), "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = (self.dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"PostgreSQL did not start: {done.stderr.strip()}\n{log}")
        self._running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``immediate`` is a crash without a checkpoint); the data directory stays."""
        if self._running:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
            self._running = False

    def cleanup(self) -> None:
        """Stop and delete everything."""
        self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def psql(self, sql: str) -> str:
        """Run SQL with psql; returns its unaligned output."""
        done = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", self.url, "-c", sql],
            capture_output=True, text=True, timeout=60, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def cut_connections(self, application_prefix: str = "ca-bridge") -> int:
        """Terminate every backend of the bridges (as a network cut or a database failover would)."""
        out = self.psql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name LIKE '{application_prefix}%' AND pid <> pg_backend_pid()"
        )
        return int(out or 0)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


if __name__ == "__main__":
    server = PostgresServer().start()
    print(server.url, flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.cleanup()
        time.sleep(0.1)
