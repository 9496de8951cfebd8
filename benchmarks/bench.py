#!/usr/bin/env python3
"""The ca-bridge benchmark: the bridge beside a lean echo service, on mosquitto and on the embedded amqtt broker.

    .venv/bin/python benchmarks/bench.py [--quick] [--broker mosquitto|amqtt|both] [--out benchmarks/results/bench]
    .venv/bin/python benchmarks/bench.py --yardstick          # the shared yardstick's table first (the headline)
    .venv/bin/python benchmarks/bench.py --profile py-spy|cprofile|stages [--profile-out /tmp/profile]
    .venv/bin/python benchmarks/bench.py --fanout [--rounds 3] [--against OTHER_CHECKOUT]   # the fan-out alone

The headline ratio comes from the shared yardstick (../shared/bench/yardstick.sh: MQTT.js load, a Node echo
beside the bridge); ``--yardstick`` runs it and puts its table on top. This script's own matrix, on the same broker
and with the same paho load generator (loadgen.py): the yardstick's Node echo service, the bridge's durable incr
(N CAs, one shared CA), notification fan-out, scale (start-up and RSS with up to 100k CAs, calls over 10k active
CAs) and durability (SQLite FULL vs NORMAL). benchmarks/README.md says what each workload measures and how.
Nothing asserts on timings; every process started is stopped at the end (also on Ctrl-C or an error).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [p for p in (str(HERE), str(ROOT)) if p not in sys.path]

from loadgen import PROCS, Quiet, Workers, fmt, log, options, pct, session  # noqa: E402
from stages import breakdown, scrape, scrape_with_commits, table  # noqa: E402

from tests.procs import (  # noqa: E402
    PYTHON, BridgeProcess, Mosquitto, cpu_seconds, free_port, rss_mb, settle_rss, spawn, stop, thread_cpu, wait_output)

APP = f"{HERE / 'apps.py'}:Bench"
FANOUT = 100  # sessions notified per fan-out call
YARDSTICKS = [ROOT.parent / "shared/bench/yardstick.sh", ROOT.parent.parent / "shared/bench/yardstick.sh"]
NODE_MODULES = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ca-bridge-yardstick/node_modules"
MOSQUITTO_CONF = "max_queued_messages 100000\nmax_inflight_messages 0\nlog_type error\nlog_type warning\n"
# Real Caf.js on this kind of machine (shared/reference/field-notes.md): its best config (1 ms coalescing) and
# its default one; (calls/s, p50 ms, p99 ms)
CAFJS = {("percA", 1): (556, 1.7, 4.3), ("percA", 16): (3654, 4.1, 9.7), ("shared", 16): (720, 21.7, 33.9)}
CAFJS_DEFAULT = {("percA", 1): 98, ("percA", 16): 1533, ("shared", 16): 95}


def amqtt_main(port: int) -> None:
    """``bench.py _amqtt PORT``: amqtt standalone with the bridge's embedded-broker config (broker_config/)."""
    import asyncio
    import logging

    from bridge.broker import EmbeddedBroker, load_config

    logging.basicConfig(level=logging.WARNING)

    async def run() -> None:
        stop_ = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop_.set)
        async with EmbeddedBroker("127.0.0.1", port, load_config(None)):
            print(f"amqtt broker listening on 127.0.0.1:{port}", flush=True)
            await stop_.wait()

    asyncio.run(run())


def yardstick(path: str | None, quick: bool) -> str | None:
    """Run the shared yardstick from the project's root; its table (None if it is not there or failed)."""
    script = Path(path) if path else next((p for p in YARDSTICKS if p.exists()), None)
    if script is None or not script.exists():
        log(f"no yardstick at {path or ' or '.join(map(str, YARDSTICKS))}")
        return None
    env = {**os.environ, **({"REPS": os.environ.get("REPS", "1"), "DUR": os.environ.get("DUR", "4")} if quick else {})}
    log(f"running the yardstick {script} (REPS={env.get('REPS', 3)}, DUR={env.get('DUR', 8)})")
    done = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0 or "|" not in done.stdout:
        log(f"the yardstick failed ({done.returncode})")
        return None
    return done.stdout.strip()


