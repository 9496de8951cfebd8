"""The bridge's MQTT link reconnects with backoff and jitter (README, "Broker loss").

The delay sequence is checked as a unit (bridge.mqtt.backoff_delays with an injected random source); then a real
link, whose random source is seeded, is shown to wait those delays between its attempts against a broker that drops
every connection, and to reconnect, re-subscribe and deliver what was published meanwhile once a real mosquitto
listens on that port, again after mosquitto restarts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re

import bridge.mqtt
from bridge.mqtt import BrokerURL, MqttLink, backoff_delays
from tests.conftest import Mosquitto


def test_delays_double_from_the_first_up_to_the_cap_each_scaled_by_the_jitter():
    asked: list[tuple[float, float]] = []
    factors = iter([0.5, 1.5, 1.0, 1.0, 1.0, 0.75])

    def uniform(lo: float, hi: float) -> float:
        asked.append((lo, hi))
        return next(factors)

    waits = list(itertools.islice(backoff_delays(0.25, 2.0, uniform=uniform), 6))
    assert waits == [0.125, 0.75, 1.0, 2.0, 2.0, 1.5]  # 0.25, 0.5, 1, 2, then capped at 2, times the factors
    assert asked == [(0.5, 1.5)] * 6


def test_jitter_spreads_the_waits_of_bridges_that_lost_the_same_broker():
    firsts = [next(backoff_delays(1.0, 30.0, uniform=random.Random(seed).uniform)) for seed in range(200)]
    assert all(0.5 <= w <= 1.5 for w in firsts)
    assert len({round(w, 3) for w in firsts}) > 150  # not in lockstep
    assert min(firsts) < 0.6 and max(firsts) > 1.4  # the whole range is used
    # with the default random source too
    drawn = [next(backoff_delays(1.0, 30.0)) for _ in range(200)]
    assert all(0.5 <= w <= 1.5 for w in drawn) and len(set(drawn)) > 150


async def _dropping_broker(port: int, attempts: list[float]) -> asyncio.Server:
    """Accepts TCP on ``port`` and closes each connection at once (no CONNACK), noting when each attempt came."""
    loop = asyncio.get_running_loop()

    async def drop(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        attempts.append(loop.time())
        writer.close()

    return await asyncio.start_server(drop, "127.0.0.1", port)


async def _wait(pred, what: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_the_link_waits_out_its_backoff_then_reconnects_resubscribes_and_delivers(tmp_path, monkeypatch,
                                                                                        caplog):
    seed, first, cap, connect_timeout = 7, 0.05, 0.4, 5.0
    monkeypatch.setattr(bridge.mqtt, "random", random.Random(seed))  # the link's jitter, made repeatable
    expected = list(itertools.islice(backoff_delays(first, cap, uniform=random.Random(seed).uniform), 6))
    broker = Mosquitto(tmp_path)
    attempts: list[float] = []
    got: list[tuple[str, bytes]] = []
    dropping = await _dropping_broker(broker.port, attempts)
    caplog.set_level(logging.INFO, logger="bridge.mqtt")
    link = MqttLink(BrokerURL("127.0.0.1", broker.port), client_id="backoff-test",
                    on_message=lambda t, p: got.append((t, p)), subscriptions=[("t/#", 1)],
                    backoff=(first, cap), connect_timeout=connect_timeout, keepalive=5)
    try:
        async with link:
            link.publish("t/away", b"published while the broker was away")
            await _wait(lambda: len(attempts) >= 6, "six connection attempts", 30)
            dropping.close()
            await dropping.wait_closed()
            # each attempt came no sooner than its backoff wait after the previous one, and the waits logged are
            # the seeded sequence: 0.05 doubling to the 0.4 cap, jittered
            logged = [float(w) for w in re.findall(r"retrying in ([0-9.]+)s", caplog.text)]
            assert logged[:5] == [round(w, 2) for w in expected[:5]], (logged, expected)
            gaps = [b - a for a, b in itertools.pairwise(attempts[:6])]
            assert all(gap >= wait * 0.9 for gap, wait in zip(gaps, expected, strict=False)), (gaps, expected)
            assert not link.connected.is_set() and link.metrics.mqtt_connects == 0
            # a real broker appears on that port: the link connects within its (capped) backoff, re-subscribes,
            # and sends what was published while it was away
            await asyncio.to_thread(broker.start)
            assert await link.wait_connected(cap * 1.5 + connect_timeout + 10)
            await _wait(lambda: (("t/away", b"published while the broker was away") in got), "the queued publish", 15)
            # the broker restarts: the link notices, reconnects, subscribes again and delivers again
            await asyncio.to_thread(broker.stop)
            await _wait(lambda: not link.connected.is_set(), "the link to notice the broker is gone", 15)
            link.publish("t/again", b"after the restart")
            await asyncio.to_thread(broker.start)
            assert await link.wait_connected(cap * 1.5 + connect_timeout + 10)
            await _wait(lambda: ("t/again", b"after the restart") in got, "the publish after the restart", 15)
            assert link.metrics.mqtt_connects == 2
            assert "lost the broker connection; reconnecting" in caplog.text
    finally:
        dropping.close()
        broker.stop()
