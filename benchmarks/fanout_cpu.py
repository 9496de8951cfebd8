#!/usr/bin/env python3
"""CPU per fan-out call of the runtime alone: the Harness on a MemoryStore (no MQTT, no disk), one CA with 100
device sessions, a driver calling ``fanout(100)`` (benchmarks/apps.py:Bench), and every device acknowledging
every 10th notification as bench.py's do. It isolates what one call notifying 100 sessions costs the bridge's own
Python: the notifications queued, the sessions' changes built, the commit's merge and the deliveries (to a sink
that only takes them), best of 5 rounds of 100 calls.

    .venv/bin/python benchmarks/fanout_cpu.py [SOURCE_DIR]     # SOURCE_DIR: another checkout to compare

For instruction counts (deterministic), run callgrind over two sizes and take the difference per call:

    for n in 10 50; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/fanout_cpu.py [SOURCE_DIR] --calls $n 2>&1 | grep Collected; done
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARGS = [a for a in sys.argv[1:] if not a.startswith("--")]
CALLS = int(sys.argv[sys.argv.index("--calls") + 1]) if "--calls" in sys.argv else 0
if CALLS:
    ARGS = [a for a in ARGS if a != str(CALLS)]
sys.path[:0] = [ARGS[0] if ARGS else str(HERE.parent), str(HERE)]

from apps import Bench  # noqa: E402

from bridge.testing import Harness  # noqa: E402

FANOUT = 100


async def rounds(h: Harness, calls: int) -> None:
    for i in range(calls):
        await h.call("fan", "driver", "fanout", FANOUT, 0)
        if i % 10 == 9:  # every device acks its 10th notification, as bench.py's devices do
            await asyncio.gather(*[h.ack("fan", f"d{j}", 10**9) for j in range(FANOUT)])


async def main() -> None:
    async with Harness(Bench) as h:
        h.sink.send = lambda ca, session, payload: None  # type: ignore[method-assign]  # take them, like the link
        for i in range(FANOUT):
            await h.call("fan", f"d{i}", "incr")
        await rounds(h, 20)
        if CALLS:
            await rounds(h, CALLS)
            return
        best = float("inf")
        for _ in range(5):
            started = time.process_time()
            await rounds(h, 100)
            best = min(best, (time.process_time() - started) / 100 * 1e6)
    import bridge

    print(f"{Path(bridge.__file__).parent.parent}: {best:,.0f} us CPU per fan-out call ({best / FANOUT:.1f} per "
          f"notification; best of 5 x 100 calls, acks included)")


if __name__ == "__main__":
    asyncio.run(main())
