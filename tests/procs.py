"""Starting, watching and stopping the processes that the tests, the chaos and load runners and the benchmarks run:
free ports, mosquitto on a free port, a bridge (embedded amqtt broker or an external one), CPU and memory from /proc.

Shared by tests/conftest.py (which re-exports the names the tests import from it), tests/chaos, tests/load and
benchmarks/ (which put the project's root on sys.path and import ``tests.procs``). It imports nothing from the
bridge; a missing mosquitto goes through tests/skips.py (a skip or a CI failure in pytest, an error in a script).
"""

from __future__ import annotations

import contextlib
import ctypes
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
CLK_TCK = os.sysconf("SC_CLK_TCK")
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child
_SPAWNED: list[subprocess.Popen[Any]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{_name(proc)} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def _die_with_parent() -> None:  # in the child, between fork and exec
    _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], *, session: bool = False, **kw: Any) -> subprocess.Popen[Any]:
    """Popen with a parent-death signal (SIGTERM when this process dies, even by SIGKILL), so that nothing outlives
    a killed test or benchmark; ``session``: in its own session (a Ctrl-C in the terminal does not reach it).

    The signal is tied to the thread that forks, so a child started from another thread (which may end before
    the child should) does not get it."""
    if threading.current_thread() is threading.main_thread():
        kw.setdefault("preexec_fn", _die_with_parent)
    kw.setdefault("cwd", ROOT)
    proc = subprocess.Popen(cmd, start_new_session=session, **kw)
    _SPAWNED[:] = [p for p in _SPAWNED if p.poll() is None] + [proc]
    return proc


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_all(timeout: float = 5.0) -> None:
    """Stop every process ``spawn`` started that still runs, the newest first."""
    for proc in reversed(_SPAWNED):
        with contextlib.suppress(Exception):
            stop(proc, timeout=timeout)
    _SPAWNED.clear()


def is_ready(line: str) -> bool:
    """A bridge's "ready" line: ``... listening on ca/+/in via ...`` (not ``waiting for broker ...``)."""
    return "listening" in line and "waiting for" not in line


