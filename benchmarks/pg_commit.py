#!/usr/bin/env python3
"""CPU and wall time of one PostgreSQL group commit, the store alone (no MQTT, no bridge): a throwaway server
(fsync on), 16 owned CAs, batches of 8 calls shaped like real ones (state, dedup record and window trimming,
every 5th with a session write and a notification).

    .venv/bin/python benchmarks/pg_commit.py [--commits 1500] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.store import Change, SessionWrite, membership_for, open_store
from tests.pgserver import PostgresServer


async def measure(url: str, commits: int, size: int) -> tuple[float, float]:
    store = open_store(url)
    await store.open()
    membership = membership_for(store)
    assert membership is not None
    try:
        await membership.join("bench", "bench", 60)
        membership.fence("bench")
        names = [f"c{i}" for i in range(16)]
        for name in names:
            await membership.claim(name, "bench", create=True)
        pos = dict.fromkeys(names, 0)

        def batch(k: int) -> list[Change]:
            out = []
            for j in range(size):
                name = names[(k * size + j) % len(names)]
                pos[name] += 1
                p = pos[name]
                change = Change(name, state=b"\xa1an" + bytes([p % 200]))
                change.dedup.append((p, "default", f"r{p}", b"\xa3areply" * 3))
                change.dedup_floors["default"] = max(0, p - 7)
                if p % 5 == 0:
                    change.sessions["default"] = SessionWrite(meta=b"\x87" + b"\x01" * 10, notes=[(p, b"\x81\x01")],
                                                              note_floor=max(0, p - 3))
                out.append(change)
            return out

        for k in range(200):  # warm-up: connections, prepared plans, buffers
            await store.commit(batch(k))
        cpu, wall = time.process_time(), time.perf_counter()
        for k in range(commits):
            await store.commit(batch(k))
        return (time.process_time() - cpu) / commits * 1e6, (time.perf_counter() - wall) / commits * 1e3
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    with PostgresServer(fsync=True) as server:
        cpu, wall = asyncio.run(measure(server.url, args.commits, args.batch))
    print(f"PostgreSQL group commit of {args.batch} calls: {cpu:.0f} us bridge CPU per commit "
          f"({cpu / args.batch:.0f} us per call), {wall:.2f} ms wall per commit, over {args.commits} commits")


if __name__ == "__main__":
    main()
