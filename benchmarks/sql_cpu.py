#!/usr/bin/env python3
"""The runtime on a real SQLite store (WAL, synchronous=FULL): CPU and SQL statements per committed call.

Harness + ``tests.apps.Counter``, closed loop like the yardstick: ``--cas N`` devices, each calling ``incr`` on its
own CA and waiting for the reply before the next call. After a warm-up that fills the dedup windows, prints per call:
the process CPU (and of it the store's thread: the process less the loop's thread), the calls per commit, and the SQL
statements the store ran (sqlite3's trace callback: each row of an ``executemany``
counts, as SQLite steps it once per row), by kind.

    .venv/bin/python benchmarks/sql_cpu.py [--cas 1] [--calls 2000] [--src other/checkout] [--quiet]

For a deterministic comparison, count instructions with callgrind over two sizes and take the difference per call:

    for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/sql_cpu.py --quiet --calls $n [--src BEFORE] 2>&1 | grep Collected; done
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_LITERALS = re.compile(r"x?'[^']*'|\b\d+\b")


async def measure(cas: int, calls: int, quiet: bool) -> None:
    from bridge.testing import Harness
    from tests.apps import Counter

    with tempfile.TemporaryDirectory() as tmp:
        async with Harness(Counter, Path(tmp) / "bench.db") as h:

            async def device(i: int, n: int) -> None:
                for _ in range(n):
                    await h.call(f"c{i}", "default", "incr")

            await asyncio.gather(*(device(i, 100) for i in range(cas)))  # past the dedup windows (64 per CA)
            kinds: collections.Counter[str] = collections.Counter()
            db = getattr(h.store, "_db", None)
            if db is not None and not quiet:
                db.set_trace_callback(lambda sql: kinds.update([_LITERALS.sub("?", sql)[:72]]))
            per = max(1, calls // cas)
            batches = h.runtime.metrics.commit_batch
            commits0 = batches.count
            cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
            await asyncio.gather(*(device(i, per) for i in range(cas)))
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            store_cpu = cpu - (time.thread_time() - loop0)
            commits = batches.count - commits0
            if db is not None:
                db.set_trace_callback(None)
    if quiet:
        return
    n = per * cas
    print(f"cas={cas} calls={n} calls/s={n / wall:.0f} process us/call={1e6 * cpu / n:.0f} "
          f"store thread us/call={1e6 * store_cpu / n:.1f} calls/commit={n / max(1, commits):.2f} "
          f"statements/call={sum(kinds.values()) / n:.2f}")
    for sql, count in kinds.most_common():
        print(f"  {count / n:6.3f}  {sql}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cas", type=int, default=1)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--src", type=Path, default=ROOT, help="import bridge from this checkout")
    parser.add_argument("--quiet", action="store_true", help="print nothing (for callgrind)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    sys.path.insert(1, str(ROOT))  # tests.apps from this checkout
    asyncio.run(measure(args.cas, args.calls, args.quiet))


if __name__ == "__main__":
    main()
