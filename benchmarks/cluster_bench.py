#!/usr/bin/env python3
"""Benchmark of ca-bridge clusters: 1 bridge on SQLite vs 1, 2 and 3 bridges sharing one PostgreSQL, on mosquitto.

    .venv/bin/python benchmarks/cluster_bench.py [--quick] [--rounds N] [--clients N] [--out benchmarks/results/cluster]
    .venv/bin/python benchmarks/cluster_bench.py --only throughput|storage|takeover[,...]   # a part only
    .venv/bin/python benchmarks/cluster_bench.py --report benchmarks/results/cluster.json   # re-print a run's table

To benchmark a given commit while the work tree changes, run it from an export (``git archive HEAD | tar -x -C
DIR``, copy this file in) with ``BENCH_GIT_HEAD=<commit>`` set, so the report names the commit.

One run, on one mosquitto and one throwaway PostgreSQL 15 (tests/pgserver.py, fsync on, synchronous_commit on):

1. throughput: 16 closed-loop clients, each calling ``incr`` on its own CA (bench.py's load generators, imported),
   against each configuration in turn: 1 bridge on SQLite (synchronous FULL), 1/2/3 bridges on PostgreSQL, and a
   control: 2/3 bridges on PostgreSQL *partitioned* (each bridge has its own topic prefix and the clients address
   the bridge whose prefix they use, so nothing is ever forwarded: what perfect routing would give). Calls/s,
   p50/p99, CPU per call per process type (bridges, mosquitto, PostgreSQL = the postmaster and all its children,
   the load generators, everything else), PostgreSQL transactions, rows, WAL bytes and WAL fsyncs per call
   (pg_stat_database / pg_stat_wal / WAL position deltas over the measured window), connections per bridge
   (pg_stat_activity by application_name at the end of the window). The full run measures every configuration in
   two alternating rounds (fresh bridges and a fresh database each time) and reports both;
2. forwarding: on the shared-subscription configurations, a separate short pass with the same 16 clients and a
   monitor subscribed to the bridges' private forwarding topics (``<prefix>/_fwd/#``): the fraction of requests
   forwarded, and the latency of forwarded vs direct requests. The cost in throughput and CPU is the difference
   from the partitioned control;
3. capacity: new CAs created by the load (16 clients each walking its own list of never-seen CAs, one session
   each) on 1 PostgreSQL bridge and on 1 SQLite bridge: creation rate and bytes per CA (pg_total_relation_size of
   the tables, as written and after VACUUM FULL; the SQLite file); in the full run also CAs called 70 times each
   (their dedup window, 64 replies, full); time to claim a never-seen CA (first call) vs later calls, one client,
   idle cluster; takeover: SIGKILL the bridge that owns a CA while one client keeps calling that CA (retrying the
   same request id every 100 ms), time from the kill until a call succeeds again: with the default --node-ttl 5,
   with an immediate restart under the same --node name, and (for comparison) a clean SIGTERM.

Everything runs on the same machine (mosquitto, PostgreSQL, the bridges, the load generators): on 2 cores they
compete for the CPU, which the CPU columns make visible. Nothing here asserts on timings. Every process started
is stopped at the end (also on Ctrl-C or an error); the PostgreSQL server and its data directory are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import bench  # noqa: E402  (benchmarks/bench.py: load generators, process helpers)
from bench import PY, ROOT as _ROOT, fmt, log, pct  # noqa: E402

APP = bench.APP
CLIENTS = 16
TABLES = ("ca", "session", "note", "dedup", "node")
CLEANUP: list[Any] = []  # run at exit, whatever happened (the PostgreSQL server is not our child)


# ======================================================================================================
# Auxiliary load (``cluster_bench.py _job``): one process, paho clients (bench.Conn) on one selector loop.
# Each client walks its own list of CAs (once, or cycling for a time / a number of calls), one call outstanding,
# recording every call; optionally a monitor counts the requests forwarded between bridges.
# ======================================================================================================


class Walker:
    def __init__(self, spec: dict[str, Any], port: int, sel: selectors.BaseSelector, job: Job) -> None:
        import cbor2

        self.dumps, self.loads = cbor2.dumps, cbor2.loads
        self.job = job
        self.prefix = spec["prefix"]
        self.session = spec["session"]
        self.cas: list[str] = spec["cas"]
        self.calls_max = spec.get("calls") or (None if spec.get("cycle") else len(self.cas))
        self.tag = os.urandom(4).hex()
        self.n = 0
        self.rid: str | None = None
        self.t_sent = 0.0
        self.done = False
        self.conn = bench.Conn(sel, spec["cid"], port, [f"{self.prefix}/+/session/{self.session}"], self.on_message)

    def send(self) -> None:
        ca = self.cas[self.n % len(self.cas)]
        self.n += 1
        self.rid = f"{self.tag}-{self.n}"
        payload = self.dumps({"t": "call", "id": self.rid, "session": self.session, "method": "incr", "args": []})
        self.t_sent = time.monotonic()
        self.conn.publish(f"{self.prefix}/{ca}/in", payload)

    def on_message(self, _c: Any, _u: Any, m: Any) -> None:
        now = time.monotonic()
        try:
            msg = self.loads(m.payload)
        except Exception:
            return
        if type(msg) is not dict or msg.get("id") != self.rid:
            return
        rid, self.rid = self.rid, None
        if self.job.start <= now < self.job.end:
            self.job.calls.append((rid, round((now - self.t_sent) * 1000, 4), "err" in msg))
            if "err" in msg and self.job.first_error is None:
                self.job.first_error = msg["err"]
        if (self.calls_max is not None and self.n >= self.calls_max) or now >= self.job.end:
            self.done = True
        else:
            self.send()


class Job:
    def __init__(self) -> None:
        self.start = 0.0
        self.end = float("inf")
        self.calls: list[tuple[str, float, bool]] = []
        self.forwarded: set[str] = set()
        self.first_error: Any = None


def job_main() -> None:
    """Read one job (JSON) on stdin, run it, print the result (JSON)."""
    import cbor2

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec = json.loads(sys.stdin.readline())
    port = spec["port"]
    sel = selectors.DefaultSelector()
    job = Job()
    walkers: list[Walker] = []
    conns: list[bench.Conn] = []

    def on_fwd(_c: Any, _u: Any, m: Any) -> None:
        with contextlib.suppress(Exception):
            msg = cbor2.loads(m.payload)
            job.forwarded.add(msg["id"])

    try:
        if spec.get("monitor"):
            conns.append(bench.Conn(sel, f"fwdmon-{os.urandom(3).hex()}", port, [spec["monitor"]], on_fwd))
        for c in spec["clients"]:
            walkers.append(Walker(c, port, sel, job))
        conns += [w.conn for w in walkers]
        deadline = time.monotonic() + 30
        while not all(c.subscribed for c in conns):
            if time.monotonic() > deadline or not all(c.alive for c in conns):
                raise RuntimeError("clients did not connect/subscribe")
            bench._pump(sel, 0.05)
        t0 = time.monotonic()
        job.start = t0 + spec.get("warmup", 0.0)
        job.end = job.start + spec["duration"]
        for w in walkers:
            w.send()
        while time.monotonic() < job.end and not all(w.done for w in walkers):
            bench._pump(sel, 0.05)
        t_end = time.monotonic()
        drain = t_end + 10
        while any(w.rid is not None and w.conn.alive for w in walkers) and time.monotonic() < drain:
            bench._pump(sel, 0.05)
        settle = time.monotonic() + 0.3  # forwarded copies may trail the replies by a hair
        while time.monotonic() < settle:
            bench._pump(sel, 0.05)
        out = {
            "calls": [[rid, lat, err, rid in job.forwarded] for rid, lat, err in job.calls],
            "elapsed": min(t_end, job.end) - job.start, "forwarded_seen": len(job.forwarded),
            "lost": sum(1 for w in walkers if w.rid is not None), "first_error": job.first_error,
        }
    except Exception as exc:
        out = {"error": repr(exc)}
    finally:
        for c in conns:
            c.close()
        sel.close()
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def run_job(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    p = bench.spawn([PY, str(Path(__file__).resolve()), "_job"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True, cwd=ROOT)
    try:
        out, _ = p.communicate(json.dumps(spec) + "\n", timeout=timeout)
    finally:
        bench.stop_proc(p, 5.0)
    res = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"error": "job printed nothing"}
    if "error" in res:
        raise RuntimeError(f"load job failed: {res['error']}")
    return res


# ======================================================================================================
# A single in-process caller (paho thread) for the latency probes and the takeover measurement
# ======================================================================================================


class Caller:
    def __init__(self, port: int, prefix: str = "ca", session: str = "probe", monitor: bool = False) -> None:
        import cbor2

        paho, api = bench._paho()
        self.dumps, self.loads = cbor2.dumps, cbor2.loads
        self.prefix, self.session = prefix, session
        self.cond = threading.Condition()
        self.replies: dict[str, tuple[float, dict[str, Any]]] = {}
        self.forwarded: set[str] = set()  # with ``monitor``: ids of the requests seen on <prefix>/_fwd/#
        subscribed = threading.Event()
        c = paho.Client(api.VERSION2, client_id=f"caller-{os.urandom(4).hex()}", clean_session=True,
                        protocol=paho.MQTTv311)

        def on_connect(client: Any, *_a: Any) -> None:
            client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            subs = [(f"{prefix}/+/session/{session}", 1)]
            if monitor:
                subs.append((f"{prefix}/_fwd/#", 1))
            client.subscribe(subs)

        def on_message(_c: Any, _u: Any, m: Any) -> None:
            now = time.monotonic()
            try:
                msg = self.loads(m.payload)
            except Exception:
                return
            if m.topic.startswith(f"{prefix}/_fwd/"):
                with self.cond:
                    self.forwarded.add(msg.get("id"))
                return
            if type(msg) is dict and "id" in msg:
                with self.cond:
                    self.replies.setdefault(msg["id"], (now, msg))
                    self.cond.notify_all()

        c.on_connect = on_connect
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = on_message
        c.max_inflight_messages_set(1000)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        if not subscribed.wait(30):
            self.close()
            raise RuntimeError("caller: no SUBACK")

    def call(self, ca: str, timeout: float = 30.0, retry: float | None = None,
             stop: threading.Event | None = None) -> tuple[float, float, dict[str, Any] | None, int]:
        """One incr call: (time sent, time answered, reply or None on timeout, attempts)."""
        t0, t1, msg, attempts, _ = self.call_rid(ca, timeout, retry, stop)
        return t0, t1, msg, attempts

    def call_rid(self, ca: str, timeout: float = 30.0, retry: float | None = None,
                 stop: threading.Event | None = None) -> tuple[float, float, dict[str, Any] | None, int, str]:
        """One incr call: (time sent, time answered, reply or None on timeout, attempts). With ``retry``, the same
        request (same id, so the bridge's dedup makes it exactly-once) is published again every ``retry`` s."""
        rid = os.urandom(6).hex()
        payload = self.dumps({"t": "call", "id": rid, "session": self.session, "method": "incr", "args": []})
        topic = f"{self.prefix}/{ca}/in"
        t0 = time.monotonic()
        deadline = t0 + timeout
        attempts = 0
        with self.cond:
            while True:
                if rid in self.replies:
                    t, msg = self.replies.pop(rid)
                    return t0, t, msg, attempts, rid
                now = time.monotonic()
                if now >= deadline or (stop is not None and stop.is_set()):
                    return t0, now, None, attempts, rid
                self.client.publish(topic, payload, 1)
                attempts += 1
                wait_until = min(deadline, now + retry) if retry else deadline
                while rid not in self.replies and time.monotonic() < wait_until:
                    self.cond.wait(max(0.001, wait_until - time.monotonic()))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
            self.client.loop_stop()


# ======================================================================================================
# Processes and measurements
# ======================================================================================================


def proc_stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and its live children, plus its reaped children's (the postmaster's backends)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = proc_stat(entry)
        if f is None:
            continue
        if int(entry) == root:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
        elif int(f[1]) == root:
            total += int(f[11]) + int(f[12])
    return total / bench.CLK_TCK


