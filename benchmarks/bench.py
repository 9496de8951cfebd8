#!/usr/bin/env python3
"""Benchmark of the ca-bridge against a plain paho echo service, on mosquitto and on the embedded amqtt broker.

    .venv/bin/python benchmarks/bench.py [--quick] [--broker mosquitto|amqtt|both] [--out benchmarks/results/bench]
    .venv/bin/python benchmarks/bench.py --profile py-spy|cprofile [--profile-out /tmp/profile]

One run measures, on the same broker:

1. baseline: a plain paho echo service (its own process) driven by N closed-loop clients (round trips/s, p50/p99);
2. the bridge's durable ``incr`` driven the same way, N clients on N CAs and N clients on one shared CA;
3. notification fan-out: one call notifies 100 sessions of one CA, each watched by its own device;
4. scale: start-up time and RSS with 0/1k/10k/100k CAs in the store; calls/s with 10k active CAs;
5. durability: SQLite synchronous FULL (default) vs NORMAL.

Every client is a paho client (TCP_NODELAY set in on_connect) sending ~60-byte CBOR requests one at a time; the
clients are spread over several load-generator processes, each driving its clients from one selector loop.
Every process the script starts is stopped at the end (also on Ctrl-C or an error). Nothing here asserts on
timings: it prints numbers and ratios, writes ``<out>.json`` and draws ``<out>.png`` (needs matplotlib).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import queue
import random
import selectors
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
PY = sys.executable
APP = f"{HERE / 'apps.py'}:Bench"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
LOAD_PROCS = 4  # load-generator processes (clients are spread over min(N, LOAD_PROCS) of them)
FANOUT = 100  # sessions notified per fan-out call

# Real Caf.js on this kind of machine (shared/reference/field-notes.md), its best config (1 ms coalescing).
CAFJS = {
    ("percA", 1): (556, 1.7, 4.3),
    ("percA", 16): (3654, 4.1, 9.7),
    ("shared", 16): (720, 21.7, 33.9),
}
CAFJS_DEFAULT = {
    ("percA", 1): (98, 10.1, 14.9),
    ("percA", 16): (1533, 10.2, 19.5),
    ("shared", 16): (95, 162.0, 176.0),
}

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ======================================================================================================
# Load-generator side (``bench.py _worker``): paho clients driven by one selector loop, jobs over stdin/stdout
# ======================================================================================================


def _paho():
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    return paho, CallbackAPIVersion


class Conn:
    """One paho client whose socket is driven by the worker's selector (no paho thread)."""

    def __init__(self, sel: selectors.BaseSelector, cid: str, port: int, subs: list[str], on_message: Any) -> None:
        paho, api = _paho()
        self.sel = sel
        self.subs = subs
        self.subscribed = not subs
        self.alive = True
        self.writing = False
        c = paho.Client(api.VERSION2, client_id=cid, clean_session=True, protocol=paho.MQTTv311)
        c.max_inflight_messages_set(1000)
        c.on_connect = self._on_connect
        c.on_subscribe = self._on_subscribe
        c.on_message = on_message
        self.client = c
        c.connect("127.0.0.1", port, keepalive=300)
        self.fd = c.socket().fileno()
        sel.register(self.fd, selectors.EVENT_READ, self)

    def _on_connect(self, client: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        sock = client.socket()
        if sock is not None:  # paho never sets it; with Nagle on, request/response stalls ~40 ms
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.subs:
            client.subscribe([(t, 1) for t in self.subs])

    def _on_subscribe(self, *_a: Any) -> None:
        self.subscribed = True

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, 1)
        self.flush()

    def readable(self) -> None:
        rc = self.client.loop_read()
        if rc != 0:
            self.lost()

    def flush(self) -> None:
        if not self.alive:
            return
        c = self.client
        if c.want_write():
            if c.loop_write() != 0:
                self.lost()
                return
        want = c.want_write()
        if want != self.writing:
            self.writing = want
            self.sel.modify(self.fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), self)

    def lost(self) -> None:
        if self.alive:
            self.alive = False
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.fd)

    def close(self) -> None:
        if self.alive:
            with contextlib.suppress(Exception):
                self.client.disconnect()
                self.client.loop_write()
            self.lost()
        with contextlib.suppress(Exception):
            sock = self.client.socket()
            if sock is not None:
                sock.close()


class Window:
    def __init__(self) -> None:
        self.t0 = self.start = self.end = float("inf")


class Stats:
    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.first_error: Any = None
        self.lat: list[float] = []
        self.notes = 0
        self.note_lat: list[float] = []
        self.stale = 0
        self.lost = 0


class RRClient:
    """Closed loop: one request outstanding; the next request leaves when the reply arrives."""

    def __init__(self, spec: dict[str, Any], port: int, sel: selectors.BaseSelector, win: Window, st: Stats) -> None:
        import cbor2

        self.dumps, self.loads = cbor2.dumps, cbor2.loads
        self.win, self.st = win, st
        self.tag = os.urandom(4).hex()
        self.n = 0
        self.rid: str | None = None
        self.t_sent = 0.0
        self.session = spec.get("session", "default")
        self.method = spec.get("method", "incr")
        self.args = list(spec.get("args", []))
        self.stamp = bool(spec.get("stamp"))
        self.pub = spec["pub"]  # may contain {ca}
        self.ca = spec.get("ca")
        self.ca_count = spec.get("ca_count")  # choose a random CA k0 .. k<ca_count-1> per request
        self.rng = random.Random(self.tag)
        self.conn = Conn(sel, spec["cid"], port, [spec["sub"]], self.on_message)

    def send(self) -> None:
        self.n += 1
        rid = f"{self.tag}-{self.n}"
        args = [*self.args, time.monotonic()] if self.stamp else self.args
        payload = self.dumps({"t": "call", "id": rid, "session": self.session, "method": self.method, "args": args})
        ca = f"k{self.rng.randrange(self.ca_count)}" if self.ca_count else self.ca
        self.rid = rid
        self.t_sent = time.monotonic()
        self.conn.publish(self.pub.format(ca=ca), payload)

    def on_message(self, _c: Any, _u: Any, m: Any) -> None:
        now = time.monotonic()
        try:
            msg = self.loads(m.payload)
        except Exception:
            self.st.stale += 1
            return
        if type(msg) is not dict or msg.get("id") != self.rid:
            self.st.stale += 1
            return
        self.rid = None
        win, st = self.win, self.st
        if win.start <= now < win.end:
            st.count += 1
            st.lat.append(round((now - self.t_sent) * 1000, 4))
            if "err" in msg:
                st.errors += 1
                st.first_error = st.first_error or msg["err"]
        if now < win.end:
            self.send()

    @property
    def outstanding(self) -> bool:
        return self.rid is not None and self.conn.alive


