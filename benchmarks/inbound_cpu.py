#!/usr/bin/env python3
"""CPU per request of the inbound path alone: recorded MQTT bytes (QoS 1 PUBLISHes of the yardstick's call, on 16
CAs' inbound topics) fed to the link's ``_Wire.data_received``, framed, their PUBACKs queued, the topic parsed, the
payload decoded and validated by the ingress, up to the request handed to ``Runtime.submit`` (a stub that only
counts). ``--per-read K`` puts K packets in each read (default 8, about what a read holds at 16 devices; 1 is the
one-device case). On uvloop when installed, as the bridge. Best of 5 rounds of 20,000 requests.

    .venv/bin/python benchmarks/inbound_cpu.py [SOURCE_DIR] [--per-read K]     # SOURCE_DIR: another checkout

For instruction counts (deterministic), run callgrind over two sizes and take the difference per request:

    for dry in "" --dry; do for n in 2000 10000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/inbound_cpu.py [SOURCE_DIR] --calls $n $dry 2>&1 | grep Collected; done; done

(the per-request difference of the first pair minus that of the ``--dry`` pair: building the reads and the loop
turns cancel out).
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ARGS = sys.argv[1:]


def _option(name: str, default: int) -> int:
    if name in ARGS:
        i = ARGS.index(name)
        value = int(ARGS[i + 1])
        del ARGS[i : i + 2]
        return value
    return default


CALLS = _option("--calls", 0)
DRY = "--dry" in ARGS  # everything but the reads fed to the link: subtract it from a --calls run
if DRY:
    ARGS.remove("--dry")
PER_READ = _option("--per-read", 8)
sys.path.insert(0, ARGS[0] if ARGS else str(ROOT))

import cbor2  # noqa: E402

from bridge.ingress import Ingress  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402
from bridge.mqtt import BrokerURL, MqttLink, _Wire, packet  # noqa: E402
from bridge.protocol import Topics  # noqa: E402


class _Router:
    cluster = None


class _Admission:
    def refuse(self, ca: str, exc: Exception, reply: Any) -> None:
        raise AssertionError(f"refused: {exc}")


class _Runtime:
    """What the ingress takes from a runtime; ``submit`` only counts."""

    def __init__(self) -> None:
        self.router = _Router()
        self.admission = _Admission()
        self.metrics = Metrics()
        self.submitted = 0

    def submit(self, ca: str, req: Any, reply: Any = None, hops: int = 0) -> None:
        self.submitted += 1


def reads(n: int, start: int) -> list[bytes]:
    """``n`` QoS 1 PUBLISHes of the yardstick's call (cbor-x writes the same map), ``PER_READ`` to a read."""
    packets = []
    for k in range(start, start + n):
        dev = k % 16
        topic = f"ca/benchx{dev}/in".encode()
        payload = cbor2.dumps({"t": "call", "id": f"bench-default-{k}", "session": "default", "method": "incr",
                               "args": []})
        pid = k % 65535 + 1
        packets.append(packet(0x32, len(topic).to_bytes(2, "big") + topic + pid.to_bytes(2, "big") + payload))
    return [b"".join(packets[i : i + PER_READ]) for i in range(0, n, PER_READ)]


async def main() -> None:
    rt = _Runtime()
    ingress = Ingress(rt, Topics("ca"), 65536)  # type: ignore[arg-type]
    link = MqttLink(BrokerURL("127.0.0.1", 1), client_id="bench", on_message=ingress.receive, subscriptions=[])
    wire = _Wire(link)
    link._wire = wire  # no transport: what the link writes is dropped

    async def run(chunks: list[bytes]) -> None:
        feed = (lambda chunk: None) if DRY else wire.data_received
        for chunk in chunks:
            feed(chunk)
            await asyncio.sleep(0)  # a loop turn per read, as on a socket (the held PUBACKs go out)

    counter = iter(range(0, 10**9, 100_000))
    await run(reads(400, next(counter)))
    if DRY:
        rt.submitted = 400
    if CALLS:  # one round, for instruction counts
        await run(reads(CALLS, next(counter)))
        assert rt.submitted == 400 + (0 if DRY else CALLS), rt.submitted
        return
    best = float("inf")
    n = 20_000
    for _ in range(5):
        chunks = reads(n, next(counter))
        before = rt.submitted
        started = time.process_time()
        await run(chunks)
        best = min(best, (time.process_time() - started) / n * 1e6)
        assert rt.submitted - before == n, rt.submitted - before
    import bridge

    print(f"{Path(bridge.__file__).parent.parent}: {best:.2f} us CPU per request, {PER_READ} per read "
          f"(best of 5 x {n:,})")


if __name__ == "__main__":
    try:  # the bridge's default loop (ca-bridge run --loop auto)
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