class Pg:
    """The PostgreSQL server, plus a stats connection."""

    def __init__(self) -> None:
        import psycopg

        from tests.pgserver import PostgresServer

        self.psycopg = psycopg
        self.server = PostgresServer(fsync=True, max_connections=200)
        CLEANUP.append(self.server.cleanup)
        self.server.start()
        self.base = self.server.url.rsplit("/", 1)[0]
        self.conn = psycopg.connect(self.server.url, autocommit=True, application_name="cluster-bench")
        pidfile = self.server.data / "postmaster.pid"
        self.postmaster = int(pidfile.read_text().split()[0])

    def create(self, name: str) -> str:
        self.conn.execute(f"CREATE DATABASE {name}")
        return f"{self.base}/{name}"

    def q(self, sql: str, args: tuple[Any, ...] = (), db: str | None = None) -> list[tuple[Any, ...]]:
        if db is None:
            return self.conn.execute(sql, args).fetchall()
        with self.psycopg.connect(f"{self.base}/{db}", autocommit=True, application_name="cluster-bench") as c:
            cur = c.execute(sql, args)
            return cur.fetchall() if cur.description is not None else []

    def snapshot(self, db: str) -> dict[str, float]:
        row = self.q(
            "SELECT d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted, "
            "w.wal_bytes, w.wal_sync, w.wal_write, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') "
            "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = %s", (db,))[0]
        keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "wal_bytes_stat",
                "wal_sync", "wal_write", "wal_lsn")
        return {k: float(v) for k, v in zip(keys, row, strict=True)}

    def connections(self, db: str) -> dict[str, int]:
        return {name: int(n) for name, n in self.q(
            "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name <> 'cluster-bench' GROUP BY 1 ORDER BY 1", (db,))}

    def sizes(self, db: str) -> dict[str, dict[str, int]]:
        out = {}
        for t in TABLES:
            size, rows = self.q(f"SELECT pg_total_relation_size('{t}'), (SELECT count(*) FROM {t})", db=db)[0]
            out[t] = {"bytes": int(size), "rows": int(rows)}
        return out

    def owners(self, db: str) -> dict[str, int]:
        return {n: int(c) for n, c in self.q(
            "SELECT n.name, count(ca.name) FROM node n LEFT JOIN ca ON ca.owner = n.token "
            "WHERE n.expires > now() GROUP BY n.name ORDER BY n.name", db=db)}

    def owner_of(self, db: str, ca: str) -> str | None:
        rows = self.q("SELECT n.name FROM ca JOIN node n ON n.token = ca.owner WHERE ca.name = %s", (ca,), db=db)
        return rows[0][0] if rows else None

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()
        self.server.cleanup()


