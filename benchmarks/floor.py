#!/usr/bin/env python3
"""The durable floor: the bridge beside the yardstick's echo and a durable echo, same load, one run (a benchmark:
it prints numbers, it asserts nothing).

    .venv/bin/python benchmarks/floor.py [--reps 3] [--duration 6] [--workloads 1:distinct,16:distinct]
                                         [--bridge PATH/ca-bridge] [--raw FILE.jsonl]

Three servers, each on its own mosquitto configured as the yardstick configures its two, driven in turn by the
yardstick's own load generator (bench.js, MQTT.js devices calling ``incr``, one call outstanding each):

* ``echo``: the yardstick's echo.js, no state and no durability: the transport's ceiling;
* ``durable``: benchmarks/durable_echo.js, the same echo replying only after a record of each call is written and
  flushed as the bridge's redo log writes one (O_DIRECT blocks where allowed, fdatasync, a group commit per turn of
  Node's loop): what "durable before the reply" costs any server, without the bridge's state machine or Python;
* ``bridge``: ``ca-bridge run counter.py:Counter`` with the yardstick's flags (``--synchronous FULL``, the default).

It prints the medians of each workload: calls/s, p50 and p99, the server's CPU per call, and the ratios bridge/echo
(the yardstick's), durable/echo (the share of the ceiling that durability leaves) and bridge/durable. Needs node,
mosquitto, the yardstick's folder (``../shared/bench``, or ``--yardstick DIR``) and its node modules (the yardstick
installs them on its first run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [p for p in (str(HERE), str(ROOT)) if p not in sys.path]

from bench import NODE_MODULES, YARDSTICKS  # noqa: E402

from tests.procs import Mosquitto, is_ready, spawn, stop_all, wait_output  # noqa: E402

CONF = "max_inflight_messages 100\n"  # the yardstick's mosquitto config, beside what tests.procs.Mosquitto writes
TARGETS = ("echo", "durable", "bridge")


def start(tmp: Path, yard: Path, bridge: str) -> dict[str, tuple[int, int, int]]:
    """Start the three servers, each on its own mosquitto; returns target -> (broker port, server pid, broker pid)."""
    node_env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    servers: dict[str, tuple[int, int, int]] = {}
    for target in TARGETS:
        mq = Mosquitto(tmp, CONF).start()
        assert mq.proc is not None
        log = tmp / f"{target}.log"
        if target == "bridge":
            cmd = [bridge, "run", f"{yard}/counter.py:Counter", "--broker", f"mqtt://127.0.0.1:{mq.port}",
                   "--db", str(tmp / "bridge.db"), "--pulse", "0"]
            env, ready = {**os.environ, "PYTHONPATH": str(yard), "PYTHONUNBUFFERED": "1"}, is_ready
        else:
            script = yard / "echo.js" if target == "echo" else HERE / "durable_echo.js"
            cmd = ["node", str(script)]
            env = {**node_env, "PORT": str(mq.port), "LOG": str(tmp / "durable-echo.bin")}
            ready = lambda line: "ready" in line  # noqa: E731
        with open(log, "ab") as err:
            proc = spawn(cmd, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=err)
        print(f"{target}: {wait_output(proc, ready, 30, log).strip()}", file=sys.stderr)
        servers[target] = (mq.port, proc.pid, mq.proc.pid)
    return servers


def run(tmp: Path, yard: Path, target: str, server: tuple[int, int, int], n: int, mode: str,
        duration: float) -> dict[str, Any]:
    port, pid, broker = server
    (tmp / "server.pid").write_text(str(pid))
    (tmp / "broker.pid").write_text(str(broker))
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES), "N": str(n), "MODE": mode, "PORT": str(port),
           "DURATION": str(duration), "WARMUP": "2", "PID_FILE": str(tmp / "server.pid"),
           "BROKER_PID_FILE": str(tmp / "broker.pid"), "LABEL": target}
    done = subprocess.run(["node", str(yard / "bench.js")], env=env, capture_output=True, text=True, check=True)
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    row["target"] = target
    return row


def report(rows: list[dict[str, Any]]) -> str:
    def med(n: int, mode: str, target: str, key: str) -> float:
        vals = [r[key] for r in rows if (r["N"], r["MODE"], r["target"]) == (n, mode, target)]
        return statistics.median(vals) if vals else float("nan")

    lines = ["| workload | calls/s echo / durable / bridge | durable/echo | bridge/durable | bridge/echo "
             "| p50 ms | p99 ms | server CPU us/call | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for n, mode in sorted({(r["N"], r["MODE"]) for r in rows}, key=lambda k: (k[1] != "distinct", k[0])):
        rate = {t: med(n, mode, t, "rate") for t in TARGETS}

        def three(key: str, spec: str, n: int = n, mode: str = mode) -> str:
            return " / ".join(format(med(n, mode, t, key), spec) for t in TARGETS)

        errors = sum(r["errors"] for r in rows if (r["N"], r["MODE"]) == (n, mode))
        lines.append(f"| {n} {mode} | {three('rate', ',.0f')} | {rate['durable'] / rate['echo']:.2f} "
                     f"| {rate['bridge'] / rate['durable']:.2f} | {rate['bridge'] / rate['echo']:.2f} "
                     f"| {three('p50', '.2f')} | {three('p99', '.2f')} | {three('srv_us_per_call', '.0f')} "
                     f"| {errors} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0, help="seconds measured per run (after 2 of warm-up)")
    p.add_argument("--workloads", default="1:distinct,16:distinct", help="N:distinct|shared, comma-separated")
    p.add_argument("--bridge", default=str(ROOT / ".venv/bin/ca-bridge"), help="the ca-bridge executable to run")
    p.add_argument("--yardstick", help="the yardstick's folder (bench.js, echo.js, counter.py)")
    p.add_argument("--raw", help="also write every run as a JSON line here")
    args = p.parse_args()
    yard = Path(args.yardstick) if args.yardstick else next((p.parent for p in YARDSTICKS if p.exists()), None)
    if yard is None or not (yard / "bench.js").exists():
        sys.exit(f"floor.py: no yardstick folder at {args.yardstick or YARDSTICKS[0].parent} (--yardstick DIR)")
    if not shutil.which("node") or not (NODE_MODULES / "mqtt").is_dir():
        sys.exit(f"floor.py: needs node and the yardstick's modules in {NODE_MODULES} (run the yardstick once)")
    workloads = [(int(w.split(":")[0]), w.split(":")[1]) for w in args.workloads.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="floor-") as name:  # as the yardstick's: the system's temporary folder
        tmp = Path(name)
        try:
            servers = start(tmp, yard, args.bridge)
            for rep in range(args.reps):
                for n, mode in workloads:
                    for target in TARGETS:
                        rows.append(run(tmp, yard, target, servers[target], n, mode, args.duration))
                        r = rows[-1]
                        print(f"rep {rep + 1} {n} {mode} {target}: {r['rate']:,.0f} calls/s, p50 {r['p50']} ms, "
                              f"server {r['srv_us_per_call']} us/call", file=sys.stderr)
        finally:
            stop_all()
    if args.raw:
        Path(args.raw).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