class DevClient:
    """A device watching one session: counts notifications, measures their latency, acks every ``ack_every``."""

    def __init__(self, spec: dict[str, Any], port: int, sel: selectors.BaseSelector, win: Window, st: Stats) -> None:
        import cbor2

        self.dumps, self.loads = cbor2.dumps, cbor2.loads
        self.win, self.st = win, st
        self.session = spec["session"]
        self.ack_topic = spec["ack_topic"]
        self.ack_every = spec.get("ack_every", 10)
        self.last_msg = 0.0
        self.conn = Conn(sel, spec["cid"], port, [spec["sub"]], self.on_message)

    def on_message(self, _c: Any, _u: Any, m: Any) -> None:
        now = time.monotonic()
        self.last_msg = now
        msg = self.loads(m.payload)
        if type(msg) is not dict or msg.get("t") != "note":
            return
        if self.win.start <= now < self.win.end:
            self.st.notes += 1
            self.st.note_lat.append(round((now - msg["args"][0]) * 1000, 4))
        if msg["seq"] % self.ack_every == 0:
            self.conn.publish(self.ack_topic, self.dumps({"t": "ack", "session": self.session, "seq": msg["seq"]}))


def _pump(sel: selectors.BaseSelector, timeout: float) -> None:
    for key, mask in sel.select(timeout):
        conn: Conn = key.data
        if mask & selectors.EVENT_READ:
            conn.readable()
        conn.flush()


def _run_job(job: dict[str, Any], out: Any, inp: Any) -> dict[str, Any]:
    sel = selectors.DefaultSelector()
    win, st = Window(), Stats()
    port = job["port"]
    rrs: list[RRClient] = []
    devs: list[DevClient] = []
    try:
        for spec in job["clients"]:
            if spec["kind"] == "rr":
                rrs.append(RRClient(spec, port, sel, win, st))
            else:
                devs.append(DevClient(spec, port, sel, win, st))
        conns = [c.conn for c in (*rrs, *devs)]
        deadline = time.monotonic() + 30
        while not all(c.subscribed for c in conns):
            if time.monotonic() > deadline or not all(c.alive for c in conns):
                raise RuntimeError("clients did not connect/subscribe")
            _pump(sel, 0.05)
        out.write(json.dumps({"ready": True}) + "\n")
        out.flush()
        go = json.loads(inp.readline() or '{"abort": true}')
        if go.get("abort"):
            return {"aborted": True}
        win.t0, win.start, win.end = go["t0"], go["start"], go["end"]
        while time.monotonic() < win.t0:
            _pump(sel, max(0.0, min(0.01, win.t0 - time.monotonic())))
        for c in rrs:
            c.send()
        while time.monotonic() < win.end:
            _pump(sel, 0.05)
        drain = time.monotonic() + 10  # let the last replies (and queued notifications) arrive
        while any(c.outstanding for c in rrs) and time.monotonic() < drain:
            _pump(sel, 0.05)
        st.lost = sum(1 for c in rrs if c.outstanding)
        if devs:
            while time.monotonic() < drain and time.monotonic() - max(d.last_msg for d in devs) < 0.3:
                _pump(sel, 0.05)
        return {
            "count": st.count, "errors": st.errors, "first_error": st.first_error, "lat": st.lat,
            "notes": st.notes, "note_lat": st.note_lat, "stale": st.stale, "lost": st.lost,
            "dead": sum(1 for c in (*rrs, *devs) if not c.conn.alive),
        }
    finally:
        for c in (*rrs, *devs):
            c.conn.close()
        sel.close()


def worker_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
    out, inp = sys.stdout, sys.stdin
    for line in inp:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            return
        try:
            res = _run_job(msg, out, inp)
        except Exception as exc:  # reported to the orchestrator
            res = {"error": repr(exc)}
        out.write(json.dumps(res) + "\n")
        out.flush()


# ======================================================================================================
# The paho echo service (``bench.py _echo PORT``) and the standalone amqtt broker (``bench.py _amqtt PORT``)
# ======================================================================================================


def echo_main(port: int) -> None:
    """Subscribe echo/+/in (QoS 1); publish each payload back to echo/<x>/out (QoS 1). One selector loop."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sel = selectors.DefaultSelector()
    holder: list[Conn] = []

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        topic = m.topic
        holder[0].client.publish(topic[:-2] + "out", m.payload, 1)  # flushed by the selector loop

    conn = Conn(sel, f"echo-{os.getpid()}", port, ["echo/+/in"], on_message)
    holder.append(conn)
    ready = False
    while not stop.is_set() and conn.alive:
        _pump(sel, 0.2)
        if conn.subscribed and not ready:
            ready = True
            print("echo service listening on echo/+/in", flush=True)
    conn.close()


def amqtt_main(port: int) -> None:
    """amqtt standalone, with the bridge's own embedded-broker config (broker_config/amqtt.yaml)."""
    import asyncio
    import logging

    from bridge.broker import EmbeddedBroker, load_config

    logging.basicConfig(level=logging.WARNING)
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with EmbeddedBroker("127.0.0.1", port, load_config(None)):
            print(f"amqtt broker listening on 127.0.0.1:{port}", flush=True)
            await stop.wait()

    asyncio.run(run())