class Env:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.count = 0
        self.logs: list[Path] = []

    def mosquitto(self) -> tuple[subprocess.Popen[Any], int]:
        return bench.Env(self.tmp).mosquitto()

    def bridge(self, port: int, db: str, node: str | None = None, prefix: str = "ca",
               extra: list[str] | None = None) -> subprocess.Popen[Any]:
        self.count += 1
        cmd = [PY, "-m", "bridge", "--log-level", "WARNING", "run", APP, "--db", db, "--pulse", "0",
               "--max-sessions", "1000", "--broker", f"mqtt://127.0.0.1:{port}", "--prefix", prefix,
               "--client-id", f"cbench-{os.getpid()}-{self.count}"]
        if node:
            cmd += ["--node", node]
        cmd += extra or []
        logf = self.tmp / f"bridge-{self.count}-{node or 'sqlite'}.log"
        self.logs.append(logf)
        with open(logf, "w") as err:  # the child keeps its own descriptor
            p = bench.spawn(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=_ROOT)
        bench.wait_line(p, "listening", 120)
        return p

    def log_summary(self) -> dict[str, Any]:
        """Warnings and errors the bridges logged (at WARNING level), grouped by message head."""
        counts: dict[str, int] = {}
        for f in self.logs:
            with contextlib.suppress(OSError):
                for line in f.read_text(errors="replace").splitlines():
                    if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                        head = line.split(" ", 3)[-1][:140]
                        counts[head] = counts.get(head, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:30])


def fsync_latency(directory: Path, count: int = 200) -> dict[str, float]:
    """Median and p90 ms of an 8 KiB overwrite + fdatasync on the disk PostgreSQL and SQLite write to."""
    path = directory / "fsync-probe"
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        block = os.urandom(8192)
        for _ in range(count):
            t = time.perf_counter()
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"p50_ms": round(pct(times, 0.5) or 0, 3), "p90_ms": round(pct(times, 0.9) or 0, 3)}


def git_state() -> dict[str, Any]:
    """The commit the bridges ran from, and whether bridge/ had uncommitted changes (read-only git calls)."""
    def git(*argv: str) -> str:
        with contextlib.suppress(Exception):
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        return ""

    if os.environ.get("BENCH_GIT_HEAD"):  # run from an exported snapshot of that commit (git archive)
        return {"git_head": os.environ["BENCH_GIT_HEAD"], "bridge_dirty": False}
    return {"git_head": git("rev-parse", "--short", "HEAD"),
            "bridge_dirty": bool(git("status", "--porcelain", "--", "bridge"))}


def machine_busy() -> float:
    return bench.machine_busy()[0]


