#!/usr/bin/env python3
"""CPU per outbound message of the bridge's MQTT side alone: ``Bridge.send`` (the runtime's sink) publishing to
100 session topics of one CA at QoS 1 through a real :class:`bridge.mqtt.MqttLink` whose transport only takes the
bytes, the loop turn's write (``_flush``), then the broker's PUBACK of each publish (``_packet``). This is the
per-notification publish and its ack handling of a fan-out, and the reply's of every call; best of 5 rounds.

    .venv/bin/python benchmarks/outbound_cpu.py [SOURCE_DIR]     # SOURCE_DIR: another checkout to compare

For instruction counts (deterministic), run callgrind over two sizes and take the difference per message:

    for n in 200 1000; do valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python benchmarks/outbound_cpu.py [SOURCE_DIR] --rounds $n 2>&1 | grep Collected; done
"""

from __future__ import annotations

import asyncio
import sys
import time
import types
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 0
ARGS = [a for i, a in enumerate(sys.argv[1:], 1) if not a.startswith("--") and not sys.argv[i - 1].startswith("--")]
sys.path.insert(0, ARGS[0] if ARGS else str(ROOT))

import cbor2  # noqa: E402

from bridge.mqtt import BrokerURL, MqttLink  # noqa: E402
from bridge.protocol import Topics  # noqa: E402
from bridge.service import Bridge  # noqa: E402

SESSIONS = 100


class Transport:
    """Takes what the link writes."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False


def rounds(link: MqttLink, send: Any, n: int) -> None:
    sessions = [f"d{i}" for i in range(SESSIONS)]
    payload = cbor2.dumps({"t": "note", "seq": 1234, "args": [1733320000.123, 17]})
    for _ in range(n):
        for sid in sessions:
            send("fan", sid, payload)
        link._flush()
        for pid in list(link._inflight):
            link._packet(0x40, pid.to_bytes(2, "big"))  # the broker's PUBACK


async def main() -> None:
    link = MqttLink(BrokerURL("127.0.0.1", 1), client_id="bench", on_message=lambda t, p: None, subscriptions=[])
    link._wire = types.SimpleNamespace(transport=Transport())  # type: ignore[assignment]
    link.connected.set()
    fake = types.SimpleNamespace(link=link, topics=Topics("ca"), _session_topics={})
    if hasattr(Bridge, "_session_topic"):
        fake._session_topic = Bridge._session_topic.__get__(fake)
    send = Bridge.send.__get__(fake)
    rounds(link, send, 20)
    if ROUNDS:
        rounds(link, send, ROUNDS)
        return
    best = float("inf")
    for _ in range(5):
        started = time.process_time()
        rounds(link, send, 200)
        best = min(best, (time.process_time() - started) / (200 * SESSIONS) * 1e6)
    import bridge

    print(f"{Path(bridge.__file__).parent.parent}: {best:.2f} us CPU per message (send, write, PUBACK)")


if __name__ == "__main__":
    asyncio.run(main())