def wait_output(proc: subprocess.Popen[Any], ready: Callable[[str], bool] = is_ready, timeout: float = 20.0,
                log: Path | None = None) -> str:
    """Read ``proc``'s stdout (a pipe) until a line satisfies ``ready``; returns that line. Raises if the process
    exits or the time runs out (with the tail of ``log``)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    seen = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(BlockingIOError):
            seen += os.read(fd, 65536) or b""
        for line in seen.decode(errors="replace").splitlines():
            if ready(line):
                return line
        if proc.poll() is not None:
            raise RuntimeError(f"{_name(proc)} exited with {proc.returncode}: {_tail(log)}")
        time.sleep(0.02)
    raise TimeoutError(f"{_name(proc)} not ready within {timeout:.0f}s: {_tail(log)}")


def _name(proc: subprocess.Popen[Any]) -> str:
    args = proc.args if isinstance(proc.args, list) else [proc.args]
    return Path(str(args[0])).name


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""


class Mosquitto:
    """A real mosquitto on a free loopback port, restartable on the same port. ``conf``: more config lines;
    ``persistence``: sessions, subscriptions and queued messages survive a restart (saved on SIGTERM in workdir);
    ``log``: its errors and warnings go to mosquitto-PORT.log in workdir."""

    def __init__(self, workdir: Path, conf: str = "max_queued_messages 10000\n", *, persistence: bool = False,
                 log: bool = False) -> None:
        if MOSQUITTO is None:
            from tests.skips import missing

            missing("mosquitto is not installed", "apt-get install mosquitto")
        self.binary = MOSQUITTO
        self.port = free_port()
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log" if log else None
        # as root, mosquitto drops to the user "mosquitto" unless told otherwise, and could not write workdir
        keep = f"persistence true\npersistence_location {workdir}/\nuser {getpass.getuser()}\n" if persistence \
            else "persistence false\n"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{keep}set_tcp_nodelay true\n"
                             f"{conf}" + ("log_dest stderr\n" if log else ""))
        self.proc: subprocess.Popen[Any] | None = None

    def start(self) -> Mosquitto:
        out: Any = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps it
        self.proc = spawn([self.binary, "-c", str(self.conf)], stdout=out, stderr=out)
        if self.log:
            out.close()
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)
            self.proc = None


class BridgeProcess:
    """`python -m bridge run APP` as a child process (embedded amqtt, or an external broker); ``start`` waits for
    its ready line and records the seconds that took in ``startup``."""

    def __init__(self, app: str, db: Path, *, broker_port: int | None = None, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, store: str | None = None,
                 options: list[str] | None = None, log_level: str = "INFO", wrap: list[str] | None = None) -> None:
        self.app = app
        self.db = db
        self.store = store or str(db)  # a postgresql:// URL instead of the SQLite file, for clusters
        self.options = options or []  # global options, before `run` (e.g. --log-format json)
        self.external = broker_port is not None
        self.port = broker_port or free_port()
        self.extra = extra or []
        self.env = env or {}
        self.log_level = log_level
        self.wrap = wrap or []  # e.g. [python, -m, cProfile, -o, FILE]: runs `-m bridge` under it
        self.proc: subprocess.Popen[Any] | None = None
        self.log = db.with_suffix(".log")
        self.startup = 0.0

    def start(self, timeout: float = 20.0) -> BridgeProcess:
        cmd = [*(self.wrap or [PYTHON]), "-m", "bridge", "--log-level", self.log_level, *self.options, "run",
               self.app, "--db", self.store]
        where = f"127.0.0.1:{self.port}"
        cmd += ["--broker", f"mqtt://{where}"] if self.external else ["--listen", where]
        cmd += self.extra
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        began = time.monotonic()
        with open(self.log, "ab") as logf:  # the child keeps its own descriptor
            self.proc = spawn(cmd, stdout=subprocess.PIPE, stderr=logf, env=env)
        try:
            wait_output(self.proc, is_ready, timeout, self.log)
        except TimeoutError:
            self.stop()
            raise
        self.startup = time.monotonic() - began
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop(self.proc, signal.SIGTERM, timeout)
            self.proc = None

    def logs(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


# -- /proc ----------------------------------------------------------------------------------------------------------


def _stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    f = _stat(pid)
    return (int(f[11]) + int(f[12])) / CLK_TCK if f else 0.0


def thread_cpu(pid: int) -> dict[int, tuple[float, float]]:
    """User and system CPU seconds of each live thread of a process, by thread id (the process's id: its main
    thread)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        f = _stat(f"{pid}/task/{tid}")
        if f is not None:
            out[int(tid)] = (int(f[11]) / CLK_TCK, int(f[12]) / CLK_TCK)
    return out


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root``, its reaped children and its live children (a postmaster and its backends)."""
    total = 0
    for entry in os.listdir("/proc"):
        f = _stat(entry) if entry.isdigit() else None
        if f is None:
            continue
        if int(entry) == root:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        elif int(f[1]) == root:
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, interrupts) CPU seconds of the whole machine since boot (steal counts as busy)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    return (sum(vals[:8]) - vals[3] - vals[4]) / CLK_TCK, (vals[5] + vals[6]) / CLK_TCK


def rss_mb(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def settle_rss(pid: int, limit: float = 5.0) -> float:
    """RSS in MB once it stops moving (within 0.5% between two reads 0.25 s apart), or after ``limit`` seconds."""
    last, deadline = rss_mb(pid), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_mb(pid)
        if abs(now - last) <= 0.005 * max(now, 1):
            break
        last = now
    return last


def stored_states(db: Path, ca: str | None = None) -> dict[str, bytes]:
    """The committed state of every CA (or of ``ca``) in a bridge's store, read as ``ca-bridge inspect`` reads it:
    the SQLite file plus the redo log's records not applied to it yet. Works beside a running bridge and after one
    was killed, from inside an event loop too (it reads on a thread of its own); {} while the store does not exist
    yet."""
    import asyncio

    from bridge.errors import StoreError
    from bridge.store.sqlite import SQLiteStore

    async def read() -> dict[str, bytes]:
        store = SQLiteStore(db, read_only=True)
        try:
            await store.open()
        except StoreError:
            return {}
        try:
            if ca is not None:
                rec = await store.load(ca)
                return {} if rec is None else {ca: rec.state}
            return {rec.name: rec.state for rec in await store.load_all()}
        finally:
            await store.close()

    if not db.exists():
        return {}
    out: list[dict[str, bytes]] = []
    reader = threading.Thread(target=lambda: out.append(asyncio.run(read())))  # callers may be inside a loop
    reader.start()
    reader.join()
    return out[0]
