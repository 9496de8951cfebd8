#!/usr/bin/env python3
"""CPU per call on the event loop in the yardstick's shape: closed-loop devices (each sends its next call only when
the previous reply is back), the yardstick's counter CA (an ``async`` method), through the ingress into the runtime
on a MemoryStore. Unlike ingress_cpu.py (bursts of 4,000 requests, so mailboxes are deep), a CA's mailbox is
empty after each call here, as it is under the yardstick at 1 and 16 devices.

    .venv/bin/python benchmarks/loop_cpu.py [SOURCE_DIR] [--devices N]   # SOURCE_DIR: another checkout

For instruction counts (deterministic), run callgrind over two sizes and take the difference per call:

    for n in 1000 3000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/loop_cpu.py [SOURCE_DIR] --devices 1 --calls $n 2>&1 | grep Collected; done
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _opt(name: str, default: int) -> int:
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default


CALLS = _opt("--calls", 0)
DEVICES = _opt("--devices", 1)
ARGS = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
sys.path.insert(0, ARGS[0] if ARGS else str(ROOT))

import cbor2  # noqa: E402

from bridge import CA, method  # noqa: E402
from bridge.ingress import Ingress  # noqa: E402
from bridge.protocol import Topics  # noqa: E402
from bridge.runtime import Runtime  # noqa: E402
from bridge.store import MemoryStore  # noqa: E402


class Counter(CA):
    """The yardstick's counter CA (/work/shared/bench/counter.py)."""

    async def on_init(self) -> None:
        self.state["n"] = 0

    @method
    async def incr(self) -> int:
        self.state["n"] = self.state.get("n", 0) + 1
        n: int = self.state["n"]
        return n


class NullSink:
    def send(self, ca: str, session: str, payload: bytes) -> None:
        pass

    def send_error(self, ca: str, payload: bytes) -> None:
        pass

    def forward(self, node: str, ca: str, payload: bytes, hops: int = 1) -> None:
        raise AssertionError("no cluster here")

    def end_batch(self) -> None:
        pass


async def device(ingress: Ingress, topic: str, prefix: str, calls: int) -> None:
    loop = asyncio.get_running_loop()
    for i in range(calls):
        payload = cbor2.dumps({"t": "call", "session": "default", "id": f"{prefix}{i}", "method": "incr", "args": []})
        reply: asyncio.Future[Any] = loop.create_future()
        ingress.receive(topic, payload, reply)
        await reply


async def run(ingress: Ingress, topics: Topics, per_device: int, round_: int) -> None:
    await asyncio.gather(*[device(ingress, topics.inbound(f"dev{d}"), f"r{round_}-", per_device)
                           for d in range(DEVICES)])


async def main() -> None:
    store = MemoryStore()
    await store.open()
    topics = Topics("ca")
    async with Runtime(Counter, store, NullSink(), mailbox=1000) as rt:
        ingress = Ingress(rt, topics, 65536)
        await run(ingress, topics, 100, 0)
        if CALLS:
            await run(ingress, topics, CALLS // DEVICES, 1)
            return
        best = float("inf")
        for r in range(5):
            started = time.process_time()
            await run(ingress, topics, 3000 // DEVICES, r + 1)
            best = min(best, (time.process_time() - started) / (3000 // DEVICES * DEVICES) * 1e6)
    import bridge

    print(f"{Path(bridge.__file__).parent.parent}: {best:.1f} us CPU per call, {DEVICES} closed-loop device(s)")


if __name__ == "__main__":
    asyncio.run(main())
