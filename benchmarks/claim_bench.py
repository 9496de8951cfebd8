#!/usr/bin/env python3
"""Benchmark of first contact with many new CAs: how many new CAs per second bridges sharing one PostgreSQL claim.

    .venv/bin/python benchmarks/claim_bench.py [--bridges 2] [--cas 20000] [--window 1000] [--overlap 0.0] [--rounds 2]

Each bridge is its own process with its own Cluster, PostgresStore (pool of 4) and PostgresMembership, as a running
bridge has, on one throwaway PostgreSQL (tests/pgserver.py, fsync on). At a common start, each calls
``Cluster.claim(ca, create=True)`` for ``--cas`` never-seen CAs, keeping ``--window`` claims in flight (requests
for new CAs arriving faster than they are claimed: a fleet reconnecting); with ``--overlap`` a fraction of each
bridge's CAs is also asked for by the next bridge (both receive requests for it: one creates it, the other learns
the owner). Printed: CAs created per second across the bridges (from the start to the last bridge done), the
outcomes, and CPU per created CA of the bridges and of PostgreSQL. Only the Cluster/Membership layer is measured:
no broker, no calls. Nothing asserts on timings. To measure another commit, run this script with
``--root DIR`` pointing at an export of that commit (``git archive <commit> | tar -x -C DIR``): the bridges then
import that commit's ``bridge`` package.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [p for p in (str(ROOT),) if p not in sys.path]


async def worker(url: str, node: str, names: list[str], window: int) -> dict[str, Any]:
    import bridge
    from bridge.cluster import Cluster
    from bridge.store.postgres import PostgresStore
    from bridge.store.postgres_membership import PostgresMembership

    store = PostgresStore(url, pool_size=4, application_name=f"claim-bench-{node}")
    await store.open()
    try:
        cluster = Cluster(PostgresMembership(store), node)
        await cluster.join()

        done = asyncio.Event()

        async def beating() -> None:  # alive, as a running bridge is (or the other bridge takes its CAs over)
            while not done.is_set():
                try:
                    await asyncio.wait_for(done.wait(), cluster.heartbeat_interval)
                except TimeoutError:
                    await cluster.beat()

        beats = asyncio.ensure_future(beating())
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # the common start
        cpu0, t0 = time.process_time(), time.monotonic()
        outcomes: dict[str, int] = {}
        errors: list[str] = []
        gate = asyncio.Semaphore(window)

        async def one(ca: str) -> None:
            async with gate:
                try:
                    outcome = (await cluster.claim(ca, create=True)).outcome
                except Exception as exc:  # a bridge answers "unavailable" (counted, the first one shown)
                    outcome = "error"
                    errors.append(f"{type(exc).__name__}: {exc}")
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        await asyncio.gather(*(one(ca) for ca in names))
        elapsed, cpu = time.monotonic() - t0, time.process_time() - cpu0
        done.set()
        await beats
        return {"node": node, "code": bridge.__file__, "elapsed": elapsed, "cpu": cpu, "outcomes": outcomes,
                "first_error": errors[0] if errors else None}
    finally:
        await store.close()


def run_round(pg: Any, args: argparse.Namespace, rnd: int) -> dict[str, Any]:
    from tests.procs import tree_cpu

    dbname = f"claims{rnd}_{os.getpid()}"
    pg.psql(f"CREATE DATABASE {dbname}")
    url = pg.url.rsplit("/", 1)[0] + "/" + dbname
    per = args.cas
    shared = int(per * args.overlap)
    procs = []
    for b in range(args.bridges):
        own = [f"r{rnd}-b{b}-{i}" for i in range(per - shared)]
        nxt = (b + 1) % args.bridges
        theirs = [f"r{rnd}-b{nxt}-s{i}" for i in range(shared)] if args.bridges > 1 else []
        mine = [f"r{rnd}-b{b}-s{i}" for i in range(shared)]
        names = own + mine + theirs
        spec = json.dumps({"url": url, "node": f"n{b + 1}", "names": names, "window": args.window,
                           "root": str(args.root.resolve())})
        p = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=str(args.root))
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(spec + "\n")
        p.stdin.flush()
        procs.append(p)
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"a bridge failed to start: {line or p.wait(10)}")
        postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
        pg_cpu0, t0 = tree_cpu(postmaster), time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            assert p.stdout is not None
            results.append(json.loads(p.stdout.readline()))
        wall, pg_cpu = time.monotonic() - t0, tree_cpu(postmaster) - pg_cpu0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        row = c.execute("SELECT count(*), count(DISTINCT owner), max(epoch) FROM ca").fetchone()
        assert row is not None
        created, owners, max_epoch = int(row[0]), int(row[1]), int(row[2] or 0)
    pg.psql(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
    outcomes: dict[str, int] = {}
    for r in results:
        for k, v in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    bridge_cpu = sum(r["cpu"] for r in results)
    return {"round": rnd, "created": created, "owners": owners, "max_epoch": max_epoch, "outcomes": outcomes,
            "wall_s": round(wall, 3), "created_per_s": round(created / wall, 1),
            "per_bridge_s": [round(r["elapsed"], 3) for r in results], "code": results[0]["code"],
            "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
            "bridge_cpu_us_per_ca": round(1e6 * bridge_cpu / created, 1),
            "postgres_cpu_us_per_ca": round(1e6 * pg_cpu / created, 1)}


def busy_percent(seconds: float = 1.0) -> float:
    from tests.procs import machine_cpu

    b0 = machine_cpu()[0]
    time.sleep(seconds)
    return round(100 * (machine_cpu()[0] - b0) / seconds, 1)


def main() -> int:
    if sys.argv[1:] == ["--worker"]:
        spec = json.loads(sys.stdin.readline())
        sys.path.insert(0, spec["root"])  # the tree measured (this script's own, or an export's)
        result = asyncio.run(worker(spec["url"], spec["node"], spec["names"], spec["window"]))
        print(json.dumps(result), flush=True)
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bridges", type=int, default=2, help="bridge processes (default 2)")
    p.add_argument("--cas", type=int, default=20000, help="new CAs asked for per bridge (default 20000)")
    p.add_argument("--window", type=int, default=1000, help="claims in flight per bridge (default 1000)")
    p.add_argument("--overlap", type=float, default=0.0,
                   help="fraction of each bridge's CAs also asked for by the next bridge (default 0)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, each on a fresh database (default 2)")
    p.add_argument("--root", type=Path, default=ROOT, help="the source tree whose bridge package is measured")
    args = p.parse_args()
    if args.bridges < 1 or args.cas < 1 or args.window < 1 or not 0 <= args.overlap < 1:
        p.error("--bridges, --cas and --window must be positive, --overlap in [0, 1)")
    from tests.pgserver import PostgresServer

    head = os.environ.get("BENCH_GIT_HEAD") or subprocess.run(
        ["git", "-C", str(args.root), "rev-parse", "--short", "HEAD"], capture_output=True,
        text=True, check=False).stdout.strip() or "?"
    with PostgresServer(fsync=True, max_connections=200) as pg:
        print(f"claim benchmark: {args.bridges} bridge(s) x {args.cas} new CAs, window {args.window}, overlap "
              f"{args.overlap}, code {args.root} ({head}), {os.cpu_count()} CPUs, PostgreSQL fsync on", flush=True)
        rows = []
        for rnd in range(1, args.rounds + 1):
            busy = busy_percent()
            r = run_round(pg, args, rnd)
            r["busy_before_pct"] = busy
            rows.append(r)
            print(f"round {rnd}: {r['created']} CAs created in {r['wall_s']} s = {r['created_per_s']:.0f}/s across "
                  f"{args.bridges} bridge(s) | outcomes {r['outcomes']} | owners {r['owners']} max epoch "
                  f"{r['max_epoch']} | CPU us per CA: bridges {r['bridge_cpu_us_per_ca']}, PostgreSQL "
                  f"{r['postgres_cpu_us_per_ca']} | machine {busy}% busy before"
                  + (f" | first error: {r['first_error']}" if r["first_error"] else ""), flush=True)
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