def populate(db: Path, count: int, sessions: list[str] | tuple[str, ...] = ()) -> None:
    """Write ``count`` CAs k0..k<count-1> (state {"n": 0}) and the given sessions of each, in the store's schema."""
    import cbor2

    from bridge.store.sqlite import SCHEMA

    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=OFF")
        con.executescript(SCHEMA)
        # a session row as bridge.session.SessionData.meta() writes it: limit, pinned, nonce, memento, next_seq, codec
        meta, state = cbor2.dumps([5, False, None, None, 1, "cbor"]), cbor2.dumps({"n": 0})
        con.execute("BEGIN")
        con.executemany("INSERT INTO ca (name, state) VALUES (?, ?)", ((f"k{i}", state) for i in range(count)))
        con.executemany("INSERT INTO session (ca, sid, meta) VALUES (?, ?, ?)",
                        ((f"k{i}", s, meta) for i in range(count) for s in sessions))
        con.execute("COMMIT")
    finally:
        con.close()


def specs(kind: str, n: int, run: str, count: int = 0) -> list[dict[str, Any]]:
    """Client specs: ``percA`` (client i calls CA i), ``shared`` (one CA), ``random`` (a random CA of ``count``
    pre-populated ones per call), ``fanout`` (a driver and ``n`` devices)."""
    if kind == "fanout":
        ca = f"{run}-fan"
        driver = {"kind": "rr", "cid": f"{run}-driver", "ca": ca, "pub": "ca/{ca}/in", "session": "driver",
                  "sub": f"ca/{ca}/session/driver", "method": "fanout", "args": [n], "stamp": True}
        return [driver, *({"kind": "dev", "cid": f"{run}-d{i}", "sub": f"ca/{ca}/session/d{i}", "session": f"d{i}",
                           "ack_topic": f"ca/{ca}/in", "ack_every": 10} for i in range(n))]
    out = []
    for i in range(n):
        ca = f"{run}-shared" if kind == "shared" else f"{run}-{i}"
        out.append({"kind": "rr", "cid": f"{run}-c{i}", "ca": ca, "pub": "ca/{ca}/in", "session": f"c{i}",
                    "sub": f"ca/{'+' if kind == 'random' else ca}/session/c{i}"})
        if kind == "random":
            out[-1]["ca_count"] = count
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        quick = self.quick = args.quick
        self.args, self.tmp = args, tmp
        self.ns = [1, 16] if quick else [1, 4, 16, 32]
        self.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.5)
        self.duration = args.duration or (2.0 if quick else 5.0)
        self.scale_counts = [0, 1000, 10000] if quick else [0, 1000, 10000, 100000]
        self.active = args.active or 10000
        self.durab_rounds = 1 if quick else 2
        self.wait_quiet = Quiet(args.quiet_threshold, args.quiet_wait, 20.0 if quick else 150.0, log)
        self.workers = Workers(PROCS)
        self.rows: list[dict[str, Any]] = []
        self.scale: list[dict[str, Any]] = []
        self.runs = self.bridges = 0

    def run_id(self, what: str) -> str:
        self.runs += 1
        return f"{what}{self.runs}-{os.urandom(2).hex()}"

    def probe(self, ca: str) -> dict[str, Any]:
        """One call to ``ca`` from a fresh client (its latency tells when the bridge answers)."""
        return {"kind": "rr", "cid": self.run_id("probe"), "ca": ca, "pub": "ca/{ca}/in", "session": "probe",
                "sub": f"ca/{ca}/session/probe", "calls": 1}

    def bridge(self, broker: str, port: int, db: Path, sync: str = "FULL", wrap: list[str] | None = None,
               metrics: int | None = None, source: str | None = None) -> BridgeProcess:
        """A bridge on ``broker``; ``metrics``: serve /metrics on that port; ``source``: run the bridge package of
        another checkout (put first on its PYTHONPATH)."""
        self.bridges += 1
        extra = ["--pulse", "0", "--synchronous", sync, "--max-sessions", "1000",
                 "--client-id", f"bench-{os.getpid()}-{self.bridges}"]
        if metrics is not None:
            extra += ["--metrics", f"127.0.0.1:{metrics}"]
        env = {"PYTHONPATH": os.pathsep.join([source, *filter(None, [os.environ.get("PYTHONPATH")])])} \
            if source else None
        if source and not wrap:
            wrap = [PYTHON, "-P"]  # no current directory first on sys.path: the bridge comes from PYTHONPATH
        b = BridgeProcess(APP, db, broker_port=port if broker == "mosquitto" else None, log_level="WARNING",
                          wrap=wrap, extra=extra, env=env)
        return b.start(timeout=300)

    def measure(self, broker: str, kind: str, n: int, port: int, clients: list[dict[str, Any]],
                pids: dict[str, int], label: str, metrics: int | None = None, **extra: Any) -> dict[str, Any]:
        """One measured window; ``metrics``: the bridge's /metrics port, scraped at the start and the end of the
        window for the stage breakdown (row ``stages``)."""
        extra["busy_before"] = self.wait_quiet()
        snaps: list[Any] = []
        hook = (lambda: snaps.append(scrape(metrics))) if metrics is not None else (lambda: None)
        r = self.workers.run(port, clients, self.warmup, self.duration, {k: (lambda p=p: cpu_seconds(p))
                             for k, p in pids.items()}, PROCS if kind == "fanout" else None, on_start=hook,
                             on_end=hook)
        if len(snaps) == 2:
            extra["stages"] = breakdown(*snaps)
        row: dict[str, Any] = {
            "broker": broker, "kind": kind, "n": n, "label": label, "rate": round(r["count"] / self.duration, 1),
            "p50": pct(r["lat"], 0.50), "p99": pct(r["lat"], 0.99), "calls": r["count"], "duration": self.duration,
            **{k: r[k] for k in ("errors", "first_error", "stale", "lost", "dead", "load_procs")},
            "cpu_pct": {k: v for k, v in r["cpu_pct"].items() if k != "machine"}, **extra}
        main = next(iter(pids))
        if r["count"]:
            row["cpu_us_per_call"] = round(1e6 * r["cpu_s"][main] / r["count"], 1)
        msg = f"{broker:9} {label:28} N={n:<3} {row['rate']:8.0f}/s  p50 {fmt(row['p50'])} ms  p99 {fmt(row['p99'])} ms"
        if kind == "fanout":
            row.update(notes_rate=round(r["notes"] / self.duration, 1), note_p50=pct(r["note_lat"], 0.5),
                       note_p99=pct(r["note_lat"], 0.99))
            if r["notes"]:
                row["cpu_us_per_note"] = round(1e6 * r["cpu_s"]["bridge"] / r["notes"], 1)
            msg += f"  notes {row['notes_rate']:.0f}/s (p50 {fmt(row['note_p50'])}, p99 {fmt(row['note_p99'])} ms)"
        self.rows.append(row)
        msg += "  cpu: " + " ".join(f"{k} {v:.0f}%" for k, v in row["cpu_pct"].items())
        if r["errors"] or r["lost"] or r["dead"]:
            msg += f"  errors {r['errors']} lost {r['lost']} dead {r['dead']} ({r['first_error']})"
        log(msg)
        return row

    def echo(self, broker: str, port: int, broker_pid: int) -> None:
        script = next((p.parent / "echo.js" for p in YARDSTICKS if (p.parent / "echo.js").exists()), None)
        if script is None or not shutil.which("node") or not (NODE_MODULES / "mqtt").is_dir():
            log(f"no echo baseline: needs node, the yardstick's echo.js and its modules in {NODE_MODULES} (run the "
                "yardstick once: --yardstick)")
            return
        echo = spawn(["node", str(script)], session=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                     env={**os.environ, "PORT": str(port), "NODE_PATH": str(NODE_MODULES)})
        try:
            wait_output(echo, lambda line: "ready" in line, 30)
            for n in self.ns:
                self.measure(broker, "echo", n, port, specs("percA", n, self.run_id("e")),
                             {"echo": echo.pid, "broker": broker_pid}, "echo (Node, no state)")
        finally:
            stop(echo)

    def broker(self, broker: str) -> None:
        log(f"=== {broker} ===")
        mq = Mosquitto(self.tmp, MOSQUITTO_CONF, log=True).start() if broker == "mosquitto" else None
        if mq is not None:
            assert mq.proc is not None
            self.echo(broker, mq.port, mq.proc.pid)
        else:  # the echo on a standalone amqtt broker
            port = free_port()
            amqtt = spawn([PYTHON, __file__, "_amqtt", str(port)], session=True, stdout=subprocess.PIPE)
            try:
                wait_output(amqtt, timeout=30)
                self.echo(broker, port, amqtt.pid)
            finally:
                stop(amqtt)

        def start(db: str, sync: str = "FULL") -> tuple[BridgeProcess, dict[str, int]]:
            b = self.bridge(broker, mq.port if mq else 0, self.tmp / db, sync)
            return b, {"bridge": b.pid, **({"broker": mq.proc.pid} if mq and mq.proc else {})}

        # 2. durable incr, FULL; 3. fan-out
        b, pids = start(f"{broker}-full.db")
        log(f"bridge {b.pid} up in {b.startup:.2f}s")
        for kind, label in (("percA", "bridge incr, N CAs"), ("shared", "bridge incr, 1 shared CA")):
            for n in self.ns:
                self.measure(broker, kind, n, b.port, specs(kind, n, self.run_id(kind[0])), pids, label)
        self.measure(broker, "fanout", 1, b.port, specs("fanout", FANOUT, self.run_id("f")), pids,
                     f"fan-out 1 call -> {FANOUT} sessions", sessions=FANOUT)
        self.scale.append({"broker": broker, "what": "after the FULL runs", "cas": None, "rss_mb": rss_mb(b.pid)})
        b.stop()
        # 5. durability: a FULL and a NORMAL bridge side by side, measured alternately (the machine is shared:
        # back-to-back A/B rounds compare better than two distant runs)
        pair = {sync: start(f"{broker}-durab-{sync}.db", sync) for sync in ("FULL", "NORMAL")}
        for rnd in range(1, self.durab_rounds + 1):
            for kind, name in (("percA", "N CAs"), ("shared", "1 shared CA"))[: 1 if self.quick else 2]:
                for sync, (bs, p) in pair.items():
                    self.measure(broker, kind, 16, bs.port, specs(kind, 16, self.run_id("d")), p,
                                 f"durability {sync}: {name}", sync=sync, round=rnd)
        for bs, _ in pair.values():
            bs.stop()
        # 4. scale: start-up time and memory, then calls/s over 10k active CAs
        for count in self.scale_counts:
            db = self.tmp / f"{broker}-scale-{count}.db"
            populate(db, count)
            b, _ = start(db.name)
            rss_listen = rss_mb(b.pid)
            r = self.workers.run(b.port, [self.probe("k0" if count else "new0")], 0.0, 300.0, until_done=True)
            ready = b.startup + r["elapsed"]
            self.scale.append({"broker": broker, "what": "start-up", "cas": count, "startup_s": round(b.startup, 3),
                               "ready_s": round(ready, 3), "rss_listen_mb": round(rss_listen, 1),
                               "rss_mb": round(settle_rss(b.pid), 1)})
            log(f"{broker:9} scale {count:>6} CAs: listening after {b.startup:.2f}s, first reply by {ready:.2f}s, "
                f"RSS {self.scale[-1]['rss_mb']:.1f} MB (at listening {rss_listen:.1f} MB)")
            b.stop()
        db = self.tmp / f"{broker}-active-{self.active}.db"
        populate(db, self.active, [f"c{i}" for i in range(16)])
        b, pids = start(db.name)
        self.workers.run(b.port, [self.probe("k1")], 0.0, 300.0, until_done=True)  # the resume hooks have run
        self.scale.append({"broker": broker, "what": f"before the {self.active} active-CA run (16 sessions each)",
                           "cas": self.active, "rss_mb": round(settle_rss(b.pid), 1), "startup_s": b.startup})
        self.measure(broker, "active", 16, b.port, specs("random", 16, self.run_id("r"), self.active), pids,
                     f"bridge incr, random of {self.active} CAs", cas=self.active)
        self.scale.append({"broker": broker, "what": f"after the {self.active} active-CA run", "cas": self.active,
                           "rss_mb": round(rss_mb(b.pid), 1)})
        b.stop()
        if mq is not None:
            mq.stop()


