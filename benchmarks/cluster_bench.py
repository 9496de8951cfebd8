#!/usr/bin/env python3
"""Benchmark of ca-bridge clusters: 1 bridge on SQLite vs 1, 2 and 3 bridges sharing one PostgreSQL, on mosquitto.

    .venv/bin/python benchmarks/cluster_bench.py [--quick] [--rounds N] [--clients N] [--out benchmarks/results/cluster]
    .venv/bin/python benchmarks/cluster_bench.py --only throughput|storage|takeover[,...]   # a part only
    .venv/bin/python benchmarks/cluster_bench.py --report benchmarks/results/cluster.json   # re-print a run's table

To benchmark a given commit while the work tree changes, run it from an export (``git archive HEAD | tar -x -C
DIR``) with ``BENCH_GIT_HEAD=<commit>`` set, so the report names the commit.

One run, on one mosquitto and one throwaway PostgreSQL (fsync on): 1. throughput of 16 closed-loop clients against
1 bridge on SQLite, 1/2/3 bridges on PostgreSQL and 2/3 partitioned ones (nothing forwarded), with CPU, WAL and
transactions per call; 2. the forwarded fraction and its latency; 3. capacity: CA creation rate and bytes per CA,
claim latency, takeover time after a bridge is killed. benchmarks/README.md says what each part measures and how.
Nothing asserts on timings; every process started is stopped at the end (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE), str(HERE.parent)) if p not in sys.path]

from bench import APP, MOSQUITTO_CONF  # noqa: E402
from loadgen import PROCS, Quiet, Workers, fmt, log, options, pct, session  # noqa: E402

from tests.pgserver import PostgresServer  # noqa: E402
from tests.procs import (  # noqa: E402
    ROOT, BridgeProcess, Mosquitto, cpu_seconds, machine_cpu, tree_cpu)

TABLES = ("ca", "session", "note", "dedup", "node")
PARTS = ("rows", "forwarding", "claims", "storage", "takeover")  # the results, in the JSON
CONFIGS = [  # key, label, store, bridges, partitioned
    ("sqlite1", "1 bridge, SQLite FULL", "sqlite", 1, False), ("pg1", "1 bridge, PostgreSQL", "pg", 1, False),
    ("pg2", "2 bridges, PostgreSQL", "pg", 2, False), ("pg3", "3 bridges, PostgreSQL", "pg", 3, False),
    ("pg2p", "2 bridges, PG, partitioned", "pg", 2, True), ("pg3p", "3 bridges, PG, partitioned", "pg", 3, True)]


class Pg:
    """The PostgreSQL server, plus a statistics connection."""

    def __init__(self) -> None:
        import psycopg

        self.psycopg = psycopg
        self.server = PostgresServer(fsync=True, max_connections=200)
        atexit.register(self.server.cleanup)  # not our child: gone with the script whatever happens
        self.server.start()
        self.base = self.server.url.rsplit("/", 1)[0]
        self.conn = psycopg.connect(self.server.url, autocommit=True, application_name="cluster-bench")
        self.postmaster = int((self.server.data / "postmaster.pid").read_text().split()[0])
        self.dbs = 0

    def create(self, what: str) -> tuple[str, str]:
        self.dbs += 1
        name = f"b{self.dbs}_{what}".replace("-", "_")
        self.conn.execute(f"CREATE DATABASE {name}")
        return name, f"{self.base}/{name}"

    def q(self, sql: str, args: tuple[Any, ...] = (), db: str | None = None) -> list[tuple[Any, ...]]:
        if db is None:
            return self.conn.execute(sql, args).fetchall()
        with self.psycopg.connect(f"{self.base}/{db}", autocommit=True, application_name="cluster-bench") as c:
            cur = c.execute(sql, args)
            return cur.fetchall() if cur.description is not None else []

    def snapshot(self, db: str) -> dict[str, float]:
        keys = ("xact_commit", "xact_rollback", "tup_inserted", "tup_updated", "tup_deleted", "wal_sync", "wal_lsn")
        row = self.q(f"SELECT {', '.join(keys[:-2])}, w.wal_sync, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') "
                     "FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = %s", (db,))[0]
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


def sqlite_bytes(path: Path, count: int) -> dict[str, Any]:
    con = sqlite3.connect(path)
    try:
        def size() -> int:
            return int(con.execute("PRAGMA page_count").fetchone()[0] * con.execute("PRAGMA page_size").fetchone()[0])

        written = size()
        con.execute("VACUUM")
        return {"file_bytes": written, "bytes_per_ca": round(written / count), "bytes_per_ca_vacuum_full": round(
            size() / count), "dedup_rows_per_ca": round(con.execute("SELECT count(*) FROM dedup").fetchone()[0] / count,
                                                        2)}
    finally:
        con.close()


def fsync_latency(directory: Path, count: int = 200) -> dict[str, float | None]:
    """p50 and p90 ms of an 8 KiB overwrite + fdatasync on the disk PostgreSQL and SQLite write to."""
    path, times = directory / "fsync-probe", []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for _ in range(count):
            t = time.perf_counter()
            os.pwrite(fd, os.urandom(8192), 0)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"p50_ms": pct(times, 0.5), "p90_ms": pct(times, 0.9)}


def git_state() -> dict[str, Any]:
    """The commit the bridges ran from, and whether bridge/ had uncommitted changes."""
    if os.environ.get("BENCH_GIT_HEAD"):  # run from an exported snapshot of that commit (git archive)
        return {"git_head": os.environ["BENCH_GIT_HEAD"], "bridge_dirty": False}

    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()

    with contextlib.suppress(Exception):
        return {"git_head": git("rev-parse", "--short", "HEAD"), "bridge_dirty": bool(git("status", "--porcelain",
                                                                                           "--", "bridge"))}
    return {}


class ClusterBench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        quick = self.quick = args.quick
        self.clients, self.tmp = args.clients, tmp
        self.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 3.0)
        self.duration = args.duration or (3.0 if quick else 12.0)
        self.rounds = args.rounds or (1 if quick else 2)
        self.fwd_duration = 2.0 if quick else 5.0
        self.new_cas = args.new_cas or (2000 if quick else 10000)
        self.claim_probes = 8 if quick else 25
        self.wait_quiet = Quiet(args.quiet_threshold, args.quiet_wait, 30.0 if quick else 300.0, log)
        self.workers = Workers(PROCS)
        self.pg = Pg()
        self.mq = Mosquitto(tmp, MOSQUITTO_CONF, log=True).start()
        self.port = self.mq.port
        self.rows: list[dict[str, Any]] = []
        self.forwarding: list[dict[str, Any]] = []
        self.claims: list[dict[str, Any]] = []
        self.storage: list[dict[str, Any]] = []
        self.takeover: list[dict[str, Any]] = []
        self.logs: list[Path] = []
        log(f"cluster benchmark ({'quick' if quick else 'full'}): {self.clients} clients, warm-up {self.warmup}s, "
            f"measure {self.duration}s, {self.rounds} round(s); mosquitto on :{self.port}; PostgreSQL "
            f"{self.pg.server.port} (fsync on); {os.cpu_count()} CPUs; temp {tmp}")

    def bridge(self, store: str, node: str | None = None, prefix: str = "ca") -> BridgeProcess:
        n = len(self.logs) + 1
        extra = ["--pulse", "0", "--max-sessions", "1000", "--prefix", prefix, "--client-id", f"cb-{os.getpid()}-{n}"]
        b = BridgeProcess(APP, self.tmp / f"bridge-{n}-{node or 'sqlite'}.db", broker_port=self.port, store=store,
                          log_level="WARNING", extra=extra + (["--node", node] if node else []))
        self.logs.append(b.log)
        return b.start(timeout=120)

    def log_summary(self) -> dict[str, int]:
        """Warnings and errors the bridges logged, grouped by message head."""
        counts: dict[str, int] = {}
        for f in self.logs:
            for line in f.read_text(errors="replace").splitlines() if f.exists() else []:
                if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                    head = line.split(" ", 3)[-1][:140]
                    counts[head] = counts.get(head, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:30])

    def specs(self, run: str, bridges: int, partitioned: bool, record: bool = False) -> list[dict[str, Any]]:
        out = []
        for i in range(self.clients):
            prefix, ca = f"p{i % bridges}" if partitioned else "ca", f"{run}-{i}"
            out.append({"kind": "rr", "cid": f"{run}-c{i}", "ca": ca, "pub": prefix + "/{ca}/in",
                        "sub": f"{prefix}/{ca}/session/c{i}", "session": f"c{i}", "record": record})
        return out

    # -- 1. throughput ----------------------------------------------------------------------------------------

    def config(self, key: str, label: str, store: str, nb: int, partitioned: bool, rnd: int) -> None:
        run = f"{key}r{rnd}-{os.urandom(2).hex()}"
        bridges: list[BridgeProcess] = []
        dbname = None
        try:
            if store == "sqlite":
                bridges.append(self.bridge(str(self.tmp / f"{run}.db")))
            else:
                dbname, url = self.pg.create(key)
                bridges += [self.bridge(url, f"n{i + 1}", f"p{i}" if partitioned else "ca") for i in range(nb)]
            self.measure(key, label, store, nb, partitioned, rnd, run, bridges, dbname)
            if rnd == 1 and not partitioned:
                if nb > 1:
                    self.forward_pass(key, label, run, nb)
                self.claim_probe(key, label, nb)
        finally:
            for b in bridges:
                b.stop(15)

    def measure(self, key: str, label: str, store: str, nb: int, partitioned: bool, rnd: int, run: str,
                bridges: list[BridgeProcess], dbname: str | None) -> None:
        pids = [b.pid for b in bridges]
        assert self.mq.proc is not None
        mq = self.mq.proc.pid
        probes = {"bridges": lambda: sum(cpu_seconds(p) for p in pids), "mosquitto": lambda: cpu_seconds(mq),
                  "postgres": lambda: tree_cpu(self.pg.postmaster), "irq": lambda: machine_cpu()[1],
                  "self": lambda: cpu_seconds(os.getpid())}
        pg: list[dict[str, Any]] = []
        snap = (lambda: pg.append(self.pg.snapshot(dbname))) if dbname else (lambda: None)
        busy_before = self.wait_quiet()
        r = self.workers.run(self.port, self.specs(run, nb, partitioned), self.warmup, self.duration, probes,
                             on_start=snap, on_end=snap)
        calls, cpu, wall = r["count"], r["cpu_s"], self.duration
        row: dict[str, Any] = {
            "key": key, "label": label, "store": store, "bridges": nb, "partitioned": partitioned, "round": rnd,
            "rate": round(calls / wall, 1), "calls": calls, "p50": pct(r["lat"], 0.5), "p99": pct(r["lat"], 0.99),
            **{k: r[k] for k in ("errors", "first_error", "lost", "dead")}, "busy_before": busy_before,
            "cpu_pct": r["cpu_pct"], "cpu_us_per_call": {k: round(1e6 * v / calls, 1) if calls else None
                                                         for k, v in cpu.items()}}
        if dbname is not None:
            d = {k: pg[1][k] - pg[0][k] for k in pg[0]}

            def per(v: float, digits: int = 3) -> float | None:
                return round(v / calls, digits) if calls else None

            row["pg"] = {"tx_per_s": round(d["xact_commit"] / wall, 1), "tx_per_call": per(d["xact_commit"]),
                         "rollbacks": d["xact_rollback"], "rows_per_call": per(
                             d["tup_inserted"] + d["tup_updated"] + d["tup_deleted"]),
                         "wal_bytes_per_call": per(d["wal_lsn"], 0), "wal_syncs_per_s": round(d["wal_sync"] / wall, 1),
                         "calls_per_wal_sync": round(calls / d["wal_sync"], 2) if d["wal_sync"] else None,
                         "conns": self.pg.connections(dbname), "owners": self.pg.owners(dbname)}
        self.rows.append(row)
        us = row["cpu_us_per_call"]
        log(f"{label:30} round {rnd}: {row['rate']:7.0f}/s p50 {fmt(row['p50'])} p99 {fmt(row['p99'])} ms | us/call "
            + " ".join(f"{k} {us[k]}" for k in ("bridges", "mosquitto", "postgres", "load", "others"))
            + (f" | {row['pg']['tx_per_s']:.0f} tx/s, conns {row['pg']['conns']}, owners {row['pg']['owners']}"
               if "pg" in row else "")
            + (f" !! errors {r['errors']} lost {r['lost']} dead {r['dead']} ({r['first_error']})"
               if r["errors"] or r["lost"] or r["dead"] else ""))

    # -- 2. forwarding ----------------------------------------------------------------------------------------

    def monitored(self, clients: list[dict[str, Any]], duration: float, **kw: Any) -> list[tuple[int, float, bool]]:
        """Run ``clients`` (recording every call) beside a monitor on ca/_fwd/#; (index, ms, forwarded) of each
        call without an error; ``kw`` goes to Workers.run."""
        mon = {"kind": "mon", "cid": f"fwdmon-{os.urandom(3).hex()}", "sub": "ca/_fwd/#"}
        r = self.workers.run(self.port, [mon, *clients], kw.pop("warmup", 0.5), duration, **kw)
        fwd = set(r["forwarded"])
        self.last_errors, self.last_lost = sum(1 for c in r["calls"] if c[2]), r["lost"]
        return [(int(rid.rsplit("-", 1)[1]), ms, rid in fwd) for rid, ms, err, *_ in r["calls"] if not err]

    def forward_pass(self, key: str, label: str, run: str, nb: int) -> None:
        calls = self.monitored(self.specs(run, nb, False, record=True), self.fwd_duration)
        fwd, direct = [c[1] for c in calls if c[2]], [c[1] for c in calls if not c[2]]
        e = {"key": key, "label": label, "bridges": nb, "calls": len(calls), "forwarded": len(fwd),
             "fraction": round(len(fwd) / len(calls), 4) if calls else None, "expected": round((nb - 1) / nb, 4),
             "p50_direct": pct(direct, 0.5), "p99_direct": pct(direct, 0.99), "p50_forwarded": pct(fwd, 0.5),
             "p99_forwarded": pct(fwd, 0.99), "errors": self.last_errors, "lost": self.last_lost}
        self.forwarding.append(e)
        log(f"{label}: {e['fraction']:.1%} of {len(calls)} requests forwarded (expected {e['expected']:.1%}); "
            f"p50 direct {fmt(e['p50_direct'])} ms vs forwarded {fmt(e['p50_forwarded'])} ms")

    # -- 3a. claim latency ------------------------------------------------------------------------------------

    def claim_probe(self, key: str, label: str, nb: int) -> None:
        """One client, idle cluster: 8 sequential calls to each of K never-seen CAs. Call 1 creates and claims the
        CA; with N bridges calls 2..N reach bridges that look it up once and forward; calls 4-8 are warm (direct
        or forwarded, told apart by the monitor)."""
        cas = [ca for k in range(self.claim_probes) for ca in [f"new{os.urandom(2).hex()}-{key}-{k}"] * 8]
        spec = {"kind": "rr", "cid": f"claim-{os.urandom(3).hex()}", "cas": cas, "pub": "ca/{ca}/in",
                "sub": "ca/+/session/probe", "session": "probe", "calls": len(cas), "record": True}
        calls = self.monitored([spec], 600.0, warmup=0.0, until_done=True)
        lat: dict[int, list[float]] = {}
        for n, ms, _ in calls:
            lat.setdefault((n - 1) % 8, []).append(ms)
        warm = {f: [ms for n, ms, fw in calls if (n - 1) % 8 >= 3 and fw == f] for f in (False, True)}
        first, second, allwarm = lat.get(0, []), lat.get(1, []) + lat.get(2, []), warm[False] + warm[True]
        e = {"key": key, "label": label, "bridges": nb, "cas": self.claim_probes, "errors": self.last_errors,
             "first_p50": pct(first, 0.5), "first_p90": pct(first, 0.9), "second_third_p50": pct(second, 0.5),
             "second_third_p90": pct(second, 0.9), "warm_p50": pct(allwarm, 0.5), "warm_p90": pct(allwarm, 0.9),
             "warm_direct_p50": pct(warm[False], 0.5), "warm_direct_n": len(warm[False]),
             "warm_forwarded_p50": pct(warm[True], 0.5), "warm_forwarded_n": len(warm[True]),
             "by_call_p50": {str(i + 1): pct(v, 0.5) for i, v in sorted(lat.items())}}
        self.claims.append(e)
        log(f"{label}: first call to a new CA p50 {fmt(e['first_p50'])} ms, calls 2-3 {fmt(e['second_third_p50'])} "
            f"ms, warm {fmt(e['warm_p50'])} ms (direct {fmt(e['warm_direct_p50'])}, forwarded "
            f"{fmt(e['warm_forwarded_p50'])})")

    # -- 3b. storage per CA -------------------------------------------------------------------------------------

    def storage_pass(self) -> None:
        """Clients create CAs by calling them (``each`` calls per CA); bytes per CA, as written and compacted."""
        for what, count, each in [("new", self.new_cas, 1)] + ([] if self.quick else [("dedup-full", 500, 70)]):
            for store in ("pg", "sqlite"):
                names = [f"s{what}-{os.urandom(2).hex()}-{i}" for i in range(count)]
                dbname, url = self.pg.create("storage") if store == "pg" else ("", str(self.tmp / f"{what}.db"))
                b = self.bridge(url, "s1" if store == "pg" else None)
                empty = self.pg.sizes(dbname) if store == "pg" else {}
                clients = [{"kind": "rr", "cid": f"walk-{os.urandom(3).hex()}-{i}", "cas": names[i::self.clients],
                            "pub": "ca/{ca}/in", "sub": f"ca/+/session/w{i}", "session": f"w{i}",
                            "calls": len(names[i::self.clients]) * each} for i in range(self.clients)]
                try:
                    r = self.workers.run(self.port, clients, 0.0, 900.0, until_done=True)
                finally:
                    b.stop(30)
                e: dict[str, Any] = {"what": what, "store": store, "cas": count, "calls_each": each,
                                     "calls": r["count"], "errors": r["errors"], "lost": r["lost"],
                                     "rate": round(r["count"] / r["elapsed"], 1), "p50": pct(r["lat"], 0.5),
                                     "p99": pct(r["lat"], 0.99)}
                e.update(self.pg_bytes(dbname, empty, count) if store == "pg" else sqlite_bytes(Path(url), count))
                self.storage.append(e)
                log(f"storage {what} {store}: {count} CAs x {each} call(s): {e['rate']}/s (p50 {fmt(e['p50'])} p99 "
                    f"{fmt(e['p99'])} ms), {e['bytes_per_ca']} bytes/CA as written, {e['bytes_per_ca_vacuum_full']} "
                    f"compacted, dedup rows/CA {e['dedup_rows_per_ca']}")

    def pg_bytes(self, dbname: str, empty: dict[str, dict[str, int]], count: int) -> dict[str, Any]:
        full = self.pg.sizes(dbname)
        self.pg.q("VACUUM FULL", db=dbname)
        packed = self.pg.sizes(dbname)
        data = [t for t in TABLES if t != "node"]
        return {"bytes_per_ca": round(sum(full[t]["bytes"] - empty[t]["bytes"] for t in data) / count),
                "bytes_per_ca_vacuum_full": round(sum(packed[t]["bytes"] - empty[t]["bytes"] for t in data) / count),
                "dedup_rows_per_ca": round(full["dedup"]["rows"] / count, 2),
                "tables": {t: {"rows": full[t]["rows"], "bytes": full[t]["bytes"], "empty": empty[t]["bytes"],
                               "bytes_vacuum_full": packed[t]["bytes"]} for t in TABLES},
                "row_bytes": {t: round(float(self.pg.q(f"SELECT coalesce(avg(pg_column_size(x.*)), 0) FROM {t} x",
                                                       db=dbname)[0][0]), 1) for t in data}}

    # -- 3c. takeover -------------------------------------------------------------------------------------------

    def takeover_one(self, mode: str, seconds: float = 12.0) -> None:
        dbname, url = self.pg.create(f"takeover_{mode}")
        nodes = {f"n{i + 1}": self.bridge(url, f"n{i + 1}") for i in range(2)}
        try:
            cas = [f"tk{os.urandom(2).hex()}-{i}" for i in range(20)]
            spec = {"kind": "rr", "cid": f"tk-{os.urandom(3).hex()}", "cas": cas, "pub": "ca/{ca}/in",
                    "sub": "ca/+/session/probe", "session": "probe", "calls": len(cas)}
            self.workers.run(self.port, [spec], 0.0, 60.0, until_done=True)  # the CAs spread over both bridges
            owners = {ca: self.pg.owner_of(dbname, ca) for ca in cas}
            ca, victim = cas[0], owners[cas[0]]
            if victim not in nodes:
                raise RuntimeError(f"takeover: {ca} has no live owner ({victim})")
            got: list[dict[str, Any]] = []
            caller = spec | {"cas": [ca], "calls": 10**9, "record": True, "retry": 0.1}  # the same request per 100 ms
            th = threading.Thread(target=lambda: got.append(self.workers.run(self.port, [caller], 0.0, seconds)))
            th.start()
            time.sleep(1.5)
            t_kill = time.monotonic()
            if mode == "sigterm":
                nodes[victim].stop(30)
            else:
                nodes[victim].kill()
            t_dead = time.monotonic()  # a reply later than t_dead + 20 ms came from another bridge
            restarted = nodes[victim].start(120).startup if mode == "restart" else None
            th.join()
            calls = got[0]["calls"]  # [id, ms, error, reply time, ok, attempts]
            oks = [c for c in calls if not c[2]]
            recovered = next((c for c in oks if c[3] > t_dead + 0.02), None)
            before = [c for c in oks if c[3] <= t_kill]
            span = [c[3] for c in oks if recovered and t_kill - 1.0 <= c[3] <= recovered[3]]
            longest = max((b - a for a, b in itertools.pairwise(span)), default=None)
            e = {"mode": mode, "ttl": 5.0, "victim": victim, "of_cas": len(cas),
                 "victim_owned": sum(1 for o in owners.values() if o == victim),
                 "recovered_s": round(recovered[3] - t_kill, 3) if recovered else None,
                 "longest_gap_s": round(longest, 3) if longest is not None else None,
                 "stop_took_s": round(t_dead - t_kill, 3), "attempts_of_first_ok": recovered[5] if recovered else None,
                 "restart_listening_s": round(restarted, 3) if restarted is not None else None,
                 "value_before": before[-1][4] if before else None, "value_after": recovered[4] if recovered else None,
                 # every successful call's counter is the previous one + 1: nothing lost or run twice
                 "exactly_once": all(b[4] == a[4] + 1 for a, b in itertools.pairwise(oks)), "calls_ok": len(oks),
                 "error_replies": len(calls) - len(oks), "first_error": got[0]["first_error"],
                 "owners_after": self.pg.owners(dbname)}
            self.takeover.append(e)
            log(f"takeover ({mode}): {victim} (owner of {e['victim_owned']}/{len(cas)} CAs) stopped; calls to {ca} "
                f"succeed again after {fmt(e['recovered_s'])} s (longest gap {fmt(e['longest_gap_s'])} s); value "
                f"{e['value_before']} -> {e['value_after']}; {e['error_replies']} error replies")
        finally:
            for b in nodes.values():
                b.stop(15)


def mean(values: list[Any]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def server_cpu(r: dict[str, Any]) -> tuple[float, float, float]:
    """(server us/call, other us/call, CPU-bound ceiling in calls/s on 2 cores) of one throughput row."""
    us = r["cpu_us_per_call"]
    server = sum(us[k] or 0 for k in ("bridges", "mosquitto", "postgres"))
    limits = [2e6 / server if server else 0.0] + ([1e6 * r["bridges"] / us["bridges"]] if us["bridges"] else []) + (
        [1e6 / us["mosquitto"]] if us["mosquitto"] else [])
    return server, (us["others"] or 0) + (us.get("self") or 0), min(limits)


def report(b: Any, meta: dict[str, Any]) -> str:
    out: list[str] = []
    w = out.append
    fs = meta["fdatasync"]
    w(f"ca-bridge cluster benchmark ({'quick' if b.quick else 'full'}), {meta['time']}: mosquitto, PostgreSQL "
      f"{meta['postgres']} (fsync on, synchronous_commit on, shared_buffers 64MB), {meta['cpus']} CPUs shared by "
      f"everything; {meta['clients']} closed-loop clients each calling incr on its own CA; warm-up {b.warmup}s, "
      f"measured {b.duration}s, {b.rounds} round(s); 8 KiB write + fdatasync: p50 {fmt(fs['p50_ms'], 3)} ms, p90 "
      f"{fmt(fs['p90_ms'], 3)} ms" + (f"; bridge code at {meta['git_head']}" + (
          " + uncommitted changes" if meta.get("bridge_dirty") else "") if meta.get("git_head") else ""))
    w("\n1. throughput (rate = calls/s; x sqlite = rate / the SQLite bridge's in the same round; CPU = us per call by "
      "process type; server = bridges + mosquitto + PostgreSQL; ceiling: see below)")
    w(f"{'configuration':30} {'rd':>2} {'calls/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x sqlite':>8} | {'bridges':>7} "
      f"{'mosq':>5} {'pg':>5} {'server':>6} {'load':>5} {'irq':>5} {'other':>5} {'ceiling':>7} | {'pg tx/s':>7} "
      f"{'tx/call':>7} {'rows/call':>9} {'WAL B/call':>10} {'calls/fsync':>11} | conns per bridge")
    for r in b.rows:
        base = next((x for x in b.rows if x["key"] == "sqlite1" and x["round"] == r["round"]), None)
        us, (server, other, ceiling), pg = r["cpu_us_per_call"], server_cpu(r), r.get("pg")
        pgcols = (f"{pg['tx_per_s']:>7.0f} {fmt(pg['tx_per_call'], 3):>7} {fmt(pg['rows_per_call']):>9} "
                  f"{fmt(pg['wal_bytes_per_call'], 0):>10} {fmt(pg['calls_per_wal_sync']):>11} | "
                  + " ".join(str(v) for v in pg["conns"].values())) if pg else ""
        w(f"{r['label']:30} {r['round']:>2} {r['rate']:>8.0f} {fmt(r['p50']):>7} {fmt(r['p99']):>7} "
          f"{fmt(r['rate'] / base['rate']) if base and base['rate'] else '':>8} | "
          + " ".join(f"{fmt(us[k], 0):>{n}}" for k, n in (("bridges", 7), ("mosquitto", 5), ("postgres", 5)))
          + f" {server:>6.0f} {fmt(us['load'], 0):>5} {fmt(us.get('irq'), 0):>5} {other:>5.0f} {ceiling:>7.0f} | "
          + pgcols)
        if r["errors"] or r["lost"] or r["dead"]:
            w(f"   !! errors {r['errors']} lost {r['lost']} dead {r['dead']}: {r['first_error']}")
    for key, label, *_ in CONFIGS if b.rounds > 1 else []:
        rs = [r for r in b.rows if r["key"] == key]
        if rs:
            q = min(rs, key=lambda r: r["cpu_pct"]["others"])
            cpu = " ".join(f"{k} {mean([r['cpu_us_per_call'][k] for r in rs]) or 0:.0f}" for k in
                           ("bridges", "mosquitto", "postgres", "load"))
            server = mean([server_cpu(r)[0] for r in rs]) or 0
            w(f"   mean {label:30} {mean([r['rate'] for r in rs]) or 0:5.0f}/s p50 {fmt(mean([r['p50'] for r in rs]))} "
              f"p99 {fmt(mean([r['p99'] for r in rs]))} ms; CPU us/call {cpu}; server {server:.0f}; quietest round "
              f"{q['round']}: {q['rate']:.0f}/s (others {q['cpu_pct']['others']}%)")
    w("CPU columns: bridges = all bridge processes; pg = the postmaster and every child; load = the load generators; "
      "irq = the machine's interrupt time (loopback TCP); other = the rest of the machine (this script, other "
      "tenants), per call. ceiling = min(2 cores / server CPU per call, N bridges x 1 core / bridge CPU per call, "
      "1 core / mosquitto CPU per call): a projection from measured CPU per call, not a measurement.")
    if b.rows:
        w(f"machine busy before the windows: {min(r['busy_before'] for r in b.rows):.0f}-"
          f"{max(r['busy_before'] for r in b.rows):.0f}% of one core; in the windows (200 = both cores): "
          + ", ".join(f"{r['key']} {r['cpu_pct']['machine']:.0f}" for r in b.rows))
        w("CAs owned per node after the window (round 1): " + "; ".join(
            f"{r['key']}: {r['pg']['owners']}" for r in b.rows if r.get("pg") and r["round"] == 1))
    w("\n2. forwarding (a separate pass, same clients and CAs, with a monitor on ca/_fwd/#)")
    for f in b.forwarding:
        w(f"   {f['label']:30} forwarded {f['forwarded']}/{f['calls']} = {f['fraction']:.1%} (expected "
          f"{f['expected']:.1%}); p50/p99 direct {fmt(f['p50_direct'])}/{fmt(f['p99_direct'])} ms, forwarded "
          f"{fmt(f['p50_forwarded'])}/{fmt(f['p99_forwarded'])} ms; errors {f['errors']} lost {f['lost']}")
    for n in (2, 3):
        shared, part = ([r for r in b.rows if r["key"] == k] for k in (f"pg{n}", f"pg{n}p"))
        fw = next((f for f in b.forwarding if f["bridges"] == n), None)
        if shared and part:
            d = {k: (mean([r["cpu_us_per_call"][k] for r in shared]) or 0) - (mean(
                [r["cpu_us_per_call"][k] for r in part]) or 0) for k in ("bridges", "mosquitto", "postgres", "load")}
            rs, rp, tot = mean([r["rate"] for r in shared]) or 0, mean([r["rate"] for r in part]) or 1, sum(d.values())
            w(f"   cost at N={n}: shared subscription {rs:.0f}/s vs partitioned {rp:.0f}/s ({rs / rp - 1:+.0%}); CPU "
              f"us/call " + " ".join(f"{k} {v:+.0f}" for k, v in d.items()) + f" (total {tot:+.0f}); per forwarded "
              f"request ~{tot / ((fw or {}).get('fraction') or (n - 1) / n):.0f} us")
    w("\n3. capacity\n   time to claim a new CA (one client, idle cluster, p50 [p90] ms): first call | calls 2-3 | "
      "calls 4-8 (direct / forwarded, p50)")
    for c in b.claims:
        w(f"   {c['label']:30} {fmt(c['first_p50']):>6} [{fmt(c['first_p90'])}] | {fmt(c['second_third_p50']):>6} "
          f"[{fmt(c['second_third_p90'])}] | {fmt(c['warm_p50']):>6} [{fmt(c['warm_p90'])}] "
          f"({fmt(c['warm_direct_p50'])} x{c['warm_direct_n']} / {fmt(c['warm_forwarded_p50'])} "
          f"x{c['warm_forwarded_n']})   ({c['cas']} new CAs, errors {c['errors']})")
    w("   storage: clients create CAs by calling them (one session each); bytes/CA from the table sizes minus the "
      "empty tables' (PostgreSQL: pg_total_relation_size with indexes and TOAST; SQLite: the file)")
    for s in b.storage:
        w(f"   {s['what']:10} {s['store']:6} {s['cas']:>6} CAs x {s['calls_each']:>2} calls: {fmt(s['rate'], 0):>6}/s "
          f"(p50 {fmt(s['p50'])} p99 {fmt(s['p99'])} ms) {s['bytes_per_ca']:>6} B/CA as written, "
          f"{s['bytes_per_ca_vacuum_full']:>6} compacted; dedup rows/CA {s['dedup_rows_per_ca']}"
          + ("; avg row bytes " + ", ".join(f"{t} {v}" for t, v in s["row_bytes"].items()) if "row_bytes" in s
             else ""))
    w("   takeover (2 bridges; one client calls a CA owned by the stopped bridge, the same request every 100 ms)")
    for t in b.takeover:
        what = {"ttl": "SIGKILL, --node-ttl 5 (default)", "restart": "SIGKILL + restart with same --node",
                "sigterm": "SIGTERM (clean leave)"}[t["mode"]]
        w(f"   {what:36} recovered after {fmt(t['recovered_s'])} s (longest gap {fmt(t['longest_gap_s'])} s; "
          f"{t['attempts_of_first_ok']} attempts)" + (f"; restarted bridge 'listening' after "
                                                      f"{t['restart_listening_s']:.2f} s" if t["restart_listening_s"]
                                                      else "")
          + f"; counter {t['value_before']} -> {t['value_after']} (exactly-once: {t['exactly_once']}); error replies "
          f"{t['error_replies']}" + (f" ({t['first_error']})" if t["first_error"] else ""))
    if meta.get("bridge_log"):
        w("\nbridge warnings/errors logged during the run (count: message):")
        out += [f"   {v:5}: {k}" for k, v in meta["bridge_log"].items()]
    return "\n".join(out)


def main() -> int:
    p = options(__doc__, "cluster", "a few seconds per configuration, one round (a smoke run)", "12, quick 3",
                "3, quick 1")
    p.add_argument("--clients", type=int, default=16, help="closed-loop clients of the throughput runs")
    p.add_argument("--rounds", type=int, default=0, help="alternating rounds of the matrix (default 2, quick 1)")
    p.add_argument("--new-cas", type=int, help="CAs created by the storage pass (default 10000, quick 2000)")
    p.add_argument("--configs", default="", help="comma-separated subset of the throughput configurations: "
                   + ",".join(c[0] for c in CONFIGS))
    p.add_argument("--only", default="", help="comma-separated subset of: throughput,storage,takeover")
    p.add_argument("--report", metavar="JSON", help="print the report of an earlier run's OUT.json and exit")
    args = p.parse_args()
    if args.report:
        data = json.loads(Path(args.report).read_text())
        m = data["meta"]
        print(report(argparse.Namespace(quick=m["quick"], warmup=m["warmup_s"], duration=m["duration_s"],
                                        rounds=m["rounds"], **{k: data[k] for k in PARTS}), m))
        return 0
    parts = set(filter(None, args.only.split(","))) or {"throughput", "storage", "takeover"}

    def body(tmp: Path) -> tuple[str, dict[str, Any]]:
        cb = ClusterBench(args, tmp)
        try:
            for rnd in range(1, cb.rounds + 1) if "throughput" in parts else ():
                for config in CONFIGS:
                    if not args.configs or config[0] in args.configs.split(","):
                        cb.config(*config, rnd)
            if "storage" in parts:
                cb.storage_pass()
            for mode in ("ttl", "restart", "sigterm") if "takeover" in parts else ():
                cb.takeover_one(mode)
            meta = {"warmup_s": cb.warmup, "duration_s": cb.duration, "rounds": cb.rounds, "clients": cb.clients,
                    "postgres": cb.pg.q("SHOW server_version")[0][0], "bridge_log": cb.log_summary(),
                    "fdatasync": fsync_latency(tmp), "quick": args.quick, "cpus": os.cpu_count(),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **git_state()}
            return report(cb, meta), {"meta": meta, **{k: getattr(cb, k) for k in PARTS}}
        finally:
            cb.pg.close()

    return session(args, body)


if __name__ == "__main__":
    sys.exit(main())