def irq_seconds() -> float:
    """CPU seconds the whole machine spent in hard and soft interrupts (loopback TCP is processed there, charged to
    no process)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    return (vals[5] + vals[6]) / bench.CLK_TCK


def kill(p: subprocess.Popen[Any], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(p.pid, sig)
    p.wait(30)
    if p in bench.PROCS:
        bench.PROCS.remove(p)


# ======================================================================================================
# The benchmark
# ======================================================================================================


class ClusterBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.warmup = 1.0 if args.quick else 3.0
        self.duration = 3.0 if args.quick else 12.0
        self.rounds = args.rounds or (1 if args.quick else 2)
        self.fwd_duration = 2.0 if args.quick else 5.0
        self.new_cas = 2000 if args.quick else 10000
        self.claim_probes = 8 if args.quick else 25
        self.quiet_budget = 30.0 if args.quick else 300.0  # total seconds spent waiting for a quiet machine
        self.tmp = tmp
        self.env = Env(tmp)
        self.workers = bench.Workers(bench.LOAD_PROCS)
        self.pg = Pg()
        self.mq, self.port = self.env.mosquitto()
        self.rows: list[dict[str, Any]] = []
        self.forwarding: list[dict[str, Any]] = []
        self.claims: list[dict[str, Any]] = []
        self.storage: list[dict[str, Any]] = []
        self.takeover: list[dict[str, Any]] = []
        self.dbs = 0
        log(f"cluster benchmark ({'quick' if self.quick else 'full'}): {CLIENTS} clients, warm-up {self.warmup}s, "
            f"measure {self.duration}s, {self.rounds} round(s); mosquitto {self.mq.pid} on :{self.port}; PostgreSQL "
            f"{self.pg.server.port} (postmaster {self.pg.postmaster}, fsync on); {os.cpu_count()} CPUs; temp {tmp}")

    def new_db(self, what: str) -> tuple[str, str]:
        self.dbs += 1
        name = f"b{self.dbs}_{what}".replace("-", "_")
        return name, self.pg.create(name)

    # -- 1. throughput --------------------------------------------------------------------------------------

    CONFIGS: ClassVar[list[tuple[str, str, str, int, bool]]] = [
        # key, label, store, bridges, partitioned
        ("sqlite1", "1 bridge, SQLite FULL", "sqlite", 1, False),
        ("pg1", "1 bridge, PostgreSQL", "pg", 1, False),
        ("pg2", "2 bridges, PostgreSQL", "pg", 2, False),
        ("pg3", "3 bridges, PostgreSQL", "pg", 3, False),
        ("pg2p", "2 bridges, PG, partitioned", "pg", 2, True),
        ("pg3p", "3 bridges, PG, partitioned", "pg", 3, True),
    ]

    def specs(self, run: str, bridges: int, partitioned: bool) -> list[dict[str, Any]]:
        specs = []
        for i in range(CLIENTS):
            prefix = f"p{i % bridges}" if partitioned else "ca"
            ca = f"{run}-{i}"
            specs.append({"kind": "rr", "cid": f"{run}-c{i}", "ca": ca, "pub": prefix + "/{ca}/in",
                          "sub": f"{prefix}/{ca}/session/c{i}", "session": f"c{i}", "method": "incr"})
        return specs

    def config(self, key: str, label: str, store: str, nb: int, partitioned: bool, rnd: int) -> None:
        run = f"{key}r{rnd}-{os.urandom(2).hex()}"
        bridges: list[subprocess.Popen[Any]] = []
        dbname = None
        try:
            if store == "sqlite":
                bridges.append(self.env.bridge(self.port, str(self.tmp / f"{run}.db")))
            else:
                dbname, url = self.new_db(key)
                for i in range(nb):
                    bridges.append(self.env.bridge(self.port, url, node=f"n{i + 1}",
                                                   prefix=f"p{i}" if partitioned else "ca"))
            row = self.measure(key, label, store, nb, partitioned, rnd, run, bridges, dbname)
            if rnd == 1 and not partitioned:
                if nb > 1:
                    self.forward_pass(key, label, run, nb, row)
                self.claim_probe(key, label, nb)
        finally:
            for b in bridges:
                bench.stop_proc(b, 15.0)

    def measure(self, key: str, label: str, store: str, nb: int, partitioned: bool, rnd: int, run: str,
                bridges: list[subprocess.Popen[Any]], dbname: str | None) -> dict[str, Any]:
        pids = [b.pid for b in bridges]
        load_pids = self.workers.pids()
        samples: list[dict[str, Any]] = []

        def sample() -> dict[str, Any]:
            s: dict[str, Any] = {
                "t": time.monotonic(), "bridges": sum(bench.cpu_seconds(p) for p in pids),
                "mosquitto": bench.cpu_seconds(self.mq.pid), "postgres": tree_cpu(self.pg.postmaster),
                "load": sum(bench.cpu_seconds(p) for p in load_pids), "machine": machine_busy(), "irq": irq_seconds(),
                "self": bench.cpu_seconds(os.getpid()),
            }
            if dbname is not None:
                s["pg"] = self.pg.snapshot(dbname)
            return s

        def sampler() -> None:
            samples.append(sample())
            time.sleep(max(0.0, samples[0]["t"] + self.duration - time.monotonic()))
            samples.append(sample())
            if dbname is not None:
                samples[-1]["conns"] = self.pg.connections(dbname)

        threads: list[threading.Thread] = []

        def on_start() -> None:
            t = threading.Thread(target=sampler, daemon=True)
            t.start()
            threads.append(t)

        busy_before = self.wait_quiet()
        r = self.workers.run(self.port, self.specs(run, nb, partitioned), self.warmup, self.duration, {},
                             on_start=on_start)
        for t in threads:
            t.join(30)
        s0, s1 = samples
        wall = s1["t"] - s0["t"]
        calls = r["count"]
        cpu = {k: s1[k] - s0[k] for k in ("bridges", "mosquitto", "postgres", "load", "machine", "self", "irq")}
        cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
        row: dict[str, Any] = {
            "key": key, "label": label, "store": store, "bridges": nb, "partitioned": partitioned, "round": rnd,
            "rate": round(calls / self.duration, 1), "calls": calls, "p50": pct(r["lat"], 0.5),
            "p99": pct(r["lat"], 0.99), "errors": r["errors"], "first_error": r["first_error"], "lost": r["lost"],
            "dead": r["dead"], "busy_before": busy_before, "wall": round(wall, 3),
            "cpu_pct": {k: round(100 * v / wall, 1) for k, v in cpu.items()},
            "cpu_us_per_call": {k: round(1e6 * v / calls, 1) if calls else None for k, v in cpu.items()},
        }
        if dbname is not None:
            d = {k: s1["pg"][k] - s0["pg"][k] for k in s0["pg"]}
            row["pg"] = {
                "tx_per_s": round(d["xact_commit"] / wall, 1),
                "tx_per_call": round(d["xact_commit"] / calls, 3) if calls else None,
                "rollbacks": d["xact_rollback"],
                "ins_per_call": round(d["tup_inserted"] / calls, 3) if calls else None,
                "upd_per_call": round(d["tup_updated"] / calls, 3) if calls else None,
                "del_per_call": round(d["tup_deleted"] / calls, 3) if calls else None,
                "rows_per_call": round((d["tup_inserted"] + d["tup_updated"] + d["tup_deleted"]) / calls, 3)
                if calls else None,
                "wal_bytes_per_call": round(d["wal_lsn"] / calls) if calls else None,
                "wal_syncs_per_s": round(d["wal_sync"] / wall, 1),
                "calls_per_wal_sync": round(calls / d["wal_sync"], 2) if d["wal_sync"] else None,
                "conns": s1.get("conns", {}),
                "owners": self.pg.owners(dbname),
            }
        self.rows.append(row)
        us = row["cpu_us_per_call"]
        msg = (f"{label:30} round {rnd}: {row['rate']:7.0f}/s p50 {fmt(row['p50'])} p99 {fmt(row['p99'])} ms | "
               f"us/call bridges {us['bridges']} mosq {us['mosquitto']} pg {us['postgres']} load {us['load']} "
               f"others {us['others']}")
        if "pg" in row:
            msg += (f" | {row['pg']['tx_per_s']:.0f} tx/s, {row['pg']['rows_per_call']} rows/call, "
                    f"conns {row['pg']['conns']}, owners {row['pg']['owners']}")
        if r["errors"] or r["lost"] or r["dead"]:
            msg += f" !! errors {r['errors']} lost {r['lost']} dead {r['dead']} ({r['first_error']})"
        log(msg)
        return row

    def wait_quiet(self) -> float:
        """The machine may be shared: wait (bounded) until the CPUs are mostly idle; returns the busy % seen."""
        began = time.monotonic()
        deadline = began + min(self.args.quiet_wait, max(0.0, self.quiet_budget))
        while True:
            b0 = machine_busy()
            time.sleep(0.5)
            busy = 100 * (machine_busy() - b0) / 0.5
            if busy <= self.args.quiet_threshold or time.monotonic() >= deadline:
                self.quiet_budget -= time.monotonic() - began - 0.5
                if busy > self.args.quiet_threshold:
                    log(f"  machine still {busy:.0f}% busy (of one core) before the measurement: gave up waiting")
                return round(busy, 1)

    # -- 2. forwarding ----------------------------------------------------------------------------------------

    def forward_pass(self, key: str, label: str, run: str, nb: int, row: dict[str, Any]) -> None:
        clients = [{"cid": f"{run}-f{i}", "prefix": "ca", "session": f"c{i}", "cas": [f"{run}-{i}"], "cycle": True}
                   for i in range(CLIENTS)]
        res = run_job({"port": self.port, "clients": clients, "warmup": 0.5, "duration": self.fwd_duration,
                       "monitor": "ca/_fwd/#"})
        calls = res["calls"]
        fwd = [c[1] for c in calls if c[3]]
        direct = [c[1] for c in calls if not c[3]]
        entry = {
            "key": key, "label": label, "bridges": nb, "calls": len(calls),
            "rate_with_monitor": round(len(calls) / res["elapsed"], 1) if res["elapsed"] else None,
            "forwarded": len(fwd), "fraction": round(len(fwd) / len(calls), 4) if calls else None,
            "expected": round((nb - 1) / nb, 4),
            "p50_direct": pct(direct, 0.5), "p99_direct": pct(direct, 0.99),
            "p50_forwarded": pct(fwd, 0.5), "p99_forwarded": pct(fwd, 0.99),
            "errors": sum(1 for c in calls if c[2]), "lost": res["lost"],
        }
        self.forwarding.append(entry)
        log(f"{label}: {entry['fraction']:.1%} of {len(calls)} requests forwarded (expected {entry['expected']:.1%});"
            f" p50 direct {fmt(entry['p50_direct'])} ms vs forwarded {fmt(entry['p50_forwarded'])} ms")

    # -- 3a. claim latency --------------------------------------------------------------------------------

    def claim_probe(self, key: str, label: str, nb: int) -> None:
        """One client, idle cluster: 8 sequential calls to each of K never-seen CAs. Call 1 creates and claims the
        CA; with N bridges calls 2..N reach bridges that look it up once and forward; calls 4-8 are warm (split
        into direct and forwarded ones by a monitor on the forwarding topics)."""
        caller = Caller(self.port, monitor=nb > 1)
        lat: dict[int, list[float]] = {}
        warm: dict[bool, list[float]] = {False: [], True: []}
        errors = 0
        tag = os.urandom(2).hex()
        try:
            for k in range(self.claim_probes):
                ca = f"new{tag}-{key}-{k}"
                for i in range(8):
                    t0, t1, msg, _, rid = caller.call_rid(ca, timeout=30)
                    if msg is None or "err" in msg:
                        errors += 1
                        continue
                    ms = round((t1 - t0) * 1000, 3)
                    lat.setdefault(i, []).append(ms)
                    time.sleep(0.02)  # forwarded copies reach the monitor about when the owner gets them
                    if i >= 3:
                        with caller.cond:
                            warm[rid in caller.forwarded].append(ms)
        finally:
            caller.close()
        first, second = lat.get(0, []), lat.get(1, []) + lat.get(2, [])
        allwarm = warm[False] + warm[True]
        entry = {"key": key, "label": label, "bridges": nb, "cas": self.claim_probes, "errors": errors,
                 "first_p50": pct(first, 0.5), "first_p90": pct(first, 0.9),
                 "second_third_p50": pct(second, 0.5), "second_third_p90": pct(second, 0.9),
                 "warm_p50": pct(allwarm, 0.5), "warm_p90": pct(allwarm, 0.9),
                 "warm_direct_p50": pct(warm[False], 0.5), "warm_direct_n": len(warm[False]),
                 "warm_forwarded_p50": pct(warm[True], 0.5), "warm_forwarded_n": len(warm[True]),
                 "by_call_p50": {str(i + 1): pct(v, 0.5) for i, v in sorted(lat.items())}}
        self.claims.append(entry)
        log(f"{label}: first call to a new CA p50 {fmt(entry['first_p50'])} ms, calls 2-3 p50 "
            f"{fmt(entry['second_third_p50'])} ms, warm (calls 4-8) p50 {fmt(entry['warm_p50'])} ms (direct "
            f"{fmt(entry['warm_direct_p50'])}, forwarded {fmt(entry['warm_forwarded_p50'])})")

    # -- 3b. storage per CA -----------------------------------------------------------------------------------

    def walk(self, prefix: str, names: list[str], calls_each: int = 1) -> dict[str, Any]:
        share = [names[i::CLIENTS] for i in range(CLIENTS)]
        clients = [{"cid": f"walk-{os.urandom(3).hex()}-{i}", "prefix": prefix, "session": f"w{i}", "cas": cas,
                    "cycle": True, "calls": len(cas) * calls_each} for i, cas in enumerate(share)]
        t = time.monotonic()
        res = run_job({"port": self.port, "clients": clients, "warmup": 0.0, "duration": 900.0}, timeout=1000)
        res["wall"] = time.monotonic() - t
        return res

    def storage_pass(self) -> None:
        specs = [("new", self.new_cas, 1)]
        if not self.quick:
            specs.append(("dedup-full", 500, 70))
        for what, count, each in specs:
            for store in ("pg", "sqlite"):
                tag = f"{what}-{os.urandom(2).hex()}"
                names = [f"s{tag}-{i}" for i in range(count)]
                if store == "pg":
                    dbname, url = self.new_db("storage")
                    b = self.env.bridge(self.port, url, node="s1")
                    empty = self.pg.sizes(dbname)
                else:
                    dbfile = self.tmp / f"storage-{tag}.db"
                    b = self.env.bridge(self.port, str(dbfile))
                try:
                    res = self.walk("ca", names, each)
                finally:
                    bench.stop_proc(b, 30.0)
                calls = res["calls"]
                lat = [c[1] for c in calls]
                # with one call each, every call is a CA's first (claim or create + on_init + commit)
                entry: dict[str, Any] = {
                    "what": what, "store": store, "cas": count, "calls_each": each, "calls": len(calls),
                    "errors": sum(1 for c in calls if c[2]), "lost": res["lost"],
                    "rate": round(len(calls) / res["elapsed"], 1) if res["elapsed"] else None,
                    "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                }
                if store == "pg":
                    full = self.pg.sizes(dbname)
                    self.pg.q("VACUUM FULL", db=dbname)
                    packed = self.pg.sizes(dbname)
                    tables = {t: {"rows": full[t]["rows"], "bytes": full[t]["bytes"],
                                  "bytes_vacuum_full": packed[t]["bytes"], "empty": empty[t]["bytes"]}
                              for t in TABLES}
                    data = [t for t in TABLES if t != "node"]
                    entry["tables"] = tables
                    entry["bytes_per_ca"] = round(sum(full[t]["bytes"] - empty[t]["bytes"] for t in data) / count)
                    entry["bytes_per_ca_vacuum_full"] = round(
                        sum(packed[t]["bytes"] - empty[t]["bytes"] for t in data) / count)
                    entry["dedup_rows_per_ca"] = round(full["dedup"]["rows"] / count, 2)
                    entry["row_bytes"] = {t: self.pg.q(
                        f"SELECT coalesce(avg(pg_column_size(x.*)), 0) FROM {t} x", db=dbname)[0][0] for t in data}
                    entry["row_bytes"] = {t: round(float(v), 1) for t, v in entry["row_bytes"].items()}
                else:
                    con = sqlite3.connect(dbfile)
                    try:
                        pages = con.execute("PRAGMA page_count").fetchone()[0]
                        psize = con.execute("PRAGMA page_size").fetchone()[0]
                        con.execute("VACUUM")
                        pages_v = con.execute("PRAGMA page_count").fetchone()[0]
                        dedup_rows = con.execute("SELECT count(*) FROM dedup").fetchone()[0]
                    finally:
                        con.close()
                    entry["file_bytes"] = pages * psize
                    entry["bytes_per_ca"] = round(pages * psize / count)
                    entry["bytes_per_ca_vacuum_full"] = round(pages_v * psize / count)
                    entry["dedup_rows_per_ca"] = round(dedup_rows / count, 2)
                self.storage.append(entry)
                log(f"storage {what} {store}: {count} CAs x {each} call(s): {entry['rate']}/s (p50 "
                    f"{fmt(entry['p50'])} p99 {fmt(entry['p99'])} ms), {entry['bytes_per_ca']} bytes/CA as written, "
                    f"{entry['bytes_per_ca_vacuum_full']} compacted, dedup rows/CA {entry['dedup_rows_per_ca']}")

    # -- 3c. takeover -------------------------------------------------------------------------------------------

    def takeover_pass(self) -> None:
        for mode in ("ttl", "restart", "sigterm"):
            self.takeover_one(mode)

    def takeover_one(self, mode: str) -> None:
        dbname, url = self.new_db(f"takeover_{mode}")
        nodes = {f"n{i + 1}": self.env.bridge(self.port, url, node=f"n{i + 1}") for i in range(2)}
        caller = Caller(self.port)
        stop = threading.Event()
        log_: list[tuple[float, float, dict[str, Any] | None, int]] = []
        try:
            tag = os.urandom(2).hex()
            cas = [f"tk{tag}-{i}" for i in range(20)]
            for ca in cas:
                caller.call(ca, timeout=30)
            owners = {ca: self.pg.owner_of(dbname, ca) for ca in cas}
            ca = cas[0]
            victim = owners[ca]
            if victim not in nodes:
                raise RuntimeError(f"takeover: {ca} has no live owner ({victim})")
            owned = sum(1 for o in owners.values() if o == victim)

            def client() -> None:
                while not stop.is_set():
                    log_.append(caller.call(ca, timeout=60, retry=0.1, stop=stop))

            th = threading.Thread(target=client, daemon=True)
            th.start()
            time.sleep(1.5)
            t_kill = time.monotonic()
            restarted_after = None
            kill(nodes[victim], signal.SIGTERM if mode == "sigterm" else signal.SIGKILL)
            t_dead = time.monotonic()  # a reply later than t_dead + 20 ms came from another bridge
            if mode == "restart":
                nodes[victim] = self.env.bridge(self.port, url, node=victim)
                restarted_after = time.monotonic() - t_kill
            deadline = time.monotonic() + 30
            recovered = None
            while time.monotonic() < deadline:
                after = [e for e in list(log_) if e[1] > t_dead + 0.02 and e[2] is not None and "err" not in e[2]]
                if after:
                    recovered = after[0]
                    break
                time.sleep(0.05)
            time.sleep(1.0)
            stop.set()
            th.join(70)
            oks = [e for e in log_ if e[2] is not None and "err" not in e[2]]
            before = [e for e in oks if e[1] <= t_kill]
            errs = [e[2]["err"] for e in log_ if e[2] is not None and "err" in e[2]]
            if recovered is not None:
                gap = recovered[1] - t_kill
                span = [e[1] for e in oks if t_kill - 1.0 <= e[1] <= recovered[1]]
                longest = max((b - a for a, b in itertools.pairwise(span)), default=None)
                n_before = before[-1][2]["ok"] if before else None
                n_after = recovered[2]["ok"]
            else:
                gap = longest = n_before = n_after = None
            entry = {
                "mode": mode, "ttl": 5.0, "victim": victim, "victim_owned": owned, "of_cas": len(cas),
                "recovered_s": round(gap, 3) if gap is not None else None,
                "longest_gap_s": round(longest, 3) if longest is not None else None,
                "stop_took_s": round(t_dead - t_kill, 3),
                "attempts_of_first_ok": recovered[3] if recovered is not None else None,
                "restart_listening_s": round(restarted_after, 3) if restarted_after is not None else None,
                "value_before": n_before, "value_after": n_after,
                # every successful call's counter is the previous one + 1: nothing lost or run twice
                "exactly_once": all(b[2]["ok"] == a[2]["ok"] + 1 for a, b in itertools.pairwise(oks)),
                "calls_ok": len(oks),
                "error_replies": len(errs), "first_error": errs[0] if errs else None,
                "owners_after": self.pg.owners(dbname),
            }
            self.takeover.append(entry)
            log(f"takeover ({mode}): {victim} (owner of {owned}/{len(cas)} CAs) stopped; calls to {ca} succeed "
                f"again after {fmt(entry['recovered_s'])} s (longest gap {fmt(entry['longest_gap_s'])} s)"
                + (f", restarted bridge listening after {restarted_after:.2f} s" if restarted_after else "")
                + f"; value {n_before} -> {n_after}; {len(errs)} error replies ({errs[0] if errs else ''})")
        finally:
            stop.set()
            caller.close()
            for p in nodes.values():
                bench.stop_proc(p, 15.0)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.workers.close()
        with contextlib.suppress(Exception):
            bench.stop_proc(self.mq)
        with contextlib.suppress(Exception):
            self.pg.close()


# ======================================================================================================
# Report
# ======================================================================================================


def mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def server_cpu(r: dict[str, Any]) -> tuple[float, float, float]:
    """(server us/call, other us/call, CPU-bound ceiling in calls/s on 2 cores) for one throughput row."""
    us = r["cpu_us_per_call"]
    server = (us["bridges"] or 0) + (us["mosquitto"] or 0) + (us["postgres"] or 0)
    other = (us["others"] or 0) + (us.get("self") or 0)
    limits = [2e6 / server if server else 0.0]
    if us["bridges"]:
        limits.append(1e6 * r["bridges"] / us["bridges"])
    if us["mosquitto"]:
        limits.append(1e6 / us["mosquitto"])
    return server, other, min(limits)


def report(b: Any, meta: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    w(f"ca-bridge cluster benchmark ({'quick' if b.quick else 'full'}), {meta['time']}: mosquitto, PostgreSQL "
      f"{meta['postgres']} (fsync on, synchronous_commit on, shared_buffers 64MB), {meta['cpus']} CPUs shared by "
      f"everything; {CLIENTS} closed-loop clients each calling incr on its own CA; warm-up {b.warmup}s, "
      f"measured {b.duration}s, {b.rounds} round(s); 8 KiB write + fdatasync on this disk: p50 "
      f"{meta['fdatasync']['p50_ms']} ms, p90 {meta['fdatasync']['p90_ms']} ms"
      + (f"; bridge code at {meta['git_head']}{' + uncommitted changes' if meta.get('bridge_dirty') else ''}"
         if meta.get("git_head") else ""))
    w("")
    w("1. throughput (rate = calls/s; x sqlite = rate / the SQLite bridge's in the same round; CPU = us of CPU per "
      "call, by process type; server = bridges + mosquitto + PostgreSQL; ceiling = the calls/s that server CPU per "
      "call would allow on 2 cores given to the servers alone, see below)")
    w(f"{'configuration':30} {'rd':>2} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x sqlite':>8} | "
      f"{'bridges':>7} {'mosq':>5} {'pg':>5} {'server':>6} {'load':>5} {'irq':>5} {'other':>5} {'ceiling':>7} | "
      f"{'pg tx/s':>7} {'tx/call':>7} {'rows/call':>9} {'WAL B/call':>10} {'calls/fsync':>11} | conns per bridge")
    for r in b.rows:
        base = next((x for x in b.rows if x["key"] == "sqlite1" and x["round"] == r["round"]), None)
        ratio = fmt(r["rate"] / base["rate"]) if base and base["rate"] else ""
        us = r["cpu_us_per_call"]
        server, other, ceiling = server_cpu(r)
        pg = r.get("pg")
        pgcols = f"{'':>7} {'':>7} {'':>9} {'':>10} {'':>11} |"
        if pg:
            pgcols = (f"{pg['tx_per_s']:>7.0f} {pg['tx_per_call']:>7.3f} {pg['rows_per_call']:>9.2f} "
                      f"{pg['wal_bytes_per_call']:>10} {fmt(pg['calls_per_wal_sync']):>11} | "
                      + " ".join(str(v) for v in pg["conns"].values()))
        w(f"{r['label']:30} {r['round']:>2} {r['rate']:>8.0f} {fmt(r['p50']):>7} {fmt(r['p99']):>7} {ratio:>8} | "
          f"{us['bridges']:>7.0f} {us['mosquitto']:>5.0f} {us['postgres']:>5.0f} {server:>6.0f} {us['load']:>5.0f} "
          f"{fmt(us.get('irq'), 0):>5} {other:>5.0f} {ceiling:>7.0f} | {pgcols}")
        if r["errors"] or r["lost"] or r["dead"]:
            w(f"   !! errors {r['errors']} lost {r['lost']} dead {r['dead']}: {r['first_error']}")
    if b.rounds > 1:
        w("mean over rounds:")
        for key, label, *_ in ClusterBench.CONFIGS:
            rs = [r for r in b.rows if r["key"] == key]
            if not rs:
                continue
            cpu = {k: mean([r["cpu_us_per_call"][k] for r in rs]) for k in ("bridges", "mosquitto", "postgres",
                                                                            "load")}
            server = mean([server_cpu(r)[0] for r in rs])
            ceiling = mean([server_cpu(r)[2] for r in rs])
            ratios = [r["rate"] / base["rate"] for r in rs for base in b.rows
                      if base["key"] == "sqlite1" and base["round"] == r["round"] and base["rate"]]
            w(f"   {label:30} {mean([r['rate'] for r in rs]):5.0f}/s (x sqlite {fmt(mean(ratios))})  p50 "
              f"{fmt(mean([r['p50'] for r in rs]))}  p99 {fmt(mean([r['p99'] for r in rs]))} ms  CPU us/call: "
              + " ".join(f"{k} {v:.0f}" for k, v in cpu.items() if v is not None)
              + f"  server {server:.0f}  ceiling {ceiling:.0f}/s")
    if b.rounds > 1:
        w("quietest round of each configuration (least CPU used by others in the window):")
        for key, label, *_ in ClusterBench.CONFIGS:
            rs = [r for r in b.rows if r["key"] == key]
            if rs:
                q = min(rs, key=lambda r: r["cpu_pct"]["others"])
                w(f"   {label:30} round {q['round']}: {q['rate']:5.0f}/s p50 {fmt(q['p50'])} p99 {fmt(q['p99'])} ms, "
                  f"server CPU {server_cpu(q)[0]:.0f} us/call; others used {q['cpu_pct']['others']:.0f}% of a core")
    w("CPU columns: bridges = all bridge processes; pg = the postmaster and every child (backends, WAL writer, "
      "checkpointer, autovacuum); load = the 4 load-generator processes; irq = the machine's interrupt time (the "
      "loopback TCP of everyone, ours mostly); other = the rest of the machine (this script's sampling, other "
      "tenants), all per call measured. The % of the 2 cores each used is in the JSON "
      "(cpu_pct). ceiling = min(2 cores / server CPU per call, N bridges x 1 core / bridge CPU per call, 1 core / "
      "mosquitto CPU per call): a projection from the measured CPU per call for load generated elsewhere, not a "
      "measurement (a bridge and mosquitto are single-threaded; batching changes with load).")
    busy = [r["busy_before"] for r in b.rows]
    if busy:
        w(f"machine busy just before the windows: {min(busy):.0f}-{max(busy):.0f}% of one core; CPU used in the "
          "windows by everything (% of one core, 200 = both cores): "
          + ", ".join(f"{r['key']} {r['cpu_pct']['machine']:.0f}" for r in b.rows))
        own = [f"{r['key']}: {r['pg']['owners']}" for r in b.rows if r.get("pg") and r["round"] == 1]
        w("CAs owned per node after the window (round 1): " + "; ".join(own))
    w("")
    w("2. forwarding (separate pass after the window, same 16 clients and CAs, 1 load process + a monitor on "
      "<prefix>/_fwd/#)")
    for f in b.forwarding:
        w(f"   {f['label']:30} forwarded {f['forwarded']}/{f['calls']} = {f['fraction']:.1%} (expected "
          f"(N-1)/N = {f['expected']:.1%}); p50/p99 direct {fmt(f['p50_direct'])}/{fmt(f['p99_direct'])} ms, "
          f"forwarded {fmt(f['p50_forwarded'])}/{fmt(f['p99_forwarded'])} ms; errors {f['errors']} lost {f['lost']}")
    for n in (2, 3):
        shared = [r for r in b.rows if r["key"] == f"pg{n}"]
        part = [r for r in b.rows if r["key"] == f"pg{n}p"]
        fw = next((f for f in b.forwarding if f["bridges"] == n), None)
        if shared and part:
            rs, rp = mean([r["rate"] for r in shared]), mean([r["rate"] for r in part])
            parts = []
            for k in ("bridges", "mosquitto", "postgres", "load"):
                d = (mean([r["cpu_us_per_call"][k] for r in shared]) or 0) - (
                    mean([r["cpu_us_per_call"][k] for r in part]) or 0)
                parts.append(f"{k} {d:+.0f}")
            tot = sum((mean([r["cpu_us_per_call"][k] for r in shared]) or 0) -
                      (mean([r["cpu_us_per_call"][k] for r in part]) or 0)
                      for k in ("bridges", "mosquitto", "postgres", "load"))
            frac = fw["fraction"] if fw and fw["fraction"] else (n - 1) / n
            w(f"   cost at N={n}: shared subscription {rs:.0f}/s vs partitioned {rp:.0f}/s ({rs / rp - 1:+.0%}); "
              f"CPU us/call {' '.join(parts)} (total {tot:+.0f}); per forwarded request ~{tot / frac:.0f} us")
    w("")
    w("3. capacity")
    w("   time to claim a new CA (one client, idle cluster, p50 [p90] ms): first call | calls 2-3 | calls 4-8 "
      "(of which direct / forwarded, p50)")
    for c in b.claims:
        w(f"   {c['label']:30} {fmt(c['first_p50']):>6} [{fmt(c['first_p90'])}] | "
          f"{fmt(c['second_third_p50']):>6} [{fmt(c['second_third_p90'])}] | {fmt(c['warm_p50']):>6} "
          f"[{fmt(c['warm_p90'])}] ({fmt(c['warm_direct_p50'])} x{c['warm_direct_n']} / "
          f"{fmt(c['warm_forwarded_p50'])} x{c['warm_forwarded_n']})   ({c['cas']} new CAs, errors {c['errors']})")
    w("   (with N bridges a client's successive calls reach the bridges in turn: call 1 is claimed by the bridge it "
      "reaches, calls 2..N reach bridges that look the CA up once (a claim query) and forward; later calls are "
      "forwarded from the route cache)")
    w("   storage: 16 clients create CAs by calling them (one session each); bytes/CA from the table sizes minus "
      "the empty tables' (PostgreSQL: pg_total_relation_size of ca, session, note, dedup with indexes and TOAST)")
    for s in b.storage:
        extra = ""
        if s["store"] == "pg":
            extra = (" rows: " + ", ".join(f"{t} {v['rows']}" for t, v in s["tables"].items() if t != "node")
                     + "; avg row bytes " + ", ".join(f"{t} {v}" for t, v in s["row_bytes"].items()))
        w(f"   {s['what']:10} {s['store']:6} {s['cas']:>6} CAs x {s['calls_each']:>2} calls: {fmt(s['rate'], 0):>6}/s "
          f"(p50 {fmt(s['p50'])} p99 {fmt(s['p99'])} ms) {s['bytes_per_ca']:>6} B/CA as written, "
          f"{s['bytes_per_ca_vacuum_full']:>6} compacted; dedup rows/CA {s['dedup_rows_per_ca']}{extra}")
    conns = [(r["key"], r["pg"]["conns"]) for r in b.rows if r.get("pg")]
    if conns:
        allc = [v for _, c in conns for v in c.values()]
        w(f"   PostgreSQL connections per bridge under load: {min(allc)}-{max(allc)} (the pool, --db-pool default 4)")
    w("   takeover (2 bridges; one client calls a CA owned by the stopped bridge, the same request retried every "
      "100 ms; recovered = kill until the first successful reply)")
    for t in b.takeover:
        what = {"ttl": "SIGKILL, --node-ttl 5 (default)", "restart": "SIGKILL + restart with same --node",
                "sigterm": "SIGTERM (clean leave)"}[t["mode"]]
        w(f"   {what:36} recovered after {fmt(t['recovered_s'])} s (longest gap between replies "
          f"{fmt(t['longest_gap_s'])} s; {t['attempts_of_first_ok']} attempts)"
          + (f"; restarted bridge 'listening' after {t['restart_listening_s']:.2f} s" if t["restart_listening_s"]
             else "")
          + f"; counter {t['value_before']} -> {t['value_after']} (exactly-once: {t['exactly_once']}); "
          f"error replies {t['error_replies']}" + (f" ({t['first_error']})" if t["first_error"] else ""))
    if meta.get("bridge_log"):
        w("")
        w("bridge warnings/errors logged during the run (count: message):")
        for k, v in meta["bridge_log"].items():
            w(f"   {v:5}: {k}")
    return "\n".join(out)


# ======================================================================================================


def main() -> int:
    global CLIENTS
    if len(sys.argv) > 1 and sys.argv[1] == "_job":
        job_main()
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a few seconds per configuration, one round (a smoke run)")
    p.add_argument("--out", default=str(HERE / "results" / "cluster"), help="writes OUT.txt and OUT.json")
    p.add_argument("--quiet-threshold", type=float, default=25.0, metavar="PCT",
                   help="before each window wait until the machine's busy CPU (%% of one core) is below this")
    p.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                   help="longest wait for a quiet machine per window (default 30, quick 5)")
    p.add_argument("--clients", type=int, default=CLIENTS, help="closed-loop clients of the throughput runs "
                   "(default %(default)s)")
    p.add_argument("--rounds", type=int, default=0, help="alternating rounds of the throughput matrix "
                   "(default 2, quick 1)")
    p.add_argument("--report", metavar="JSON", help="print the report of an earlier run's OUT.json and exit")
    p.add_argument("--only", default="", help="comma-separated subset of: throughput,storage,takeover")
    args = p.parse_args()
    CLIENTS = args.clients
    if args.report:
        data = json.loads(Path(args.report).read_text())
        m = data["meta"]
        CLIENTS = m.get("clients", CLIENTS)
        view = argparse.Namespace(quick=m["quick"], warmup=m["warmup_s"], duration=m["duration_s"], rounds=m["rounds"],
                                  **{k: data[k] for k in ("rows", "forwarding", "claims", "storage", "takeover")})
        print(report(view, m))
        return 0
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if args.quick else 30.0
    if not Path(bench.MOSQUITTO).exists():
        print(f"mosquitto not found at {bench.MOSQUITTO}", file=sys.stderr)
        return 2

    def on_signal(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="ca-cluster-bench-"))
    cb: ClusterBench | None = None
    parts = set(filter(None, args.only.split(","))) or {"throughput", "storage", "takeover"}
    try:
        cb = ClusterBench(args, tmp)
        if "throughput" in parts:
            for rnd in range(1, cb.rounds + 1):
                for key, label, store, nb, part in ClusterBench.CONFIGS:
                    cb.config(key, label, store, nb, part, rnd)
        if "storage" in parts:
            cb.storage_pass()
        if "takeover" in parts:
            cb.takeover_pass()
        meta = {
            "quick": args.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
            "warmup_s": cb.warmup, "duration_s": cb.duration, "rounds": cb.rounds, "clients": CLIENTS,
            "load_procs": bench.LOAD_PROCS, "python": sys.version.split()[0],
            "postgres": cb.pg.q("SHOW server_version")[0][0],
            "mosquitto": subprocess.run([bench.MOSQUITTO, "-h"], capture_output=True, text=True).stdout.split("\n")[0],
            "bridge_log": cb.env.log_summary(), "fdatasync": fsync_latency(tmp), **git_state(),
        }
        text = report(cb, meta)
        print("\n" + text, flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(
            {"meta": meta, "rows": cb.rows, "forwarding": cb.forwarding, "claims": cb.claims, "storage": cb.storage,
             "takeover": cb.takeover}, indent=1, default=str) + "\n")
        out.with_suffix(".txt").write_text(text + "\n")
        log(f"wrote {out.with_suffix('.txt')} and {out.with_suffix('.json')}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr, flush=True)
        return 130
    finally:
        if cb is not None:
            cb.close()
        bench.stop_all()
        for fn in CLEANUP:
            with contextlib.suppress(Exception):
                fn()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
