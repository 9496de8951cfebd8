#!/usr/bin/env python3
"""Lazy loading: start time and RSS of a bridge whose store holds many CAs, on mosquitto (a benchmark: nothing
asserts on timings).

    .venv/bin/python benchmarks/lazy.py [--cas 100000] [--active 10000] [--checkout DIR] [--extra '--max-resident 5000']

1. Writes ``--cas`` CAs k0..k<cas-1> straight into a fresh SQLite store, as ``ca-bridge create`` registers them
   (an empty state: on_init runs at their first load), or with ``--initialized`` a committed state {"n": 0}.
2. Starts mosquitto, then the bridge of ``--checkout`` (default: this one; give /work/main for "before") with the
   benchmark app (benchmarks/apps.py:Bench, a durable counter without pulses) and ``--pulse 0``.
3. From the moment the bridge process is spawned, a probe calls k0 every 10 ms (the same request id: the dedup
   record answers any repeat) until the first reply: "first reply" is that delay, and the RSS is read then.
4. Calls incr once on each of k0..k<active-1> (64 calls in flight), then reads the RSS once it settles.

The bridge runs from ``--checkout`` with that checkout's own virtualenv (DIR/.venv/bin/python -m bridge, cwd DIR).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from tests.procs import Mosquitto, rss_mb, settle_rss, spawn, stop  # noqa: E402

WINDOW = 64  # calls in flight during the active phase


def populate(db: Path, count: int, initialized: bool) -> None:
    """``count`` CAs k0.. in the store's schema: registered (empty state) or committed with {"n": 0}."""
    import cbor2

    from bridge.store.sqlite import SCHEMA

    state = cbor2.dumps({"n": 0}) if initialized else b""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        con.executescript(SCHEMA)
        con.execute("BEGIN")
        con.executemany("INSERT INTO ca (name, state) VALUES (?, ?)", ((f"k{i}", state) for i in range(count)))
        con.execute("COMMIT")
    finally:
        con.close()


class Caller:
    """One paho client: calls ``incr`` on CAs by name in session "bench" and collects the replies."""

    def __init__(self, port: int) -> None:
        import cbor2
        import paho.mqtt.client as mqtt

        self.cbor = cbor2
        self.replies: dict[str, float] = {}
        self.done = 0  # replies to the active phase's calls
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"lazy-bench-{os.getpid()}")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe("ca/+/session/bench", qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not subscribed.wait(10):
            raise TimeoutError("no SUBACK from mosquitto")

    def _on_message(self, _c: Any, _u: Any, m: Any) -> None:
        msg = self.cbor.loads(m.payload)
        if msg.get("t") == "reply":
            with self.cond:
                if msg["id"] not in self.replies and msg["id"].startswith("a"):
                    self.done += 1
                self.replies[msg["id"]] = time.monotonic()
                self.cond.notify_all()

    def send(self, ca: str, rid: str) -> None:
        msg = {"t": "call", "id": rid, "session": "bench", "method": "incr", "args": []}
        self.client.publish(f"ca/{ca}/in", self.cbor.dumps(msg), qos=1)

    def first_reply(self, ca: str, timeout: float) -> float:
        """Resend one call every 10 ms until it is answered; the monotonic time of the reply."""
        rid, deadline = "probe", time.monotonic() + timeout
        while True:
            self.send(ca, rid)
            with self.cond:
                if self.cond.wait_for(lambda: rid in self.replies, 0.01):
                    return self.replies[rid]
            if time.monotonic() > deadline:
                raise TimeoutError(f"no reply from {ca} in {timeout}s")

    def calls(self, names: list[str], timeout: float) -> float:
        """One call on each CA, WINDOW in flight; the seconds it took."""
        began, deadline = time.monotonic(), time.monotonic() + timeout
        sent = 0
        while True:
            with self.cond:
                if self.done >= len(names):
                    return time.monotonic() - began
                if sent - self.done >= WINDOW or sent >= len(names):
                    self.cond.wait(0.05)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{self.done} of {len(names)} calls answered in {timeout}s")
                    continue
            self.send(names[sent], f"a{sent}")
            sent += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def watch(proc: subprocess.Popen[bytes], listening: list[float]) -> None:
    """Note when the bridge prints its "listening" line (the end of its start-up), then drain its stdout."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        if not listening and "listening" in line and "waiting for" not in line:
            listening.append(time.monotonic())


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    db = tmp / "lazy.db"
    began = time.monotonic()
    populate(db, args.cas, args.initialized)
    print(f"wrote {args.cas} CAs in {time.monotonic() - began:.1f}s", flush=True)
    broker = Mosquitto(tmp, "max_queued_messages 100000\nmax_inflight_messages 0\n")
    broker.start()
    caller = bridge = None
    try:
        caller = Caller(broker.port)
        checkout = Path(args.checkout).resolve()
        cmd = [str(checkout / ".venv/bin/python"), "-m", "bridge", "run", f"{checkout}/benchmarks/apps.py:Bench",
               "--db", str(db), "--broker", f"mqtt://127.0.0.1:{broker.port}", "--pulse", "0",
               *shlex.split(args.extra)]
        log = open(tmp / "bridge.log", "wb")  # noqa: SIM115 (the child keeps its own descriptor)
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        bridge = spawn(cmd, cwd=checkout, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        listening: list[float] = []
        threading.Thread(target=watch, args=(bridge, listening), daemon=True).start()
        replied = caller.first_reply("k0", 120.0)
        first = replied - started
        rss_first = rss_mb(bridge.pid)
        rss_first_settled = settle_rss(bridge.pid)
        after = f", {replied - listening[0]:.3f}s after its 'listening' line" if listening else ""
        print(f"first reply {first:.3f}s after the bridge process was spawned{after}; RSS then {rss_first:.1f} MB "
              f"(settled {rss_first_settled:.1f} MB)", flush=True)
        took = caller.calls([f"k{i}" for i in range(args.active)], 600.0)
        rss_active = settle_rss(bridge.pid)
        print(f"{args.active} CAs called once each in {took:.1f}s ({args.active / took:.0f} calls/s); "
              f"RSS after {rss_active:.1f} MB", flush=True)
        lines = [line for line in (tmp / "bridge.log").read_text(errors="replace").splitlines()
                 if "loaded" in line or "Traceback" in line]
        for line in lines[:5]:
            print("   bridge log:", line[:160])
        return {"first_reply_s": first, "rss_first_mb": rss_first, "rss_first_settled_mb": rss_first_settled,
                "active_s": took, "rss_active_mb": rss_active}
    finally:
        if caller is not None:
            caller.close()
        if bridge is not None:
            stop(bridge)
        broker.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cas", type=int, default=100_000, help="CAs in the store (default 100000)")
    p.add_argument("--active", type=int, default=10_000, help="CAs called once each after the first reply")
    p.add_argument("--initialized", action="store_true", help="store committed CAs ({'n': 0}), not created ones")
    p.add_argument("--checkout", default=str(ROOT), help="the ca-bridge checkout to run (with its .venv)")
    p.add_argument("--extra", default="", help="more `ca-bridge run` options, e.g. '--max-resident 5000'")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="ca-bridge-lazy-") as tmp:
        run(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
