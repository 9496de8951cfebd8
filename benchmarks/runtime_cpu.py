#!/usr/bin/env python3
"""CPU per call of the runtime alone: the Harness on a MemoryStore (no MQTT, no disk), 16 CAs, 4,000 concurrent
calls, best of 5. It isolates the bridge's own bookkeeping (transactions, sessions, dedup, metrics, log context).

    .venv/bin/python benchmarks/runtime_cpu.py [SOURCE_DIR]     # SOURCE_DIR: another checkout to compare

Timings on a shared VM move by +-10 us from run to run. For a deterministic comparison, count instructions with
callgrind over two workload sizes and take the difference per call (start-up cancels out):

    for n in 200 1200; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/runtime_cpu.py [SOURCE_DIR] --calls $n 2>&1 | grep Collected; done
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
CALLS = int(sys.argv[sys.argv.index("--calls") + 1]) if "--calls" in sys.argv else 0
if CALLS:
    ARGS = [a for a in ARGS if a != str(CALLS)]
sys.path.insert(0, ARGS[0] if ARGS else str(ROOT))

from bridge.testing import Harness  # noqa: E402

sys.path.insert(1, str(ROOT))
from tests.apps import Counter  # noqa: E402


async def once(n: int) -> None:
    async with Harness(Counter) as h:
        for i in range(100):
            await h.call(f"c{i % 16}", "default", "incr")
        await asyncio.gather(*[h.call(f"c{i % 16}", "default", "incr") for i in range(n)])


async def main() -> None:
    async with Harness(Counter) as h:
        for i in range(200):
            await h.call(f"c{i % 16}", "default", "incr")
        best = float("inf")
        for _ in range(5):
            started, n = time.process_time(), 4000
            await asyncio.gather(*[h.call(f"c{i % 16}", "default", "incr") for i in range(n)])
            best = min(best, (time.process_time() - started) / n * 1e6)
    import bridge

    print(f"{Path(bridge.__file__).parent.parent}: {best:.1f} us CPU per call (best of 5 x 4,000 calls)")


if __name__ == "__main__":
    asyncio.run(once(CALLS) if CALLS else main())