def find(rows: list[dict[str, Any]], broker: str, kind: str, n: int) -> dict[str, Any] | None:
    return next((r for r in rows if (r["broker"], r["kind"], r["n"], r.get("sync")) == (broker, kind, n, None)), None)


def report(rows: list[dict[str, Any]], scale: list[dict[str, Any]]) -> str:
    out: list[str] = []
    w = out.append
    for b in dict.fromkeys(r["broker"] for r in rows):
        w(f"\n== {b} ==  (rate = round trips/s; x echo = rate / the echo's at the same N: the echo is the broker, "
          "a lean Node service and this paho load generator together, not the bridge's ceiling)")
        w(f"{'workload':36} {'N':>3} {'rate/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'x echo':>6} {'us/call':>8}  CPU %")
        for r in (r for r in rows if r["broker"] == b):
            base = find(rows, b, "echo", r["n"]) if r["kind"] not in ("echo", "fanout") else None
            ratio = fmt(r["rate"] / base["rate"]) if base and base["rate"] else ""
            w(f"{r['label']:36} {r['n']:>3} {r['rate']:>8.0f} {fmt(r['p50']):>7} {fmt(r['p99']):>7} {ratio:>6} "
              f"{r.get('cpu_us_per_call', ''):>8}  " + " ".join(f"{k}:{v:.0f}" for k, v in r["cpu_pct"].items()))
            if r["kind"] == "fanout":
                w(f"{'   notifications (call to device)':36} {r['sessions']:>3} {r['notes_rate']:>8.0f} "
                  f"{fmt(r['note_p50']):>7} {fmt(r['note_p99']):>7} {'':>6} {r.get('cpu_us_per_note', ''):>8}")
            if r["errors"] or r["lost"] or r["dead"]:
                w(f"   !! errors {r['errors']} lost {r['lost']} dead clients {r['dead']}: {r['first_error']}")
        w("us/call: CPU of the server process (echo or bridge; on amqtt the bridge includes its broker) per call; "
          "CPU %: of one core in the window; load = the load generators; others = what this run did not start")
        for kind, name in (("percA", "16 clients on 16 CAs"), ("shared", "16 clients on 1 shared CA")):
            got = {s: [r for r in rows if (r["broker"], r["kind"], r.get("sync")) == (b, kind, s)]
                   for s in ("FULL", "NORMAL")}
            if all(got.values()):
                (rf, pf), (rn, pn) = ([sum(r[k] or 0 for r in rs) / len(rs) for k in ("rate", "p99")]
                                      for rs in got.values())
                w(f"durability, {name} ({len(got['FULL'])} alternating round(s)): FULL {rf:.0f}/s p99 {pf:.2f} ms "
                  f"vs NORMAL {rn:.0f}/s p99 {pn:.2f} ms: NORMAL/FULL = {rn / rf:.2f}")
        w("vs real Caf.js (1 ms coalescing, its best; Redis without fsync) on this kind of machine:")
        for (kind, n), (rate, p50, p99) in CAFJS.items():
            r = find(rows, b, kind, n)
            if r:
                w(f"   {kind:6} N={n:<3} bridge {r['rate']:6.0f}/s p50 {fmt(r['p50'])} p99 {fmt(r['p99'])}  |  Caf.js "
                  f"{rate:5}/s p50 {p50} p99 {p99}  ->  {r['rate'] / rate:.1f}x (Caf.js default config: "
                  f"{CAFJS_DEFAULT[(kind, n)]}/s)")
        w("scale (start-up = process start until 'listening'; ready = until the first call's reply):")
        ups = {s["cas"]: s for s in scale if s["broker"] == b and s["what"] == "start-up"}
        for s in (s for s in scale if s["broker"] == b):
            w(f"   {s['cas']:>7} CAs: start-up {s['startup_s']:.2f}s  ready {s['ready_s']:.2f}s  RSS {s['rss_mb']:.1f} "
              f"MB (at 'listening' {s['rss_listen_mb']:.1f} MB)" if s["what"] == "start-up"
              else f"   RSS {s['what']}: {s['rss_mb']:.1f} MB")
        if 0 in ups and len(ups) > 1:
            big = max(ups)
            w(f"   ~{(ups[big]['rss_mb'] - ups[0]['rss_mb']) * 1024 / big:.1f} KB of RSS per loaded CA ({big} CAs)")
    return "\n".join(out)