# ======================================================================================================
# Orchestrator: processes, measurements, report
# ======================================================================================================

PROCS: list[subprocess.Popen[Any]] = []
T_BEGIN = time.monotonic()
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T_BEGIN:6.1f}s] {msg}", flush=True)


def _pdeathsig() -> None:
    """In the child: get SIGTERM if the benchmark process dies (even by SIGKILL), so nothing is left running."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(cmd: list[str], **kw: Any) -> subprocess.Popen[Any]:
    p = subprocess.Popen(cmd, start_new_session=True, preexec_fn=_pdeathsig, **kw)
    PROCS.append(p)
    return p


def stop_proc(p: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                p.kill()
            p.wait(5)
    if p in PROCS:
        PROCS.remove(p)


def stop_all() -> None:
    for p in reversed(list(PROCS)):
        with contextlib.suppress(Exception):
            stop_proc(p, 5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, from /proc/stat (steal counted as busy)."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    total = sum(vals[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_line(proc: subprocess.Popen[Any], needle: str, timeout: float) -> str:
    """Read the process's stdout until a line contains ``needle``; keep draining it afterwards."""
    lines: queue.Queue[str | None] = queue.Queue()

    def reader() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError(f"{proc.args[:6]}: no {needle!r} within {timeout}s") from None
        if line is None:
            raise RuntimeError(f"{proc.args[:6]} exited ({proc.wait()}) before printing {needle!r}")
        if needle in line:
            return line


