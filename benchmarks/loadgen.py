"""The benchmarks' closed-loop MQTT load generator: paho clients (TCP_NODELAY) driven by one selector loop per
process, in a pool of persistent processes (``python benchmarks/loadgen.py`` reads jobs on stdin, one JSON line
each, and answers on stdout). A client spec (a dict) is one of:

* ``{"kind": "rr", "cid", "sub", "pub" (may hold {ca}), "ca" | "cas" (cycled) | "ca_count" (random k0..),
  "session", "method", "args", "stamp", "calls", "record", "retry"}``: one ~60-byte CBOR call outstanding; the
  next leaves when the reply arrives; done after ``calls`` calls; ``record``: every call's (id, ms, error, time of
  the reply, its ``ok``, attempts) is returned; ``retry``: the same request again every ``retry`` s until answered;
* ``{"kind": "dev", "cid", "sub", "session", "ack_topic", "ack_every"}``: a device counting notifications (their
  latency from a timestamp in the args) and acking every ``ack_every``-th;
* ``{"kind": "mon", "cid", "sub"}``: collects the request ids published on ``sub`` (the bridges' forward topics).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bridge.mqtt import packet, prefixed  # noqa: E402
from tests.procs import MOSQUITTO, PYTHON, cpu_seconds, machine_cpu, spawn, stop, stop_all  # noqa: E402

PROCS = 4  # load-generator processes of a pool
T_BEGIN = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T_BEGIN:6.1f}s] {msg}", flush=True)


def pct(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


class Quiet:
    """The machine is shared: before a measurement, wait (at most ``wait`` s each, ``budget`` s in all) until the
    other processes leave the CPUs mostly idle (busy below ``threshold`` % of one core); returns the busy % seen."""

    def __init__(self, threshold: float, wait: float, budget: float, log: Callable[[str], None]) -> None:
        self.threshold, self.wait, self.budget, self.log = threshold, wait, budget, log

    def __call__(self) -> float:
        began = time.monotonic()
        deadline = began + min(self.wait, max(0.0, self.budget))
        while True:
            b0 = machine_cpu()[0]
            time.sleep(0.5)
            busy = 100 * (machine_cpu()[0] - b0) / 0.5
            if busy <= self.threshold or time.monotonic() >= deadline:
                self.budget -= time.monotonic() - began - 0.5
                if busy > self.threshold:
                    self.log(f"  machine still {busy:.0f}% busy before the measurement (gave up waiting)")
                return round(busy, 1)


class _Selected:
    """A client connection registered with the process's selector (``self`` is the key's data)."""

    sel: selectors.BaseSelector
    fd: int
    alive: bool
    writing: bool

    def want_write(self, wanted: bool) -> None:
        """Watch the socket for room to write while output waits, and only then."""
        if self.alive and wanted != self.writing:
            self.writing = wanted
            self.sel.modify(self.fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if wanted else 0), self)

    def lost(self) -> None:
        if self.alive:
            self.alive = False
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(self.fd)


class Conn(_Selected):
    """One paho client whose socket is driven by the process's selector (no paho thread)."""

    def __init__(self, sel: selectors.BaseSelector, cid: str, port: int, subs: list[str], on_message: Any) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.sel, self.subs, self.subscribed, self.alive, self.writing = sel, subs, not subs, True, False
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=True, protocol=paho.MQTTv311)
        c.max_inflight_messages_set(1000)
        c.on_connect, c.on_message = self._on_connect, on_message
        c.on_subscribe = lambda *_a: setattr(self, "subscribed", True)
        self.client = c
        c.connect("127.0.0.1", port, keepalive=300)
        sock = c.socket()
        assert sock is not None  # connect() is synchronous
        self.fd = sock.fileno()
        sel.register(self.fd, selectors.EVENT_READ, self)

    def _on_connect(self, client: Any, *_a: Any) -> None:
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # else request/response stalls 40 ms
        if self.subs:
            client.subscribe([(t, 1) for t in self.subs])

    def read(self) -> bool:
        return bool(self.client.loop_read() == 0)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, 1)
        self.flush()

    def flush(self) -> None:
        c = self.client
        if self.alive and c.want_write() and c.loop_write() != 0:
            self.lost()
        self.want_write(bool(c.want_write()))

    def close(self) -> None:
        if self.alive:
            with contextlib.suppress(Exception):
                self.client.disconnect()
                self.client.loop_write()
            self.lost()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


