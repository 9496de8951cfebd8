"""Sustained load: hundreds of devices calling thousands of CAs and receiving notifications.

    .venv/bin/python tests/load/run_load.py --devices 200 --cas 2000 --duration 60 --broker mosquitto
    .venv/bin/python tests/load/run_load.py --duration 600 --restart-broker   # on-demand soak with a reconnect storm
    .venv/bin/python tests/load/run_load.py --devices 200 --duration 600 --own-ca  # fixed working set: flat memory

Every device is a real MQTT client (paho, driven by one asyncio loop). Each call `tick(token)` on a random CA
counts the token and notifies the calling device's session; devices ack notifications. At the end: every token
counted exactly once, every reply received once, every notification received, gap-free per (CA, session), no
duplicates after dedup by sequence number; the bridge's memory sampled throughout (flat is the goal).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import cbor2  # noqa: E402

from bridge.mqtt import BrokerURL, MqttLink  # noqa: E402
from tests.procs import BridgeProcess, Mosquitto, free_port, rss_mb, stored_states  # noqa: E402


@dataclass
class Sim:
    """One simulated device: its own session id, calls with retry by request id, notification bookkeeping."""

    name: str
    link: MqttLink | None = None
    waiting: dict[str, asyncio.Future] = field(default_factory=dict)
    replies: int = 0
    duplicate_replies: int = 0
    notes: dict[str, dict[int, str]] = field(default_factory=dict)  # ca -> seq -> token
    duplicate_notes: int = 0
    tokens: dict[str, str] = field(default_factory=dict)  # token -> ca
    answered: set[str] = field(default_factory=set)
    acked: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    busy: int = 0
    sync_answers: set[str] = field(default_factory=set)

    def on_message(self, topic: str, payload: bytes) -> None:
        ca = topic.split("/")[1]
        msg = cbor2.loads(payload)
        if msg["t"] == "reply":
            fut = self.waiting.pop(msg["id"], None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
            elif msg["id"] in self.answered:
                self.duplicate_replies += 1  # harmless (a retry raced its reply) but counted
        elif msg["t"] == "sync":
            self.sync_answers.add(ca)
        elif msg["t"] == "note":
            got = self.notes.setdefault(ca, {})
            seq, token = msg["seq"], msg["args"][0]
            if isinstance(token, int):  # a step notification carries the step number: same token as the call
                token = f"{self.name}-{token}"
            if seq in got:
                if got[seq] != token:
                    raise AssertionError(f"seq {seq} of {ca}/{self.name} carried two tokens")
                self.duplicate_notes += 1
            got[seq] = token


@dataclass
class Result:
    devices: int
    cas: int
    duration: float = 0.0
    calls: int = 0
    notifications: int = 0
    retries: int = 0
    busy: int = 0
    sync_answers: set[str] = field(default_factory=set)
    broker_restarts: int = 0
    rss_kb: list[int] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    def line(self) -> str:
        r = self.rss_kb
        rss = "/".join(str(r[int(q * (len(r) - 1))] // 1024) for q in (0, 0.25, 0.5, 0.75, 1)) + " MB" if r else "?"
        return (f"load: {self.devices} devices, {self.cas} CAs, {self.duration:.0f}s, {self.calls} calls "
                f"({self.calls / max(self.duration, 1e-9):.0f}/s), {self.notifications} notifications, "
                f"{self.retries} retries, {self.busy} busy, {self.broker_restarts} broker restarts, "
                f"bridge RSS at 0/25/50/75/100% of the run {rss}, anomalies={len(self.anomalies)}")


async def device_loop(sim: Sim, port: int, cas: int, stop_at: float, rng: random.Random, own: int | None) -> None:
    sim.link = MqttLink(BrokerURL("127.0.0.1", port), client_id=sim.name, on_message=sim.on_message,
                        subscriptions=[(f"ca/+/session/{sim.name}", 1)], backoff=(0.2, 2.0))
    async with sim.link:
        await sim.link.wait_connected(30)
        await asyncio.sleep(0.2)  # SUBACK
        count = 0
        while time.monotonic() < stop_at:
            count += 1
            ca = f"load{own if own is not None else rng.randrange(cas)}"
            token = f"{sim.name}-{count}"
            rid = token
            sim.tokens[token] = ca
            call = ["step", count] if own is not None else ["tick", token]  # own CA: bounded state
            payload = cbor2.dumps({"t": "call", "id": rid, "session": sim.name, "method": call[0], "args": call[1:]})
            while True:
                fut = asyncio.get_running_loop().create_future()
                sim.waiting[rid] = fut
                sim.link.publish(f"ca/{ca}/in", payload)
                try:
                    async with asyncio.timeout(5):
                        reply = await fut
                except TimeoutError:
                    sim.retries += 1
                    continue
                if "err" in reply and reply["err"]["kind"] in ("busy", "unavailable"):
                    sim.busy += 1
                    await asyncio.sleep(0.05)
                    continue
                break
            sim.answered.add(rid)
            sim.replies += 1
            if reply.get("ok") != 1:
                raise AssertionError(f"{token}: {reply}")

            if count % 10 == 0:  # cumulative acks, batched like a real device
                for ca_name, got in sim.notes.items():
                    top = _contiguous_top(got)
                    if top > sim.acked.get(ca_name, 0):
                        sim.acked[ca_name] = top
                        sim.link.publish(f"ca/{ca_name}/in", cbor2.dumps(
                            {"t": "ack", "session": sim.name, "seq": top}))
        # catch up like a device after a reconnect: sync the CAs whose notifications are missing, then wait
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            received = {tok for got in sim.notes.values() for tok in got.values()}
            behind = {ca for tok, ca in sim.tokens.items() if tok not in received}
            if not behind:
                break
            for ca_name in behind:
                sim.link.publish(f"ca/{ca_name}/in", cbor2.dumps(
                    {"t": "sync", "session": sim.name, "seq": _contiguous_top(sim.notes.get(ca_name, {}))}))
            await asyncio.sleep(2)


def _contiguous_top(got: dict[int, str]) -> int:
    top = 0
    while top + 1 in got:
        top += 1
    return top


async def run_async(devices: int, cas: int, duration: float, broker: str, seed: int, restart_broker: bool,
                    workdir: Path, own: bool = False) -> Result:
    rng = random.Random(seed)
    res = Result(devices, cas)
    mosq = Mosquitto(workdir) if broker == "mosquitto" else None
    if mosq:
        mosq.start()
    bridge = BridgeProcess("tests/apps.py:Counter", workdir / "load.db", broker_port=mosq.port if mosq else None,
                           extra=["--pulse", "0", "--max-sessions", "100000"])  # no GC: every notification must arrive
    if mosq is None:
        bridge.port = free_port()
    bridge.start()
    sims = [Sim(f"dev{i}") for i in range(devices)]
    started = time.monotonic()
    stop_at = started + duration
    try:
        tasks = [asyncio.create_task(device_loop(s, bridge.port, cas, stop_at, random.Random(rng.random()),
                                                 i if own else None))
                 for i, s in enumerate(sims)]
        restarted = False
        while not all(t.done() for t in tasks):
            await asyncio.sleep(1)
            if bridge.proc is not None:
                res.rss_kb.append(int(rss_mb(bridge.proc.pid) * 1024))
            if restart_broker and mosq and not restarted and time.monotonic() > started + duration / 2:
                mosq.stop()
                await asyncio.sleep(1)
                mosq.start()  # every device reconnects at once
                res.broker_restarts += 1
                restarted = True
        for t in tasks:
            t.result()
        res.duration = time.monotonic() - started
    finally:
        bridge.stop()
        if mosq:
            mosq.stop()
    _verify(sims, bridge, res)
    return res


def _verify(sims: list[Sim], bridge: BridgeProcess, res: Result) -> None:
    counted: dict[str, int] = {}
    for state in stored_states(bridge.db).values():  # the SQLite file and its redo log, as `ca-bridge inspect` reads
        decoded = cbor2.loads(state)
        for token, n in decoded.get("ticks", {}).items():
            counted[token] = counted.get(token, 0) + n
        for sid, last in decoded.get("last", {}).items():  # --own-ca: steps 1..last each ran once (else 2 or 3)
            for n in range(1, last + 1):
                counted[f"{sid}-{n}"] = counted.get(f"{sid}-{n}", 0) + 1
    for sim in sims:
        res.calls += sim.replies
        res.retries += sim.retries
        res.busy += sim.busy
        for token in sim.tokens:
            if counted.get(token) != 1:
                res.anomalies.append(f"{token} counted {counted.get(token)} times")
        received = {tok for got in sim.notes.values() for tok in got.values()}
        res.notifications += sum(len(g) for g in sim.notes.values())
        missing = set(sim.tokens) - received
        if missing:
            res.anomalies.append(f"{sim.name}: {len(missing)} notifications never arrived, e.g. {sorted(missing)[:3]}")
        for ca, got in sim.notes.items():
            if sorted(got) != list(range(1, len(got) + 1)):
                res.anomalies.append(f"{sim.name}@{ca}: sequence numbers have gaps")
    if len(counted) != sum(len(s.tokens) for s in sims):
        res.anomalies.append(f"{len(counted)} tokens counted, {sum(len(s.tokens) for s in sims)} sent")


def run(devices: int = 200, cas: int = 2000, duration: float = 30, broker: str = "mosquitto", seed: int = 1,
        restart_broker: bool = False, workdir: Path | None = None, own: bool = False) -> Result:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="load-"))
    return asyncio.run(run_async(devices, cas, duration, broker, seed, restart_broker, workdir, own))


def main() -> int:
    logging.getLogger("bridge.mqtt").setLevel(logging.ERROR)  # the devices' reconnect chatter
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--cas", type=int, default=2000)
    p.add_argument("--duration", type=float, default=30)
    p.add_argument("--broker", choices=["mosquitto", "amqtt"], default="mosquitto")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--restart-broker", action="store_true", help="restart mosquitto halfway (reconnect storm)")
    p.add_argument("--own-ca", action="store_true",
                   help="device i always calls CA i (a fixed working set: memory must stay flat)")
    a = p.parse_args()
    res = run(a.devices, a.cas, a.duration, a.broker, a.seed, a.restart_broker, own=a.own_ca)
    print(res.line())
    for x in res.anomalies[:20]:
        print("ANOMALY:", x)
    return 1 if res.anomalies else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