class Workers:
    """Persistent load-generator processes; each runs one job (a set of clients) at a time."""

    def __init__(self, count: int) -> None:
        self.procs = [
            spawn([PY, str(Path(__file__).resolve()), "_worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  text=True, cwd=ROOT)
            for _ in range(count)
        ]

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _read(self, p: subprocess.Popen[Any]) -> dict[str, Any]:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError("a load generator died")
        return json.loads(line)

    def run(self, port: int, specs: list[dict[str, Any]], warmup: float, duration: float,
            monitor: dict[str, int], procs_for: int | None = None,
            on_start: Any = None) -> dict[str, Any]:
        """Spread ``specs`` over the workers, run them for warmup + duration; merge the results and CPU use."""
        used = self.procs[: max(1, min(len(self.procs), procs_for or len(specs)))]
        shares: list[list[dict[str, Any]]] = [[] for _ in used]
        for i, spec in enumerate(specs):
            shares[i % len(used)].append(spec)
        jobs = [(p, s) for p, s in zip(used, shares) if s]
        for p, share in jobs:
            assert p.stdin is not None
            p.stdin.write(json.dumps({"cmd": "job", "port": port, "clients": share}) + "\n")
            p.stdin.flush()
        readies = [self._read(p) for p, _ in jobs]
        failed = [r for r in readies if not r.get("ready")]
        t0 = time.monotonic() + 0.1
        go = {"abort": True} if failed else {"t0": t0, "start": t0 + warmup, "end": t0 + warmup + duration}
        for p, _ in jobs:
            if p.stdin is not None and p.poll() is None:
                with contextlib.suppress(BrokenPipeError):
                    p.stdin.write(json.dumps(go) + "\n")
                    p.stdin.flush()
        if failed:
            for (p, _), ready in zip(jobs, readies):
                if ready.get("ready"):
                    self._read(p)  # its {"aborted": true}
            raise RuntimeError(f"load generator failed: {failed[0]}")
        monitor = {**monitor, "load": -1}
        load_pids = [p.pid for p, _ in jobs]

        def sample() -> dict[str, float]:
            got = {k: cpu_seconds(v) for k, v in monitor.items() if v > 0}
            got["load"] = sum(cpu_seconds(pid) for pid in load_pids)
            got["machine"] = machine_busy()[0]
            return got

        time.sleep(max(0.0, go["start"] - time.monotonic()))
        cpu0, w0 = sample(), time.monotonic()
        if on_start is not None:
            on_start()
        time.sleep(max(0.0, go["end"] - time.monotonic()))
        cpu1, w1 = sample(), time.monotonic()
        results = [self._read(p) for p, _ in jobs]
        errs = [r for r in results if "error" in r]
        if errs:
            raise RuntimeError(f"load generator failed: {errs[0]['error']}")
        merged: dict[str, Any] = {"count": 0, "errors": 0, "notes": 0, "stale": 0, "lost": 0, "dead": 0,
                                  "lat": [], "note_lat": [], "first_error": None}
        for r in results:
            for k in ("count", "errors", "notes", "stale", "lost", "dead"):
                merged[k] += r[k]
            merged["lat"].extend(r["lat"])
            merged["note_lat"].extend(r["note_lat"])
            merged["first_error"] = merged["first_error"] or r["first_error"]
        wall = w1 - w0
        merged["cpu_pct"] = {k: round(100 * (cpu1[k] - cpu0[k]) / wall, 1) for k in cpu1}
        ours = sum(v for k, v in merged["cpu_pct"].items() if k != "machine")
        merged["cpu_pct"]["others"] = round(max(0.0, merged["cpu_pct"].pop("machine") - ours), 1)
        merged["cpu_s"] = {k: cpu1[k] - cpu0[k] for k in cpu1}
        merged["load_procs"] = len(jobs)
        return merged

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(Exception):
                assert p.stdin is not None
                p.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                p.stdin.flush()
        for p in self.procs:
            stop_proc(p, 5.0)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# -------------------------------------------------------------------------------------------------------------
# the processes under test


class Env:
    """Temp dir, brokers, bridges for one benchmark run."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.bridges = 0

    def mosquitto(self) -> tuple[subprocess.Popen[Any], int]:
        port = free_port()
        conf = self.tmp / f"mosquitto-{port}.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
            "max_queued_messages 100000\nmax_inflight_messages 0\npersistence false\n"
            "log_dest stderr\nlog_type error\nlog_type warning\n"
        )
        err = open(self.tmp / f"mosquitto-{port}.log", "w")
        p = spawn([MOSQUITTO, "-c", str(conf)], stdout=err, stderr=err)
        wait_port(port, p)
        return p, port

    def amqtt(self) -> tuple[subprocess.Popen[Any], int]:
        port = free_port()
        err = open(self.tmp / f"amqtt-{port}.log", "w")
        p = spawn([PY, str(Path(__file__).resolve()), "_amqtt", str(port)], stdout=subprocess.PIPE, stderr=err,
                  text=True, cwd=ROOT)
        wait_line(p, "listening", 30)
        return p, port

    def echo(self, port: int) -> subprocess.Popen[Any]:
        err = open(self.tmp / f"echo-{port}.log", "a")
        p = spawn([PY, str(Path(__file__).resolve()), "_echo", str(port)], stdout=subprocess.PIPE, stderr=err,
                  text=True, cwd=ROOT)
        wait_line(p, "listening", 30)
        return p

    def bridge(self, broker: str, port: int, db: Path, sync: str = "FULL",
               wrap: list[str] | None = None) -> tuple[subprocess.Popen[Any], float]:
        """Start a bridge; return it and its start-up time (process start until its "listening" line)."""
        self.bridges += 1
        cmd = [PY, "-m", "bridge", "--log-level", "WARNING", "run", APP, "--db", str(db), "--pulse", "0",
               "--synchronous", sync, "--max-sessions", "1000", "--client-id", f"bench-{os.getpid()}-{self.bridges}"]
        cmd += ["--broker", f"mqtt://127.0.0.1:{port}"] if broker == "mosquitto" else ["--listen", f"127.0.0.1:{port}"]
        err = open(self.tmp / f"bridge-{self.bridges}.log", "w")
        t = time.monotonic()
        p = spawn([*(wrap or []), *cmd], stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
        wait_line(p, "listening", 300)
        return p, time.monotonic() - t


def populate(db: Path, count: int, sessions: list[str] | tuple[str, ...] = ()) -> None:
    """Write ``count`` CAs k0..k<count-1> (state {"n": 0}) and the given sessions of each, in the store's schema."""
    import cbor2

    from bridge.sqlite import SCHEMA

    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        con.executescript(SCHEMA)
        state = cbor2.dumps({"n": 0})
        # a session row as bridge.session.SessionData.meta() writes it: limit, pinned, nonce, memento, next_seq, codec
        meta = cbor2.dumps([5, False, None, None, 1, "cbor"])
        con.execute("BEGIN")
        con.executemany("INSERT INTO ca (name, state) VALUES (?, ?)", ((f"k{i}", state) for i in range(count)))
        if sessions:
            con.executemany("INSERT INTO session (ca, sid, meta) VALUES (?, ?, ?)",
                            ((f"k{i}", s, meta) for i in range(count) for s in sessions))
        con.execute("COMMIT")
    finally:
        con.close()


def probe_call(port: int, ca: str, timeout: float = 120.0) -> float:
    """One incr call from a fresh paho client; seconds until its reply."""
    import cbor2

    paho, api = _paho()
    got = threading.Event()
    subscribed = threading.Event()
    c = paho.Client(api.VERSION2, client_id=f"probe-{os.urandom(4).hex()}", clean_session=True,
                    protocol=paho.MQTTv311)

    def on_connect(client: Any, *_a: Any) -> None:
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe(f"ca/{ca}/session/probe", 1)

    c.on_connect = on_connect
    c.on_subscribe = lambda *_a: subscribed.set()
    c.on_message = lambda _c, _u, m: got.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        if not subscribed.wait(30):
            raise RuntimeError("probe: no SUBACK")
        t = time.monotonic()
        c.publish(f"ca/{ca}/in", cbor2.dumps(
            {"t": "call", "id": os.urandom(6).hex(), "session": "probe", "method": "incr", "args": []}), 1)
        if not got.wait(timeout):
            raise RuntimeError("probe: no reply")
        return time.monotonic() - t
    finally:
        c.disconnect()
        c.loop_stop()


# -------------------------------------------------------------------------------------------------------------
# workloads


def echo_specs(n: int, run: str) -> list[dict[str, Any]]:
    return [{"kind": "rr", "cid": f"{run}-e{i}", "pub": f"echo/{run}-{i}/in", "sub": f"echo/{run}-{i}/out",
             "session": f"c{i}", "method": "incr"} for i in range(n)]


def percA_specs(n: int, run: str) -> list[dict[str, Any]]:
    return [{"kind": "rr", "cid": f"{run}-c{i}", "ca": f"{run}-{i}", "pub": "ca/{ca}/in",
             "sub": f"ca/{run}-{i}/session/c{i}", "session": f"c{i}", "method": "incr"} for i in range(n)]


def shared_specs(n: int, run: str) -> list[dict[str, Any]]:
    return [{"kind": "rr", "cid": f"{run}-s{i}", "ca": f"{run}-shared", "pub": "ca/{ca}/in",
             "sub": f"{'ca'}/{run}-shared/session/s{i}", "session": f"s{i}", "method": "incr"} for i in range(n)]


def random_specs(n: int, run: str, count: int) -> list[dict[str, Any]]:
    return [{"kind": "rr", "cid": f"{run}-r{i}", "ca_count": count, "pub": "ca/{ca}/in",
             "sub": f"ca/+/session/c{i}", "session": f"c{i}", "method": "incr"} for i in range(n)]


def fanout_specs(run: str, sessions: int) -> list[dict[str, Any]]:
    ca = f"{run}-fan"
    driver = {"kind": "rr", "cid": f"{run}-driver", "ca": ca, "pub": "ca/{ca}/in", "sub": f"ca/{ca}/session/driver",
              "session": "driver", "method": "fanout", "args": [sessions], "stamp": True}
    devs = [{"kind": "dev", "cid": f"{run}-d{i}", "sub": f"ca/{ca}/session/d{i}", "session": f"d{i}",
             "ack_topic": f"ca/{ca}/in", "ack_every": 10} for i in range(sessions)]
    return [driver, *devs]


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.ns = [1, 16] if args.quick else [1, 4, 16, 32]
        self.warmup = 0.5 if args.quick else 1.5
        self.duration = 2.0 if args.quick else 5.0
        self.scale_counts = [0, 1000, 10000] if args.quick else [0, 1000, 10000, 100000]
        self.active = 10000
        self.durab_rounds = 1 if args.quick else 2
        self.quiet_budget = 20.0 if args.quick else 150.0  # total seconds spent waiting for a quiet machine
        self.env = Env(tmp)
        self.tmp = tmp
        self.workers = Workers(LOAD_PROCS)
        self.rows: list[dict[str, Any]] = []
        self.scale: list[dict[str, Any]] = []
        self.runs = 0

    def wait_quiet(self) -> float:
        """This machine is shared: wait (bounded) until other processes leave the CPUs mostly idle.

        Returns the machine's busy CPU (% of one core) seen just before the measurement starts.
        """
        began = time.monotonic()
        deadline = began + min(self.args.quiet_wait, max(0.0, self.quiet_budget))
        told = False
        while True:
            b0, _ = machine_busy()
            time.sleep(0.5)
            busy = 100 * (machine_busy()[0] - b0) / 0.5
            if busy <= self.args.quiet_threshold or time.monotonic() >= deadline:
                self.quiet_budget -= time.monotonic() - began - 0.5
                if told or busy > self.args.quiet_threshold:
                    log(f"  machine busy {busy:.0f}% before the measurement" + (
                        " (gave up waiting)" if busy > self.args.quiet_threshold else ""))
                return round(busy, 1)
            if not told:
                log(f"  other processes keep the machine {busy:.0f}% busy: waiting up to {self.args.quiet_wait:.0f}s")
                told = True

    def measure(self, broker: str, kind: str, n: int, port: int, specs: list[dict[str, Any]],
                monitor: dict[str, int], label: str, **extra: Any) -> dict[str, Any]:
        procs_for = None if kind != "fanout" else LOAD_PROCS
        extra["busy_before"] = self.wait_quiet()
        r = self.workers.run(port, specs, self.warmup, self.duration, monitor, procs_for)
        rate = r["count"] / self.duration
        row: dict[str, Any] = {
            "broker": broker, "kind": kind, "n": n, "label": label, "rate": round(rate, 1),
            "p50": pct(r["lat"], 0.50), "p99": pct(r["lat"], 0.99), "mean": (
                round(sum(r["lat"]) / len(r["lat"]), 4) if r["lat"] else None),
            "calls": r["count"], "errors": r["errors"], "first_error": r["first_error"], "stale": r["stale"],
            "lost": r["lost"], "dead": r["dead"], "cpu_pct": r["cpu_pct"], "load_procs": r["load_procs"],
            "duration": self.duration, **extra,
        }
        main = "bridge" if "bridge" in monitor else "echo"
        if r["count"] and main in r["cpu_s"]:
            row["cpu_us_per_call"] = round(1e6 * r["cpu_s"][main] / r["count"], 1)
        if kind == "fanout":
            row["notes_rate"] = round(r["notes"] / self.duration, 1)
            row["note_p50"] = pct(r["note_lat"], 0.50)
            row["note_p99"] = pct(r["note_lat"], 0.99)
            if r["notes"] and "bridge" in r["cpu_s"]:
                row["cpu_us_per_note"] = round(1e6 * r["cpu_s"]["bridge"] / r["notes"], 1)
        self.rows.append(row)
        cpu = " ".join(f"{k} {v:.0f}%" for k, v in r["cpu_pct"].items())
        msg = f"{broker:9} {label:28} N={n:<3} {rate:8.0f}/s  p50 {fmt(row['p50'])} ms  p99 {fmt(row['p99'])} ms"
        if kind == "fanout":
            msg += (f"  notes {row['notes_rate']:.0f}/s (p50 {fmt(row['note_p50'])} ms, "
                    f"p99 {fmt(row['note_p99'])} ms)")
        msg += f"  cpu: {cpu}"
        if r["errors"] or r["lost"] or r["dead"]:
            msg += f"  errors {r['errors']} lost {r['lost']} dead {r['dead']} ({r['first_error']})"
        log(msg)
        return row

    def run_id(self, what: str) -> str:
        self.runs += 1
        return f"{what}{self.runs}-{os.urandom(2).hex()}"

    # -- one broker ------------------------------------------------------------------------------------------

    def broker(self, broker: str) -> None:
        log(f"=== {broker} ===")
        ext: subprocess.Popen[Any] | None = None
        if broker == "mosquitto":
            ext, port = self.env.mosquitto()
            log(f"mosquitto {ext.pid} on 127.0.0.1:{port}")
            base_port, base_broker = port, ext
        else:
            base_broker, base_port = self.env.amqtt()
            log(f"standalone amqtt broker {base_broker.pid} on 127.0.0.1:{base_port} (baseline only)")

        # 1. baseline
        echo = self.env.echo(base_port)
        for n in self.ns:
            self.measure(broker, "baseline", n, base_port, echo_specs(n, self.run_id("e")),
                         {"echo": echo.pid, "broker": base_broker.pid}, "baseline echo (paho)")
        stop_proc(echo)
        if broker == "amqtt":
            stop_proc(base_broker)

        def start(db: Path, sync: str = "FULL") -> tuple[subprocess.Popen[Any], int, float, dict[str, int]]:
            p = free_port() if broker == "amqtt" else port
            proc, startup = self.env.bridge(broker, p, db, sync)
            mon = {"bridge": proc.pid}
            if ext is not None:
                mon["broker"] = ext.pid
            return proc, p, startup, mon

        # 2. bridge, durable incr, FULL; 3. fan-out
        db = self.tmp / f"{broker}-full.db"
        proc, bport, startup, mon = start(db)
        log(f"bridge {proc.pid} up in {startup:.2f}s")
        for n in self.ns:
            self.measure(broker, "percA", n, bport, percA_specs(n, self.run_id("p")), mon, "bridge incr, N CAs")
        for n in self.ns:
            self.measure(broker, "shared", n, bport, shared_specs(n, self.run_id("s")), mon, "bridge incr, 1 shared CA")
        self.measure(broker, "fanout", 1, bport, fanout_specs(self.run_id("f"), FANOUT), mon,
                     f"fan-out 1 call -> {FANOUT} sessions", sessions=FANOUT)
        self.scale.append({"broker": broker, "what": "after the FULL runs", "cas": None,
                           "rss_mb": round(rss_mb(proc.pid), 1)})
        stop_proc(proc)

        # 5. durability: a FULL and a NORMAL bridge side by side, measured alternately (the machine is shared, so
        # back-to-back A/B rounds compare better than two distant runs)
        pf, portf, _, monf = start(self.tmp / f"{broker}-durab-full.db", "FULL")
        pn, portn, _, monn = start(self.tmp / f"{broker}-durab-normal.db", "NORMAL")
        for rnd in range(1, self.durab_rounds + 1):
            for kind, specs_fn, name in [("percA", percA_specs, "N CAs"), ("shared", shared_specs, "1 shared CA")]:
                if kind == "shared" and self.quick:
                    continue
                for sync, p, mon in (("FULL", portf, monf), ("NORMAL", portn, monn)):
                    self.measure(broker, kind, 16, p, specs_fn(16, self.run_id("d")), mon,
                                 f"durability {sync}: {name}", sync=sync, round=rnd)
        stop_proc(pn)
        stop_proc(pf)

        # 4. scale: start-up time and memory, then calls/s over 10k active CAs
        for count in self.scale_counts:
            db = self.tmp / f"scale-{count}.db"
            t = time.monotonic()
            populate(db, count)
            fill = time.monotonic() - t
            t = time.monotonic()
            proc, bport, startup, mon = start(db)
            rss_listen = rss_mb(proc.pid)
            first = probe_call(bport, "k0" if count else "new0")
            ready = time.monotonic() - t
            rss = settle_rss(proc.pid)
            entry = {"broker": broker, "what": "start-up", "cas": count, "startup_s": round(startup, 3),
                     "ready_s": round(ready, 3), "first_call_s": round(first, 3), "rss_listen_mb": round(rss_listen, 1),
                     "rss_mb": round(rss, 1), "populate_s": round(fill, 2)}
            self.scale.append(entry)
            log(f"{broker:9} scale {count:>6} CAs: listening after {startup:.2f}s, first reply after {ready:.2f}s, "
                f"RSS {rss:.1f} MB (at listening {rss_listen:.1f} MB)")
            stop_proc(proc)
            db.unlink(missing_ok=True)
        n = 16
        db = self.tmp / f"active-{self.active}.db"
        populate(db, self.active, [f"c{i}" for i in range(n)])
        proc, bport, startup, mon = start(db)
        probe_call(bport, "k1")  # wait for the resume hooks to pass
        rss0 = settle_rss(proc.pid)
        log(f"{broker:9} {self.active} CAs x {n} sessions loaded in {startup:.2f}s, RSS {rss0:.1f} MB")
        self.scale.append({"broker": broker, "what": f"before the {self.active} active-CA run ({n} sessions each)",
                           "cas": self.active, "rss_mb": round(rss0, 1), "startup_s": round(startup, 3)})
        self.measure(broker, "active", n, bport, random_specs(n, self.run_id("r"), self.active), mon,
                     f"bridge incr, random of {self.active // 1000}k CAs", cas=self.active)
        self.scale.append({"broker": broker, "what": f"after the {self.active} active-CA run", "cas": self.active,
                           "rss_mb": round(rss_mb(proc.pid), 1)})
        stop_proc(proc)
        if ext is not None:
            stop_proc(ext)

    def close(self) -> None:
        self.workers.close()


def settle_rss(pid: int, limit: float = 5.0) -> float:
    last = rss_mb(pid)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = rss_mb(pid)
        if abs(now - last) <= 0.005 * max(now, 1):
            return now
        last = now
    return last


# -------------------------------------------------------------------------------------------------------------
# report


def find(rows: list[dict[str, Any]], broker: str, kind: str, n: int, sync: str | None = None) -> dict[str, Any] | None:
    for r in rows:
        if r["broker"] == broker and r["kind"] == kind and r["n"] == n and r.get("sync") == sync:
            return r
    return None


def report(rows: list[dict[str, Any]], scale: list[dict[str, Any]]) -> str:
    out: list[str] = []
    w = out.append
    brokers = list(dict.fromkeys(r["broker"] for r in rows))
    for b in brokers:
        w(f"\n== {b} ==  (rate = completed round trips/s; ratio = bridge rate / baseline rate at the same N)")
        w(f"{'workload':36} {'N':>3} {'rate/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x base':>6} {'p50 x':>6} "
          f"{'bridge us/call':>14} {'CPU %':>28}")
        for r in rows:
            if r["broker"] != b:
                continue
            base = find(rows, b, "baseline", r["n"]) if r["kind"] not in ("baseline", "fanout") else None
            ratio = fmt(r["rate"] / base["rate"]) if base and base["rate"] else ""
            p50x = fmt(r["p50"] / base["p50"], 1) if base and base["p50"] and r["p50"] else ""
            cpu = " ".join(f"{k}:{v:.0f}" for k, v in r["cpu_pct"].items())
            w(f"{r['label']:36} {r['n']:>3} {r['rate']:>8.0f} {fmt(r['p50']):>7} {fmt(r['p99']):>7} {ratio:>6} "
              f"{p50x:>6} {r.get('cpu_us_per_call', '') or '':>14} {cpu:>28}")
            if r["kind"] == "fanout":
                w(f"{'   notifications delivered':36} {r['sessions']:>3} {r['notes_rate']:>8.0f} "
                  f"{fmt(r['note_p50']):>7} {fmt(r['note_p99']):>7} {'':>6} {'':>6} "
                  f"{r.get('cpu_us_per_note', ''):>14}   (call-to-device latency)")
            if r["errors"] or r["lost"] or r["dead"]:
                w(f"   !! errors {r['errors']} lost {r['lost']} dead clients {r['dead']}: {r['first_error']}")
        w("CPU %: per process, % of one core during the measured window (bridge includes the embedded broker on "
          "amqtt); load = the load generators; others = processes this benchmark did not start (shared machine)")
        for kind, name in (("percA", "16 clients on 16 CAs"), ("shared", "16 clients on 1 shared CA")):
            got = {}
            for sync in ("FULL", "NORMAL"):
                rs = [r for r in rows if r["broker"] == b and r["kind"] == kind and r.get("sync") == sync]
                if rs:
                    got[sync] = (sum(r["rate"] for r in rs) / len(rs), sum(r["p99"] or 0 for r in rs) / len(rs),
                                 len(rs))
            if len(got) == 2:
                (rf, pf, k), (rn, pn, _) = got["FULL"], got["NORMAL"]
                w(f"durability, {name} (mean of {k} alternating round(s)): FULL {rf:.0f}/s p99 {pf:.2f} ms vs "
                  f"NORMAL {rn:.0f}/s p99 {pn:.2f} ms: NORMAL/FULL = {rn / rf:.2f}")
        w("vs real Caf.js (1 ms coalescing, its best; Redis without fsync) on this kind of machine:")
        for (kind, n), (rate, p50, p99) in CAFJS.items():
            r = find(rows, b, kind, n)
            if r:
                w(f"   {kind:6} N={n:<3} bridge {r['rate']:6.0f}/s p50 {fmt(r['p50'])} p99 {fmt(r['p99'])}  |  "
                  f"Caf.js {rate:5}/s p50 {p50} p99 {p99}  ->  {r['rate'] / rate:.1f}x the calls/s "
                  f"(Caf.js default config: {CAFJS_DEFAULT[(kind, n)][0]}/s)")
        w("scale (bridge process; start-up = process start until 'listening'; ready = until the first call's reply):")
        for s in scale:
            if s["broker"] != b:
                continue
            if s["what"] == "start-up":
                w(f"   {s['cas']:>7} CAs: start-up {s['startup_s']:.2f}s  ready {s['ready_s']:.2f}s  "
                  f"RSS {s['rss_mb']:.1f} MB (at 'listening' {s['rss_listen_mb']:.1f} MB)")
            else:
                w(f"   RSS {s['what']}: {s['rss_mb']:.1f} MB")
        ups = {s["cas"]: s for s in scale if s["broker"] == b and s["what"] == "start-up"}
        if 0 in ups and len(ups) > 1:
            big = max(ups)
            per = (ups[big]["rss_mb"] - ups[0]["rss_mb"]) * 1024 * 1024 / big
            w(f"   ~{per / 1024:.1f} KB of RSS per loaded CA ({big} CAs vs an empty store)")
    return "\n".join(out)


def chart(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no chart (pip install matplotlib)")
        return False
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    colors = {"mosquitto": "tab:blue", "amqtt": "tab:orange"}
    styles = {"baseline": ("-", "o", "paho echo baseline"), "percA": ("--", "s", "bridge incr, N CAs"),
              "shared": (":", "^", "bridge incr, 1 shared CA")}
    for b in dict.fromkeys(r["broker"] for r in rows):
        for kind, (ls, mk, name) in styles.items():
            pts = sorted((r["n"], r["rate"], r["p99"]) for r in rows
                         if r["broker"] == b and r["kind"] == kind and r.get("sync") is None)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            ax1.plot(xs, [p[1] for p in pts], ls=ls, marker=mk, color=colors.get(b), label=f"{b}: {name}")
            ax2.plot(xs, [p[2] for p in pts], ls=ls, marker=mk, color=colors.get(b), label=f"{b}: {name}")
    for (kind, n), (rate, _p50, p99) in CAFJS.items():
        mk = "s" if kind == "percA" else "^"
        ax1.scatter([n], [rate], marker=mk, color="gray", zorder=3)
        ax2.scatter([n], [p99], marker=mk, color="gray", zorder=3)
    ax1.scatter([], [], marker="s", color="gray", label="Caf.js best (1 ms), N CAs / shared")
    ax2.set_yscale("log")
    for ax, title, ylabel in ((ax1, "throughput", "round trips (calls) / s"), (ax2, "p99 latency", "p99 ms (log)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 4, 16, 32])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("concurrent clients (sequential request/response each)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle("ca-bridge durable incr vs plain paho echo (2 cores, everything on one machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -------------------------------------------------------------------------------------------------------------
# profiling mode


def profile(args: argparse.Namespace, tmp: Path) -> int:
    """Profile the bridge on mosquitto under 16 clients on 16 CAs, during the measured window only; summarize.

    py-spy attaches to the running bridge (``py-spy record --pid``) once the warm-up is over; cProfile runs the
    whole bridge process (``python -m cProfile -o``, main thread only) and is written when the bridge stops.
    """
    from profile_summary import summarize_cprofile, summarize_pyspy

    env = Env(tmp)
    workers = Workers(LOAD_PROCS)
    spy: list[subprocess.Popen[Any]] = []
    try:
        mq, port = env.mosquitto()
        out = Path(args.profile_out)
        raw = out.with_suffix(".raw" if args.profile == "py-spy" else ".prof")
        wrap = [PY, "-m", "cProfile", "-o", str(raw)] if args.profile == "cprofile" else None
        proc, startup = env.bridge("mosquitto", port, tmp / "profile.db", wrap=wrap)
        log(f"bridge {proc.pid} up in {startup:.2f}s; profiling with {args.profile}")
        seconds = int(args.profile_seconds)

        def attach() -> None:
            if args.profile == "py-spy":
                spy.append(spawn([str(Path(PY).parent / "py-spy"), "record", "--pid", str(proc.pid), "--threads",
                                  "--rate", str(args.profile_rate), "--duration", str(seconds), "--format", "raw",
                                  "-o", str(raw)], stdout=subprocess.DEVNULL, stderr=open(tmp / "py-spy.log", "w")))

        r = workers.run(port, percA_specs(16, "prof"), 2.0, seconds, {"bridge": proc.pid, "broker": mq.pid},
                        on_start=attach)
        log(f"profiled load: {r['count'] / seconds:.0f} calls/s, p50 {fmt(pct(r['lat'], .5))} ms, "
            f"p99 {fmt(pct(r['lat'], .99))} ms, cpu % {r['cpu_pct']}, "
            f"bridge {1e6 * r['cpu_s']['bridge'] / max(1, r['count']):.0f} us CPU/call")
        for p in spy:
            p.wait(60)
        stop_proc(proc, 30)  # cProfile writes its file when the bridge exits
        text = summarize_pyspy(raw, top=args.profile_top) if args.profile == "py-spy" else \
            summarize_cprofile(raw, top=args.profile_top)
        text = (f"load: 16 clients on 16 CAs, mosquitto, {r['count'] / seconds:.0f} calls/s while profiled, "
                f"bridge CPU {r['cpu_pct'].get('bridge')}% of a core, other processes {r['cpu_pct'].get('others')}%\n"
                + text)
        print(text)
        out.with_suffix(".txt").write_text(text + "\n")
        log(f"raw profile: {raw}; summary: {out.with_suffix('.txt')}")
        return 0
    finally:
        workers.close()
        stop_all()


# -------------------------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_worker":
        worker_main()
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "_echo":
        echo_main(int(sys.argv[2]))
        return 0
    if len(sys.argv) > 2 and sys.argv[1] == "_amqtt":
        amqtt_main(int(sys.argv[2]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="reduced matrix (about 2 minutes for both brokers)")
    p.add_argument("--broker", choices=["mosquitto", "amqtt", "both"], default="both")
    p.add_argument("--out", default=str(HERE / "results" / "bench"), help="writes OUT.json and OUT.png")
    p.add_argument("--quiet-threshold", type=float, default=25.0, metavar="PCT",
                   help="before each measurement wait until the machine's busy CPU (%% of one core) is below this")
    p.add_argument("--quiet-wait", type=float, default=None, metavar="SECONDS",
                   help="longest wait for a quiet machine per measurement (default 30, quick 5)")
    p.add_argument("--profile", choices=["py-spy", "cprofile"],
                   help="instead of the benchmark: profile the bridge under 16 clients on mosquitto")
    p.add_argument("--profile-out", default="/tmp/profile", help="OUT.raw|.prof and OUT.txt")
    p.add_argument("--profile-seconds", type=float, default=20.0)
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--profile-top", type=int, default=15)
    args = p.parse_args()
    if args.quiet_wait is None:
        args.quiet_wait = 5.0 if args.quick else 30.0
    if not Path(MOSQUITTO).exists() and args.broker != "amqtt":
        print(f"mosquitto not found at {MOSQUITTO}", file=sys.stderr)
        return 2

    def on_signal(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    sys.path.insert(0, str(HERE))
    tmp = Path(tempfile.mkdtemp(prefix="ca-bench-"))
    bench: Bench | None = None
    try:
        if args.profile:
            return profile(args, tmp)
        bench = Bench(args, tmp)
        log(f"ca-bridge benchmark ({'quick' if args.quick else 'full'}): N in {bench.ns}, warm-up {bench.warmup}s, "
            f"measure {bench.duration}s each, {LOAD_PROCS} load-generator processes, {os.cpu_count()} CPUs, temp {tmp}")
        for b in (["mosquitto", "amqtt"] if args.broker == "both" else [args.broker]):
            bench.broker(b)
        text = report(bench.rows, bench.scale)
        print(text, flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"quick": args.quick, "warmup_s": bench.warmup, "duration_s": bench.duration, "cpus": os.cpu_count(),
                "load_procs": LOAD_PROCS, "fanout_sessions": FANOUT, "python": sys.version.split()[0],
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cafjs_best": {f"{k}{n}": v for (k, n), v in CAFJS.items()}}
        out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": bench.rows, "scale": bench.scale},
                                                       indent=1) + "\n")
        out.with_suffix(".txt").write_text(text + "\n")
        drew = chart(bench.rows, out.with_suffix(".png"))
        log(f"wrote {out.with_suffix('.json')}, {out.with_suffix('.txt')}" + (f", {out.with_suffix('.png')}" if drew else ""))
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr, flush=True)
        return 130
    finally:
        if bench is not None:
            with contextlib.suppress(Exception):
                bench.close()
        stop_all()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