class LeanConn(_Selected):
    """A subscriber written straight on a non-blocking socket: the devices of the fan-out, where 100 paho clients
    took more CPU per notification than the bridge and mosquitto together. It speaks what a device needs of MQTT
    3.1.1: CONNECT, one QoS 1 SUBSCRIBE, QoS 1 PUBLISH both ways and PUBACK; ``on_message(payload)``."""

    def __init__(self, sel: selectors.BaseSelector, cid: str, port: int, subs: list[str],
                 on_message: Callable[[bytes], None]) -> None:
        self.sel, self.on_message, self.alive, self.subscribed, self.writing = sel, on_message, True, False, False
        self.inbuf, self.outbuf, self.pid = bytearray(), bytearray(), 0
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connect = packet(0x10, prefixed(b"MQTT") + bytes([4, 0x02]) + (300).to_bytes(2, "big") + prefixed(cid.encode()))
        topics = b"".join(prefixed(t.encode()) + b"\x01" for t in subs)
        self.sock.sendall(connect + packet(0x82, self._next_pid().to_bytes(2, "big") + topics))
        self.sock.setblocking(False)
        self.fd = self.sock.fileno()
        sel.register(self.fd, selectors.EVENT_READ, self)

    def _next_pid(self) -> int:
        self.pid = self.pid % 0xFFFF + 1
        return self.pid

    def read(self) -> bool:
        try:
            data = self.sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        buf = self.inbuf
        buf += data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            head, n, shift, i = buf[pos], 0, 0, pos + 1
            while i < end:
                byte = buf[i]
                n, shift, i = n | (byte & 0x7F) << shift, shift + 7, i + 1
                if not byte & 0x80:
                    break
            else:
                break
            if end - i < n:
                break
            kind, pos = head >> 4, i + n
            if kind == 3:  # PUBLISH
                tlen = buf[i] << 8 | buf[i + 1]
                body = i + 2 + tlen
                if head & 0x06:
                    self.outbuf += b"\x40\x02" + buf[body:body + 2]
                    body += 2
                self.on_message(bytes(buf[body:pos]))
            elif kind == 9:  # SUBACK
                self.subscribed = True
            elif kind == 2 and buf[i + 1] != 0:  # CONNACK refused
                return False
        del buf[:pos]
        return True

    def publish(self, topic: str, payload: bytes) -> None:
        self.outbuf += packet(0x32, prefixed(topic.encode()) + self._next_pid().to_bytes(2, "big") + payload)
        self.flush()

    def flush(self) -> None:
        if self.alive and self.outbuf:
            try:
                sent = self.sock.send(self.outbuf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.lost()
                return
            del self.outbuf[:sent]
        self.want_write(bool(self.outbuf))

    def close(self) -> None:
        if self.alive:
            with contextlib.suppress(OSError):
                self.sock.setblocking(True)
                self.sock.sendall(bytes(self.outbuf) + b"\xe0\x00")  # DISCONNECT
            self.lost()
        self.sock.close()


class Job:
    """One process's share of a run: the window and what was measured in it."""

    def __init__(self) -> None:
        self.t0 = self.start = self.end = float("inf")
        self.count = self.errors = self.notes = self.stale = 0
        self.first_error: Any = None
        self.lat: list[float] = []
        self.note_lat: list[float] = []
        self.calls: list[list[Any]] = []
        self.forwarded: list[str] = []


class Caller:
    def __init__(self, spec: dict[str, Any], port: int, sel: selectors.BaseSelector, job: Job) -> None:
        import cbor2

        self.dumps, self.loads, self.job, self.spec = cbor2.dumps, cbor2.loads, job, spec
        self.tag = os.urandom(4).hex()
        self.n, self.t_sent, self.done, self.attempts = 0, 0.0, False, 0
        self.rid: str | None = None
        self.rng = random.Random(self.tag)
        self.conn = Conn(sel, spec["cid"], port, [spec["sub"]], self.on_message)

    def send(self) -> None:
        s = self.spec
        self.n += 1
        self.rid = f"{self.tag}-{self.n}"
        args = [*s.get("args", []), time.monotonic()] if s.get("stamp") else s.get("args", [])
        payload = self.dumps({"t": "call", "id": self.rid, "session": s["session"], "method": s.get("method", "incr"),
                              "args": args})
        ca = (f"k{self.rng.randrange(s['ca_count'])}" if "ca_count" in s
              else s["cas"][(self.n - 1) % len(s["cas"])] if "cas" in s else s.get("ca"))
        self.t_sent = time.monotonic()
        self.attempts, self.last = 0, (s["pub"].format(ca=ca), payload)
        self.again(self.t_sent)

    def again(self, now: float) -> None:
        self.attempts, self.t_last = self.attempts + 1, now
        self.conn.publish(*self.last)

    def on_message(self, _c: Any, _u: Any, m: Any) -> None:
        now, job = time.monotonic(), self.job
        try:
            msg = self.loads(m.payload)
        except Exception:
            msg = None
        if type(msg) is not dict or msg.get("id") != self.rid:
            job.stale += 1
            return
        rid, self.rid = self.rid, None
        if job.start <= now < job.end:
            ms = round((now - self.t_sent) * 1000, 4)
            job.count += 1
            job.lat.append(ms)
            if "err" in msg:
                job.errors += 1
                job.first_error = job.first_error or msg["err"]
            if self.spec.get("record"):
                job.calls.append([rid, ms, "err" in msg, now, msg.get("ok"), self.attempts])
        self.done = self.n >= self.spec.get("calls", float("inf"))
        if now < job.end and not self.done:
            self.send()


class Device:
    def __init__(self, spec: dict[str, Any], port: int, sel: selectors.BaseSelector, job: Job) -> None:
        import cbor2

        self.dumps, self.loads, self.job, self.spec = cbor2.dumps, cbor2.loads, job, spec
        self.last_msg = 0.0
        self.conn = LeanConn(sel, spec["cid"], port, [spec["sub"]], self.on_message)

    def on_message(self, payload: bytes) -> None:
        now = self.last_msg = time.monotonic()
        msg = self.loads(payload)
        if type(msg) is not dict or msg.get("t") != "note":
            return
        if self.job.start <= now < self.job.end:
            self.job.notes += 1
            self.job.note_lat.append(round((now - msg["args"][0]) * 1000, 4))
        if msg["seq"] % self.spec.get("ack_every", 10) == 0:
            self.conn.publish(self.spec["ack_topic"], self.dumps(
                {"t": "ack", "session": self.spec["session"], "seq": msg["seq"]}))


def _pump(sel: selectors.BaseSelector, timeout: float) -> None:
    for key, mask in sel.select(timeout):
        if mask & selectors.EVENT_READ and not key.data.read():
            key.data.lost()
        key.data.flush()


def run_job(job_spec: dict[str, Any], out: Any, inp: Any) -> dict[str, Any]:
    import cbor2

    sel, job, port = selectors.DefaultSelector(), Job(), job_spec["port"]
    callers: list[Caller] = []
    devs: list[Device] = []
    conns: list[Conn | LeanConn] = []

    def on_forward(_c: Any, _u: Any, m: Any) -> None:
        with contextlib.suppress(Exception):
            job.forwarded.append(cbor2.loads(m.payload)["id"])

    try:
        for spec in job_spec["clients"]:
            if spec["kind"] == "rr":
                callers.append(Caller(spec, port, sel, job))
            elif spec["kind"] == "dev":
                devs.append(Device(spec, port, sel, job))
            else:
                conns.append(Conn(sel, spec["cid"], port, [spec["sub"]], on_forward))
        conns += [c.conn for c in callers] + [d.conn for d in devs]
        deadline = time.monotonic() + 30
        while not all(c.subscribed for c in conns):
            if time.monotonic() > deadline or not all(c.alive for c in conns):
                raise RuntimeError("clients did not connect/subscribe")
            _pump(sel, 0.05)
        out.write('{"ready": true}\n')
        out.flush()
        go = json.loads(inp.readline() or '{"abort": true}')
        if go.get("abort"):
            return {"aborted": True}
        job.t0, job.start, job.end = go["t0"], go["start"], go["end"]
        while time.monotonic() < job.t0:
            _pump(sel, max(0.0, min(0.01, job.t0 - time.monotonic())))
        for c in callers:
            c.send()
        retrying = [c for c in callers if c.spec.get("retry")]
        while time.monotonic() < job.end and not (callers and all(c.done for c in callers)):
            _pump(sel, 0.02 if retrying else 0.05)
            for c in retrying:
                if c.rid is not None and time.monotonic() - c.t_last >= c.spec["retry"]:
                    c.again(time.monotonic())
        t_end = min(time.monotonic(), job.end)
        drain = time.monotonic() + 10  # the last replies, queued notifications, trailing forwarded copies
        while any(c.rid is not None and c.conn.alive for c in callers) and time.monotonic() < drain:
            _pump(sel, 0.05)
        last = time.monotonic()
        while time.monotonic() < drain and (devs or conns) and time.monotonic() - max(
                [last, *(d.last_msg for d in devs)]) < 0.3:
            _pump(sel, 0.05)
        return {"count": job.count, "errors": job.errors, "first_error": job.first_error, "lat": job.lat,
                "notes": job.notes, "note_lat": job.note_lat, "stale": job.stale, "calls": job.calls,
                "forwarded": job.forwarded, "elapsed": t_end - job.start,
                "lost": sum(1 for c in callers if c.rid is not None),
                "dead": sum(1 for c in conns if not c.alive)}
    finally:
        for conn in conns:
            conn.close()
        sel.close()


def worker_main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops us
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            return
        try:
            res = run_job(msg, sys.stdout, sys.stdin)
        except Exception as exc:  # reported to the orchestrator
            res = {"error": repr(exc)}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()


class Workers:
    """The pool of load-generator processes; each runs one job (its share of the clients) at a time."""

    def __init__(self, count: int = PROCS) -> None:
        self.procs = [spawn([PYTHON, __file__], session=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True) for _ in range(count)]

    def _send(self, p: subprocess.Popen[Any], msg: dict[str, Any]) -> None:
        assert p.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            p.stdin.write(json.dumps(msg) + "\n")
            p.stdin.flush()

    def _read(self, p: subprocess.Popen[Any]) -> dict[str, Any]:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise RuntimeError("a load generator died")
        return dict(json.loads(line))

    def run(self, port: int, specs: list[dict[str, Any]], warmup: float, duration: float,
            probes: dict[str, Callable[[], float]] | None = None, procs_for: int | None = None,
            on_start: Callable[[], Any] = lambda: None, on_end: Callable[[], Any] = lambda: None,
            until_done: bool = False) -> dict[str, Any]:
        """Spread ``specs`` over the processes, run them for warmup + duration (``until_done``: or until every
        caller made its ``calls``); merge the results. ``probes``: CPU seconds of what to watch (name -> function);
        the result has their CPU use in the window (``cpu_s``, ``cpu_pct`` of one core), plus the load generators'
        (``load``), the whole machine's (``machine``) and what neither accounts for (``others``)."""
        if until_done:  # one process, so that it ends when its callers are done
            procs_for = 1
        used = self.procs[: max(1, min(len(self.procs), procs_for or len(specs)))]
        shares: list[list[dict[str, Any]]] = [[] for _ in used]
        for i, spec in enumerate(specs):
            shares[i % len(used)].append(spec)
        jobs = [(p, s) for p, s in zip(used, shares, strict=True) if s]
        for p, share in jobs:
            self._send(p, {"cmd": "job", "port": port, "clients": share})
        readies = [self._read(p) for p, _ in jobs]
        failed = [r for r in readies if not r.get("ready")]
        t0 = time.monotonic() + 0.1
        go = {"abort": True} if failed else {"t0": t0, "start": t0 + warmup, "end": t0 + warmup + duration}
        for p, _ in jobs:
            self._send(p, go)
        if failed:
            for (p, _), ready in zip(jobs, readies, strict=True):
                if ready.get("ready"):
                    self._read(p)  # its {"aborted": true}
            raise RuntimeError(f"load generator failed: {failed[0]}")
        probes = {**(probes or {}), "load": lambda: sum(cpu_seconds(p.pid) for p, _ in jobs),
                  "machine": lambda: machine_cpu()[0]}
        time.sleep(max(0.0, go["start"] - time.monotonic()))
        cpu0, w0 = {k: f() for k, f in probes.items()}, time.monotonic()
        on_start()
        if not until_done:
            time.sleep(max(0.0, go["end"] - time.monotonic()))
        cpu1, w1 = {k: f() for k, f in probes.items()}, time.monotonic()
        on_end()
        results = [self._read(p) for p, _ in jobs]
        errs = [r for r in results if "error" in r]
        if errs:
            raise RuntimeError(f"load generator failed: {errs[0]['error']}")
        merged: dict[str, Any] = {"first_error": next((r["first_error"] for r in results if r["first_error"]), None),
                                  "elapsed": max(r["elapsed"] for r in results), "load_procs": len(jobs)}
        for k in ("count", "errors", "notes", "stale", "lost", "dead", "lat", "note_lat", "calls", "forwarded"):
            merged[k] = sum((r[k] for r in results), [] if isinstance(results[0][k], list) else 0)
        cpu = {k: cpu1[k] - cpu0[k] for k in cpu1}
        cpu["others"] = max(0.0, cpu["machine"] - sum(v for k, v in cpu.items() if k != "machine"))
        merged["cpu_s"] = cpu
        merged["cpu_pct"] = {k: round(100 * v / (w1 - w0), 1) for k, v in cpu.items()}
        return merged

    def close(self) -> None:
        for p in self.procs:
            self._send(p, {"cmd": "quit"})
        for p in self.procs:
            stop(p, timeout=5.0)


def options(doc: str, out: str, quick: str, duration: str, warmup: str) -> argparse.ArgumentParser:
    """The options every benchmark has."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / out), help="writes OUT.json and OUT.txt")
    p.add_argument("--duration", type=float, help=f"seconds measured per workload (default {duration})")
    p.add_argument("--warmup", type=float, help=f"seconds of warm-up per workload (default {warmup})")
    p.add_argument("--quiet-threshold", type=float, default=25.0, metavar="PCT",
                   help="before each measurement wait until the machine's busy CPU (%% of one core) is below this")
    p.add_argument("--quiet-wait", type=float, metavar="SECONDS",
                   help="longest wait for a quiet machine per measurement (default 30, quick 5)")
    return p


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def session(args: argparse.Namespace, body: Callable[[Path], tuple[str, dict[str, Any]] | int],
            mosquitto: bool = True) -> int:
    """Run ``body(temp dir)``: it returns the report and the data (written to OUT.txt and OUT.json), or an exit
    status. Every process started with tests.procs.spawn is stopped at the end, also on Ctrl-C or an error."""
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (5.0 if args.quick else 30.0)
    if MOSQUITTO is None and mosquitto:
        print("error: mosquitto is not installed (apt-get install mosquitto)", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="ca-bench-"))
    try:
        got = body(tmp)
        if isinstance(got, int):
            return got
        text, data = got
        print("\n" + text, flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        data["meta"] |= {"quick": args.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count(),
                         "load_procs": PROCS, "python": sys.version.split()[0]}
        out.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str) + "\n")
        out.with_suffix(".txt").write_text(text + "\n")
        log(f"wrote {out.with_suffix('.txt')} and {out.with_suffix('.json')}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything", file=sys.stderr, flush=True)
        return 130
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a second Ctrl-C must not stop the cleanup
            signal.signal(sig, signal.SIG_IGN)
        stop_all()
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    worker_main()
