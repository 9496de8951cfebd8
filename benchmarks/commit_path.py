#!/usr/bin/env python3
"""The commit path alone (no MQTT, no actors): Committer + SQLiteStore (WAL, synchronous=FULL) on a real file.

Closed loop like the yardstick: N "devices" each submit one call shaped like `incr` (state, dedup record, and the
dedup window's floor once per ``--floor-every`` calls, as bridge.actor writes it), wait for its delivery, submit the
next. Prints per delivered call: the loop thread's CPU, the rest of the process's CPU (the store's thread), the
submit-to-delivery latency (p50/p99), the calls per commit and the mean commit time (the committer's metrics).

    .venv/bin/python benchmarks/commit_path.py [--devices 1] [--calls 3000] [--src other/checkout]

``--src`` imports ``bridge`` from another checkout (e.g. a ``git archive`` of the base) to compare versions in the
same conditions. ``--inline`` commits every lone change on the loop whatever it takes (under valgrind a commit can
take longer than the store's INLINE_MAX_S, which would send some of them to the store's thread, so the instruction
count of one device would depend on timing):

    for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python \
        benchmarks/commit_path.py --devices 1 --inline --calls $n [--src BEFORE] 2>&1 | grep Collected; done
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


class Owner:
    def __init__(self, name: str) -> None:
        self.name = name
        self.epoch = 0

    def invalidate(self) -> None:
        self.epoch += 1


async def measure(devices: int, calls: int, floor_every: int) -> dict[str, float]:
    from bridge.committer import Committer, Pending
    from bridge.metrics import Metrics
    from bridge.store import Change
    from bridge.store.sqlite import SQLiteStore

    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        await store.open()
        latencies: list[float] = []
        waiting: dict[str, tuple[float, asyncio.Future[None]]] = {}

        def deliver(p: Any) -> None:
            at, fut = waiting.pop(p.owner.name)
            latencies.append(time.perf_counter() - at)
            fut.set_result(None)

        metrics = Metrics()
        committer = Committer(store, deliver, retry=lambda *a: None, reject=lambda *a: None, metrics=metrics)
        runner = asyncio.create_task(committer.run())

        async def device(i: int, n: int) -> None:
            owner = Owner(f"ca{i}")
            for pos in range(1, n + 1):
                change = Change(owner.name, b"\xa1an\x19" + pos.to_bytes(2, "big"),
                                dedup=[(pos, "s", f"r{pos}", b"\xa3at\x65reply")],
                                dedup_floors={"s": pos - 7} if pos > 8 and pos % floor_every == 0 else {})
                fut = loop.create_future()
                waiting[owner.name] = (time.perf_counter(), fut)
                committer.submit(Pending(owner=owner, epoch=0, change=change))
                await fut

        await asyncio.gather(*(device(i, 50) for i in range(devices)))  # warm-up
        latencies.clear()
        per = max(1, calls // devices)
        commits0, commit_s0 = metrics.commit_batch.count, metrics.commit_seconds.total
        cpu0, loop0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
        await asyncio.gather(*(device(i, per) for i in range(devices)))
        cpu, loop_cpu, wall = time.process_time() - cpu0, time.thread_time() - loop0, time.perf_counter() - wall0
        commits = metrics.commit_batch.count - commits0
        commit_s = metrics.commit_seconds.total - commit_s0
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await store.close()
        n = len(latencies)
        latencies.sort()
        return {"calls/s": n / wall, "loop us/call": 1e6 * loop_cpu / n,
                "store thread us/call": 1e6 * (cpu - loop_cpu) / n,
                "process us/call": 1e6 * cpu / n, "p50 ms": 1e3 * statistics.median(latencies),
                "p99 ms": 1e3 * latencies[int(0.99 * (n - 1))], "calls/commit": n / commits,
                "commit ms": 1e3 * commit_s / commits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--floor-every", type=int, default=8, help="a dedup floor in one call of this many")
    parser.add_argument("--inline", action="store_true", help="commit every lone change on the loop (valgrind)")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1])
    args = parser.parse_args()
    sys.path.insert(0, str(args.src.resolve()))
    if args.inline:
        import bridge.store.sqlite

        bridge.store.sqlite.INLINE_MAX_S = float("inf")
    result = asyncio.run(measure(args.devices, args.calls, args.floor_every))
    print(f"devices={args.devices} " + " ".join(f"{k}={v:.3g}" for k, v in result.items()))


if __name__ == "__main__":
    main()
