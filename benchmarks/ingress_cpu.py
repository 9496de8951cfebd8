#!/usr/bin/env python3
"""CPU per request of the production request path without a network: encoded payloads on inbound topics, through
the ingress (topic -> CA, decode, validate, admission) into the runtime on a MemoryStore, replies to a sink that
only counts them. 16 CAs, 4,000 requests per round, best of 5.

    .venv/bin/python benchmarks/ingress_cpu.py [SOURCE_DIR]     # SOURCE_DIR: another checkout to compare

For instruction counts (deterministic), run callgrind over two sizes and take the difference per request:

    for n in 1000 5000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/ingress_cpu.py [SOURCE_DIR] --calls $n 2>&1 | grep Collected; done

A checkout from before bridge.ingress existed is driven the way its service's MQTT handler drove it (the topic
parsed, then ``parse_request`` and ``Runtime.submit``), so both numbers cover the same work.
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

import cbor2  # noqa: E402

from bridge.protocol import Topics, parse_request  # noqa: E402
from bridge.runtime import Runtime  # noqa: E402
from bridge.store import MemoryStore  # noqa: E402

sys.path.insert(1, str(ROOT))
from tests.apps import Counter  # noqa: E402


class CountingSink:
    def __init__(self) -> None:
        self.sent = 0

    def send(self, ca: str, session: str, payload: bytes) -> None:
        self.sent += 1

    def send_error(self, ca: str, payload: bytes) -> None:
        self.sent += 1

    def forward(self, node: str, ca: str, payload: bytes, hops: int = 1) -> None:
        raise AssertionError("no cluster here")

    def end_batch(self) -> None:
        pass


def receiver(rt: Runtime, topics: Topics):  # type: ignore[no-untyped-def]
    import bridge

    if not (Path(bridge.__file__).parent / "ingress.py").exists():  # before the ingress: what the service's MQTT
        # handler did, without a cluster
        def receive(topic: str, payload: bytes) -> None:
            ca = topics.ca_of(topic)
            if ca is None:
                return
            rt.submit(ca, parse_request(payload, 65536))

        return receive
    from bridge.ingress import Ingress

    return Ingress(rt, topics, 65536).receive


async def main() -> None:
    store = MemoryStore()
    await store.open()
    sink = CountingSink()
    topics = Topics("ca")
    async with Runtime(Counter, store, sink, mailbox=100_000) as rt:
        receive = receiver(rt, topics)
        ids = iter(range(10**9))

        def batch(n: int) -> list[tuple[str, bytes]]:
            return [(topics.inbound(f"c{i % 16}"), cbor2.dumps({"t": "call", "id": f"r{next(ids)}", "method": "incr"}))
                    for i in range(n)]

        for topic, payload in batch(200):
            receive(topic, payload)
        await rt.wait_idle()
        if CALLS:  # one round of CALLS requests, for instruction counts
            for topic, payload in batch(CALLS):
                receive(topic, payload)
            await rt.wait_idle()
            return
        best = float("inf")
        for _ in range(5):
            work, n = batch(4000), 4000
            before = sink.sent
            started = time.process_time()
            for topic, payload in work:
                receive(topic, payload)
            await rt.wait_idle()
            best = min(best, (time.process_time() - started) / n * 1e6)
            assert sink.sent - before == n, sink.sent - before
    import bridge

    print(f"{Path(bridge.__file__).parent.parent}: {best:.1f} us CPU per request (best of 5 x 4,000 requests)")


if __name__ == "__main__":
    asyncio.run(main())