def chart(rows: list[dict[str, Any]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for b, color in (("mosquitto", "tab:blue"), ("amqtt", "tab:orange")):
        for kind, ls, name in (("echo", "-", "Node echo"), ("percA", "--", "bridge, N CAs"),
                               ("shared", ":", "bridge, 1 shared CA")):
            pts = sorted((r["n"], r["rate"], r["p99"]) for r in rows if (r["broker"], r["kind"], r.get("sync")) ==
                         (b, kind, None))
            for ax, i in zip(axes, (1, 2), strict=True):
                if pts:
                    ax.plot([p[0] for p in pts], [p[i] for p in pts], ls=ls, marker="o", color=color,
                            label=f"{b}: {name}")
    for ax, title in zip(axes, ("round trips (calls) / s", "p99 ms (log)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients (sequential request/response each)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle("ca-bridge durable incr beside a Node echo (same broker, same paho load, one machine)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def profile(args: argparse.Namespace, bench: Bench) -> int:
    """Profile the bridge on mosquitto under N clients on N CAs, N on one shared CA, or the fan-out, during the
    measured window only; summarize, then print the CPU per call of each of the bridge's threads, the commits'
    batch size and time, and where the window's calls spent their time (the stage histograms of /metrics).
    py-spy attaches to the running bridge once the warm-up is over; cProfile runs the whole bridge process (main
    thread only) and writes its file when the bridge stops; ``stages`` runs no profiler, only the breakdowns."""
    from profile_summary import summarize_cprofile, summarize_pyspy

    out = Path(args.profile_out)
    raw = out.with_suffix(".raw" if args.profile == "py-spy" else ".prof")
    mq = Mosquitto(bench.tmp, MOSQUITTO_CONF, log=True).start()
    wrap = [PYTHON, "-m", "cProfile", "-o", str(raw)] if args.profile == "cprofile" else None
    mport = free_port()
    b = bench.bridge("mosquitto", mq.port, bench.tmp / "profile.db", wrap=wrap, metrics=mport)
    pid = b.pid  # (b.pid is gone once the bridge has stopped)
    secs = int(args.profile_seconds)
    spy = [str(Path(PYTHON).parent / "py-spy"), "record", "--pid", str(pid),
           "--threads", "--rate", str(args.profile_rate), "--duration", str(secs), "--format", "raw", "-o", str(raw)]
    spies: list[subprocess.Popen[Any]] = []
    snap, batch = scrape_with_commits(mport)
    snaps, batches, threads = [snap], [batch], [thread_cpu(pid)]

    def started() -> None:
        (snaps[0], batches[0]), threads[0] = scrape_with_commits(mport), thread_cpu(pid)
        if args.profile == "py-spy":
            spies.append(spawn(spy, stdout=subprocess.DEVNULL))

    def ended() -> None:
        snap, batch = scrape_with_commits(mport)
        snaps.append(snap)
        batches.append(batch)
        threads.append(thread_cpu(pid))

    n, kind = args.profile_devices, args.profile_workload
    load = specs("percA" if kind == "incr" else kind, FANOUT if kind == "fanout" else n, "prof")
    r = bench.workers.run(mq.port, load, 2.0, secs, {"bridge": lambda: cpu_seconds(pid)},
                          PROCS if kind == "fanout" else None, on_start=started, on_end=ended)
    for p in spies:
        p.wait(60)
    b.stop(30)  # cProfile writes its file when the bridge exits
    what = (f"1 driver calling fanout({FANOUT}), {FANOUT} devices" if kind == "fanout"
            else f"{n} clients on one shared CA" if kind == "shared" else f"{n} clients on {n} CAs")
    text = (f"load: {what}, mosquitto, {r['count'] / secs:.0f} calls/s while profiled"
            + (f" ({r['notes'] / secs:.0f} notifications/s)" if kind == "fanout" else "")
            + f", p99 {fmt(pct(r['lat'], 0.99))} ms, bridge CPU {r['cpu_pct']['bridge']}% of a core, others "
            f"{r['cpu_pct']['others']}%\n")
    text += thread_table(pid, threads[0], threads[-1], r["count"]) + "\n"
    (b0, c0, s0), (b1, c1, s1) = batches[0], batches[-1]
    if b1 > b0:
        text += (f"commits: {b1 - b0:,.0f} batches, {(c1 - c0) / (b1 - b0):.1f} calls each, "
                 f"{1e3 * (s1 - s0) / (b1 - b0):.3f} ms from a batch's start to durable (mean)\n")
    if args.profile != "stages":
        text += (summarize_pyspy if args.profile == "py-spy" else summarize_cprofile)(raw, top=args.profile_top) + "\n"
    text += "\nwhere the calls of the window spent their time (ca_bridge_stage_seconds on /metrics):\n" + \
        table(breakdown(*snaps))
    print(text)
    out.with_suffix(".txt").write_text(text + "\n")
    log((f"raw profile: {raw}; " if args.profile != "stages" else "") + f"summary: {out.with_suffix('.txt')}")
    return 0


def thread_table(pid: int, before: dict[int, tuple[float, float]], after: dict[int, tuple[float, float]],
                 calls: int) -> str:
    """The bridge's CPU per call in the window, by thread: the event loop (the main thread) and the others (the
    SQLite store's log and database threads; thread ids, since Python does not name the system's threads).
    The clock ticks are 10 ms, so a thread needs a few hundred ms of CPU in the window to be measured well."""
    lines = [f"{'bridge thread':22} {'user us/call':>13} {'system us/call':>15}"]
    for tid in sorted(after, key=lambda t: (t != pid, t)):
        (u1, s1), (u0, s0) = after[tid], before.get(tid, (0.0, 0.0))
        if tid != pid and u1 - u0 + s1 - s0 <= 0:
            continue
        name = "event loop (main)" if tid == pid else f"thread {tid}"
        lines.append(f"{name:22} {1e6 * (u1 - u0) / max(calls, 1):>13.1f} {1e6 * (s1 - s0) / max(calls, 1):>15.1f}")
    return "\n".join(lines)


def fanout(args: argparse.Namespace, bench: Bench) -> tuple[str, dict[str, Any]]:
    """The fan-out workload alone on mosquitto, ``--rounds`` times, each time with a fresh bridge (and, with
    ``--against DIR``, alternating with a bridge run from that checkout, so both see the same machine)."""
    mq = Mosquitto(bench.tmp, MOSQUITTO_CONF, log=True).start()
    assert mq.proc is not None
    sources = [("this checkout", str(ROOT)), *([(f"{args.against}", args.against)] if args.against else [])]
    log(f"fan-out: 1 driver calling fanout({FANOUT}), {FANOUT} devices; {args.rounds} round(s) of {bench.duration}s "
        f"(warm-up {bench.warmup}s) per bridge: {', '.join(label for label, _ in sources)}")
    for rnd in range(1, args.rounds + 1):
        for i, (label, src) in enumerate(sources):
            mport = free_port()
            b = bench.bridge("mosquitto", mq.port, bench.tmp / f"fanout-{rnd}-{i}.db", metrics=mport, source=src)
            try:
                row = bench.measure("mosquitto", "fanout", 1, b.port, specs("fanout", FANOUT, bench.run_id("f")),
                                    {"bridge": b.pid, "broker": mq.proc.pid}, f"fan-out ({label})"[:28],
                                    metrics=mport, sessions=FANOUT, source=label, round=rnd)
            finally:
                b.stop()
            if row.get("stages"):
                log("stages:\n" + table(row["stages"]))
    mq.stop()
    lines = [f"fan-out on mosquitto: 1 call -> {FANOUT} sessions, {bench.duration}s windows, notifications "
             "delivered/s (call-to-device p50/p99 ms) per round"]
    for label, _ in sources:
        rows = [r for r in bench.rows if r["source"] == label]
        rates = sorted(r["notes_rate"] for r in rows)
        lines.append(f"  {label}: median {rates[len(rates) // 2]:,.0f}/s; rounds: " + ", ".join(
            f"{r['notes_rate']:,.0f} ({fmt(r['note_p50'])}/{fmt(r['note_p99'])}; bridge CPU "
            f"{r['cpu_pct']['bridge']:.0f}%, {r.get('cpu_us_per_note', '-')} us/note)" for r in rows))
    return "\n".join(lines), {"meta": {"warmup_s": bench.warmup, "duration_s": bench.duration,
                                       "fanout_sessions": FANOUT, "rounds": args.rounds}, "rows": bench.rows}


def main() -> int:
    if sys.argv[1:2] == ["_amqtt"]:
        amqtt_main(int(sys.argv[2]))
        return 0
    p = options(__doc__, "bench", "reduced matrix (about 2 minutes for both brokers)", "5, quick 2", "1.5, quick 0.5")
    p.add_argument("--broker", choices=["mosquitto", "amqtt", "both"], default="both")
    p.add_argument("--yardstick", nargs="?", const="", metavar="SCRIPT", help="run the shared yardstick first "
                   "(default ../shared/bench/yardstick.sh) and put its table on top; --quick sets REPS=1 DUR=4")
    p.add_argument("--active", type=int, help="CAs of the random-CA run (default 10000)")
    p.add_argument("--profile", choices=["py-spy", "cprofile", "stages"],
                   help="instead of the benchmark: profile the bridge on mosquitto (--profile-workload), then print "
                   "its CPU per call by thread, its commits and the calls' stage breakdown (stages: no profiler)")
    p.add_argument("--profile-devices", type=int, default=16, help="clients of the incr and shared workloads")
    p.add_argument("--profile-workload", choices=["incr", "shared", "fanout"], default="incr",
                   help="what runs while profiling: N clients calling incr on N CAs (N: --profile-devices), N on one "
                   "shared CA, or the fan-out")
    p.add_argument("--profile-out", default="/tmp/profile", help="OUT.raw|.prof and OUT.txt")
    p.add_argument("--profile-seconds", type=float, default=20.0)
    p.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--fanout", action="store_true", help="instead of the matrix: only the fan-out, on mosquitto, "
                   "--rounds times (writes OUT.* with --out only)")
    p.add_argument("--rounds", type=int, default=3, help="fan-out rounds (default 3)")
    p.add_argument("--against", metavar="DIR", help="with --fanout: alternate with a bridge run from the checkout "
                   "DIR (e.g. a `git archive` of another commit)")
    args = p.parse_args()

    def body(tmp: Path) -> tuple[str, dict[str, Any]] | int:
        bench = Bench(args, tmp)
        if args.profile:
            return profile(args, bench)
        if args.fanout:
            return fanout(args, bench)
        table = yardstick(args.yardstick or None, args.quick) if args.yardstick is not None else None
        log(f"benchmark ({'quick' if args.quick else 'full'}): N in {bench.ns}, warm-up {bench.warmup}s, measure "
            f"{bench.duration}s each, {PROCS} load-generator processes, {os.cpu_count()} CPUs, temp {tmp}")
        for b in (["mosquitto", "amqtt"] if args.broker == "both" else [args.broker]):
            bench.broker(b)
        if chart(bench.rows, Path(args.out).with_suffix(".png")):
            log(f"drew {Path(args.out).with_suffix('.png')}")
        meta = {"warmup_s": bench.warmup, "duration_s": bench.duration, "fanout_sessions": FANOUT,
                "yardstick": table, "cafjs_best": {f"{k}{n}": v for (k, n), v in CAFJS.items()}}
        return (f"the shared yardstick (the headline; MQTT.js load, Node echo vs the bridge):\n{table}\n"
                if table else "") + report(bench.rows, bench.scale), {"meta": meta, "rows": bench.rows,
                                                                        "scale": bench.scale}

    if args.fanout and "--out" not in sys.argv:  # keep the matrix's committed results
        args.out = str(Path(tempfile.gettempdir()) / "ca-bench-fanout")
    return session(args, body, mosquitto=args.broker != "amqtt" or bool(args.profile) or args.fanout)


if __name__ == "__main__":
    sys.exit(main())
