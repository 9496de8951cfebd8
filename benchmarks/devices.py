#!/usr/bin/env python3
"""The device-layer benchmark: N simulated devices, each changing one to_cloud value per second, on mosquitto and a
durable SQLite store (synchronous FULL); the sync latency (p50, p99) at each N, and the largest N whose sync p99
stays below 100 ms (issue 18: target >= 2,000 devices on this 2-core machine).

    .venv/bin/python benchmarks/devices.py [--steps 250,500,1000,2000,3000] [--duration 20] [--warmup 5]
    .venv/bin/python benchmarks/devices.py --quick           # 250,500,1000: 8 s windows

Each simulated device is one MQTT connection speaking the device wire protocol directly (docs/PROTOCOL.md,
"Devices"): CONNECT, SUBSCRIBE to its `iot` session, one `dstart`, then one `dsync` a second carrying the new value
(`tb`/`tv` versions, `fv`), each on its own phase within the second, at most one in flight (a tick that finds the
previous sync unanswered is skipped and counted). The devices live in a few load-generator processes, each a lean
asyncio program (this file, `_worker`), not firmware_client.Device objects. The latency of a sync is from its
publish to its answer. A step is sustained when its p99 is below 100 ms, every sync sent in the window was
answered (no errors, no timeouts) and fewer than 1% of the ticks were skipped. The steps run up until the first
one that is not sustained. The bridge, mosquitto and the generators share the machine's cores: the report gives
each one's CPU in the window and what the machine's other processes used (other sessions' work).
Nothing asserts on timings; every process started is stopped at the end (also on Ctrl-C or an error).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [p for p in (str(HERE), str(ROOT)) if p not in sys.path]

from loadgen import Quiet, fmt, log, options, pct, session  # noqa: E402

from bridge.mqtt import packet, prefixed  # noqa: E402
from tests.procs import PYTHON, BridgeProcess, Mosquitto, cpu_seconds, machine_cpu, spawn, stop  # noqa: E402

APP = f"{HERE / 'apps.py'}:Sensors"
MOSQUITTO_CONF = "max_queued_messages 100000\nmax_inflight_messages 0\nlog_type error\nlog_type warning\n"
P99_MS = 100.0
SKIP_MAX = 0.01  # skipped ticks / ticks
TIMEOUT = 10.0  # a sync unanswered this long counts as a timeout


# -- the load generator (one process: ``devices.py _worker PORT FIRST COUNT``) -----------------------------------------


class Sim(asyncio.Protocol):
    """One simulated device: an MQTT 3.1.1 connection (QoS 1 both ways) and the device side of dstart/dsync."""

    def __init__(self, n: int, stats: dict[str, Any]) -> None:
        import cbor2

        self.dumps, self.loads = cbor2.dumps, cbor2.loads
        self.ca = f"dev{n}"
        self.topic_in = f"ca/{self.ca}/in".encode()
        self.stats = stats
        self.buf = b""
        self.pid = 0
        self.count = 0
        self.transport: asyncio.Transport | None = None
        self.connack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.suback: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting: dict[str, tuple[float, asyncio.Future[Any]]] = {}  # request id -> (sent at, answer)
        self.boot = self.tv = self.fv = 0

    # MQTT
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        body = prefixed(b"MQTT") + bytes([4, 0x02]) + (300).to_bytes(2, "big") + prefixed(f"bench-{self.ca}".encode())
        transport.write(packet(0x10, body))  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats["dropped"] += 1
        for _, fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data
        while len(buf) >= 2:
            n, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    self.buf = buf
                    return
                byte = buf[i]
                n += (byte & 0x7F) * mult
                mult *= 128
                i += 1
                if not byte & 0x80:
                    break
            if len(buf) < i + n:
                break
            head, body, buf = buf[0], buf[i:i + n], buf[i + n:]
            self.on_packet(head, body)
        self.buf = buf

    def on_packet(self, head: int, body: bytes) -> None:
        kind = head >> 4
        if kind == 3:  # PUBLISH
            tlen = int.from_bytes(body[:2], "big")
            at = 2 + tlen
            if head & 0x06:  # QoS 1: acknowledge
                assert self.transport is not None
                self.transport.write(packet(0x40, body[at:at + 2]))
                at += 2
            self.on_message(body[at:])
        elif kind == 2 and not self.connack.done():
            if body[1] == 0:
                self.connack.set_result(None)
            else:
                self.connack.set_exception(ConnectionError(f"CONNACK {body[1]}"))
        elif kind == 9 and not self.suback.done():
            self.suback.set_result(None)

    def publish(self, payload: bytes) -> None:
        assert self.transport is not None
        self.pid = self.pid % 65535 + 1
        self.transport.write(packet(0x32, prefixed(self.topic_in) + self.pid.to_bytes(2, "big") + payload))

    # the device protocol
    def on_message(self, payload: bytes) -> None:
        now = time.monotonic()
        try:
            msg = self.loads(payload)
        except Exception:
            self.stats["undecodable"] += 1
            return
        if type(msg) is not dict or msg.get("t") != "reply":
            return  # a poke: none expected here
        entry = self.waiting.pop(msg.get("id"), None)
        if entry is None:
            self.stats["stale"] += 1
            return
        sent, fut = entry
        if not fut.done():
            fut.set_result((now - sent, msg))

    async def request(self, msg: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        self.count += 1
        rid = f"{self.ca}-{self.count}"
        msg["id"] = rid
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting[rid] = (time.monotonic(), fut)
        self.publish(self.dumps(msg))
        try:
            return await asyncio.wait_for(fut, TIMEOUT)
        finally:
            self.waiting.pop(rid, None)

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_connection(lambda: self, "127.0.0.1", port)
        await asyncio.wait_for(self.connack, 30)
        topic = f"ca/{self.ca}/session/iot".encode()
        assert self.transport is not None
        self.transport.write(packet(0x82, (1).to_bytes(2, "big") + prefixed(topic) + b"\x01"))
        await asyncio.wait_for(self.suback, 30)
        _, reply = await self.request({"t": "dstart", "session": "iot", "cmds": {"blink": 0}})
        if "ok" not in reply:
            raise RuntimeError(f"dstart of {self.ca} answered {reply.get('err')}")
        ok = reply["ok"]
        self.boot, self.tv, self.fv = ok["boot"], ok["tv"], ok["fv"]

    async def run(self, t0: float, start: float, end: float, lat: list[float]) -> None:
        """One dsync a second (on this device's own phase) until ``end``; latencies of those sent in the window."""
        st = self.stats
        tick = t0 + random.random()
        value = 0
        inflight: asyncio.Task[Any] | None = None
        while tick < end:
            await asyncio.sleep(max(0.0, tick - time.monotonic()))
            tick += 1.0
            if inflight is not None and not inflight.done():
                st["skipped"] += 1
                continue
            value += 1
            inflight = asyncio.create_task(self.sync(value, start, end, lat))
            st["ticks"] += 1
        if inflight is not None:
            await asyncio.wait([inflight], timeout=TIMEOUT + 1)

    async def sync(self, value: int, start: float, end: float, lat: list[float]) -> None:
        st = self.stats
        sent = time.monotonic()
        counted = start <= sent < end
        msg = {"t": "dsync", "session": "iot", "boot": self.boot, "tb": self.tv, "tv": self.tv + 1,
               "d": {"v": value}, "fv": self.fv}
        st["sent"] += counted
        try:
            ms, reply = await self.request(msg)
        except TimeoutError:
            st["timeouts"] += counted
            return
        except ConnectionError:
            st["errors"] += counted
            return
        if "ok" not in reply:
            st["errors"] += counted
            st["first_error"] = st["first_error"] or reply.get("err")
            return
        ok = reply["ok"]
        self.tv, self.fv = ok.get("tv", self.tv + 1), ok.get("fv", self.fv)
        if ok.get("resync"):
            st["resyncs"] += 1
        if counted:
            st["answered"] += 1
            lat.append(round(ms * 1000, 3))


async def worker(port: int, first: int, count: int) -> None:
    stats = {k: 0 for k in ("sent", "answered", "ticks", "skipped", "timeouts", "errors", "resyncs", "stale",
                            "undecodable", "dropped")}
    stats["first_error"] = None
    sims = [Sim(n, stats) for n in range(first, first + count)]
    began = time.monotonic()
    gate = asyncio.Semaphore(64)  # devices connecting and starting at once

    async def start(s: Sim) -> None:
        async with gate:
            await s.start(port)

    await asyncio.gather(*(start(s) for s in sims))
    print(json.dumps({"ready": True, "start_s": round(time.monotonic() - began, 2)}), flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    go = json.loads(line or '{"abort": true}')
    if go.get("abort"):
        return
    lat: list[float] = []
    await asyncio.gather(*(s.run(go["t0"], go["start"], go["end"], lat) for s in sims))
    for s in sims:
        if s.transport is not None:
            s.transport.write(b"\xe0\x00")  # DISCONNECT
            s.transport.close()
    print(json.dumps({**stats, "lat": lat}), flush=True)


# -- the orchestrator -----------------------------------------------------------------------------------------------


def read_json(proc: subprocess.Popen[Any], timeout: float) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"a load generator exited with {proc.wait()}")
        if line.startswith("{"):
            return dict(json.loads(line))
    raise TimeoutError("a load generator did not answer")


def step(n: int, procs: int, port: int, pids: dict[str, int], warmup: float, duration: float,
         quiet: Quiet) -> dict[str, Any]:
    """Run ``n`` devices (dev0 .. dev<n-1>) for warmup + duration seconds; one row of the report."""
    procs = max(1, min(procs, n // 50 or 1))
    shares = [(i * n // procs, (i + 1) * n // procs - i * n // procs) for i in range(procs)]
    workers = [spawn([PYTHON, __file__, "_worker", str(port), str(a), str(c)], session=True, stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True) for a, c in shares]
    try:
        began = time.monotonic()
        readies = [read_json(w, 600) for w in workers]
        log(f"  {n} devices connected and started in {time.monotonic() - began:.1f}s "
            f"({', '.join(str(r['start_s']) for r in readies)} s per generator)")
        busy_before = quiet()
        t0 = time.monotonic() + 0.2
        go = {"t0": t0, "start": t0 + warmup, "end": t0 + warmup + duration}
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(json.dumps(go) + "\n")
            w.stdin.flush()
        probes = {**{k: (lambda p=p: cpu_seconds(p)) for k, p in pids.items()},
                  "load": lambda: sum(cpu_seconds(w.pid) for w in workers), "machine": lambda: machine_cpu()[0]}
        time.sleep(max(0.0, go["start"] - time.monotonic()))
        cpu0, w0 = {k: f() for k, f in probes.items()}, time.monotonic()
        time.sleep(max(0.0, go["end"] - time.monotonic()))
        cpu1, w1 = {k: f() for k, f in probes.items()}, time.monotonic()
        results = [read_json(w, TIMEOUT + 60) for w in workers]
    finally:
        for w in workers:
            stop(w, timeout=10)
    merged: dict[str, Any] = {k: sum(r[k] for r in results) for k in results[0] if k not in ("lat", "first_error")}
    merged["first_error"] = next((r["first_error"] for r in results if r["first_error"]), None)
    lat = [x for r in results for x in r["lat"]]
    cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
    cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
    row = {"n": n, "rate": round(merged["answered"] / duration, 1), "p50": pct(lat, 0.50), "p99": pct(lat, 0.99),
           "max": max(lat) if lat else None, "busy_before": busy_before, "load_procs": procs,
           "cpu_pct": {k: round(100 * v / (w1 - w0), 1) for k, v in cpu.items()}, **merged}
    if merged["answered"]:
        row["bridge_us_per_sync"] = round(1e6 * cpu["bridge"] / merged["answered"], 1)
    row["sustained"] = bool(lat) and row["p99"] < P99_MS and merged["answered"] == merged["sent"] \
        and not merged["errors"] and not merged["timeouts"] and merged["skipped"] <= SKIP_MAX * max(1, merged["ticks"])
    log(f"  N={n:<5} {row['rate']:7.0f} syncs/s  p50 {fmt(row['p50'])} ms  p99 {fmt(row['p99'])} ms  "
        f"skipped {merged['skipped']} timeouts {merged['timeouts']} errors {merged['errors']}  cpu: "
        + " ".join(f"{k} {v:.0f}%" for k, v in row["cpu_pct"].items())
        + ("" if row["sustained"] else "  NOT sustained"))
    return row


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    best = max((r["n"] for r in rows if r["sustained"]), default=None)
    out = [f"device syncs on mosquitto + SQLite (synchronous FULL): each device changes one to_cloud value a second; "
           f"{meta['warmup']:.0f} s warm-up, {meta['duration']:.0f} s measured per step",
           f"{'devices':>7} {'syncs/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'skipped':>7} {'bridge us':>9}"
           f"  CPU % of one core (bridge, broker, load generators, other processes)  sustained"]
    for r in rows:
        c = r["cpu_pct"]
        out.append(f"{r['n']:>7} {r['rate']:>8.0f} {fmt(r['p50']):>7} {fmt(r['p99']):>7} {fmt(r['max']):>7} "
                   f"{r['skipped']:>7} {r.get('bridge_us_per_sync', 0):>9.0f}  {c['bridge']:.0f} / {c['broker']:.0f} / "
                   f"{c['load']:.0f} / {c['others']:.0f}  {'yes' if r['sustained'] else 'NO'}")
    out.append(f"largest N sustained with sync p99 < {P99_MS:.0f} ms: {best if best is not None else 'none'}")
    return "\n".join(out)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        job = worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        try:
            import uvloop  # as the bridge: less of the shared CPU for the generator
        except ImportError:
            asyncio.run(job)
        else:
            uvloop.run(job)
        return 0
    p = options(__doc__ or "", "devices", "steps 250,500,1000 with 8 s windows", "20", "5")
    p.add_argument("--steps", help="device counts, in order (default 250,500,1000,2000,3000,4000)")
    p.add_argument("--procs", type=int, default=2, help="load-generator processes (default 2)")
    p.add_argument("--all-steps", action="store_true", help="go on after a step that is not sustained")
    args = p.parse_args()
    steps = [int(x) for x in (args.steps or ("250,500,1000" if args.quick else "250,500,1000,2000,3000,4000"))
             .split(",")]
    duration = args.duration or (8.0 if args.quick else 20.0)
    warmup = args.warmup or (3.0 if args.quick else 5.0)

    def body(tmp: Path) -> tuple[str, dict[str, Any]] | int:
        quiet = Quiet(args.quiet_threshold, args.quiet_wait, 120.0, log)
        mq = Mosquitto(tmp, MOSQUITTO_CONF, log=True).start()
        assert mq.proc is not None
        b = BridgeProcess(APP, tmp / "devices.db", broker_port=mq.port, log_level="WARNING",
                          extra=["--pulse", "0", "--synchronous", "FULL", "--client-id", f"bench-dev-{os.getpid()}"])
        b.start(timeout=120)
        log(f"bridge {b.pid} on mosquitto {mq.port}, store {b.db}")
        rows = []
        for n in steps:
            rows.append(step(n, args.procs, mq.port, {"bridge": b.pid, "broker": mq.proc.pid}, warmup, duration,
                             quiet))
            if not rows[-1]["sustained"] and not args.all_steps:
                break
        b.stop()
        mq.stop()
        meta = {"warmup": warmup, "duration": duration, "steps": steps, "procs": args.procs}
        return report(rows, meta), {"meta": meta, "rows": rows}

    return session(args, body)


if __name__ == "__main__":
    sys.exit(main())
