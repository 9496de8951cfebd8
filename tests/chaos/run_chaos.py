"""Seeded chaos run of the hellopersistent workload: devices, bridge and broker killed at random.

    .venv/bin/python tests/chaos/run_chaos.py --seed 7 --duration 60 --devices 4 --broker mosquitto
    .venv/bin/python tests/chaos/run_chaos.py --seed 7 --duration 1800 --items 500   # a long soak

Each device buys a list of items through a persistent session (begin / buy(nonce, index, item) / end), crashing
at random by itself (before a buy, and while a buy is in flight), and is also SIGKILLed from outside; it restarts
and resumes from the memento. Devices alternate between CPython and the real MicroPython interpreter. Meanwhile
the bridge is SIGKILLed at random moments or armed to kill itself at an exact dangerous point (inside the group
commit, after commit before publish, after publish), and the broker is restarted (mosquitto; with the embedded
amqtt broker, a bridge kill restarts the broker too). A watcher per CA listens to the "watch" session.

At the end: every item bought exactly once, each watcher saw every purchase exactly once and in order, and the
store passes its integrity check. Prints what it did and the anomalies (0 is the only good answer).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bridge import codec  # noqa: E402
from bridge.store.sqlite import SQLiteStore  # noqa: E402
from tests.procs import BridgeProcess, Mosquitto, free_port, stop, stored_states  # noqa: E402
from tests.skips import missing  # noqa: E402

MICROPYTHON = Path(sys.executable).parent / "micropython"
FAULT_POINTS = ["in_commit", "after_commit", "after_publish", "in_apply"]


def use_micropython(wanted: bool) -> bool:
    """Whether half the devices run under MicroPython: wanted but not installed is a missing dependency (a skip, a
    failure under CI, an error from the command line: pass --no-micropython), never a silent CPython-only run."""
    if wanted and not MICROPYTHON.exists():
        missing(f"micropython is not installed at {MICROPYTHON}", "pip install -e '.[test]', or --no-micropython")
    return wanted


@dataclass
class Device:
    ca: str
    interpreter: list[str]
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    runs: int = 0
    exits_nonzero: int = 0
    killed: int = 0
    done: bool = False
    output: list[str] = field(default_factory=list)


@dataclass
class Report:
    seed: int
    duration: float = 0.0
    devices: int = 0
    items_per_device: int = 0
    device_runs: int = 0
    device_self_crashes: int = 0
    device_kills: int = 0
    bridge_kills: int = 0
    bridge_fault_points: int = 0
    broker_restarts: int = 0
    purchases: int = 0
    notifications: int = 0
    anomalies: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"chaos seed={self.seed}: {self.duration:.0f}s, {self.devices} devices x {self.items_per_device} "
                "items, "
                f"{self.device_runs} device runs, {self.device_self_crashes} device self-crashes, "
                f"{self.device_kills} device kills, {self.bridge_kills} bridge kills, "
                f"{self.bridge_fault_points} bridge deaths at fault points, {self.broker_restarts} broker restarts, "
                f"{self.purchases} purchases, {self.notifications} notifications, anomalies={len(self.anomalies)}")


def run(seed: int, duration: float, devices: int, items: int, broker: str, workdir: Path,
        micropython: bool = True, first_bridge_kills: int = 0) -> Report:
    """``first_bridge_kills``: the first chaos events kill the bridge (a short run is over before chance gets there
    on a fast machine); the rest are drawn at random."""
    use_mp = use_micropython(micropython)  # before anything starts
    rng = random.Random(seed)
    report = Report(seed, devices=devices, items_per_device=items)
    mosq = None
    if broker == "mosquitto":
        mosq = Mosquitto(workdir)
        mosq.start()
    bridge = BridgeProcess("tests/chaos/app.py:ChaosShop", workdir / "chaos.db",
                           broker_port=mosq.port if mosq else None, extra=["--pulse", "0"])
    if mosq is None:
        bridge.port = free_port()
    bridge.start()
    port = bridge.port
    devs: list[Device] = []
    for i in range(devices):
        ca = f"chaos-{seed}-{i}"
        env = {**os.environ, "CA_NAME": ca, "CA_PORT": str(port), "ITEMS": str(items), "CRASH": "20",
               "CRASH_MID": "12", "SEED": str(seed * 100 + i), "PYTHONPATH": str(ROOT)}
        if use_mp and i % 2 == 1:
            env["MICROPYPATH"] = f".frozen:{ROOT}"
            interp = [str(MICROPYTHON), "-X", "heapsize=256k"]
        else:
            interp = [sys.executable]
        devs.append(Device(ca, interp, env))
    def watcher(ca: str) -> subprocess.Popen[bytes]:
        with open(workdir / f"{ca}.watcher.log", "wb") as log:  # the child keeps its own copy of the descriptor
            return subprocess.Popen([sys.executable, str(ROOT / "tests/chaos/watcher.py"), ca, "watch", str(port)],
                                    cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                    stdout=subprocess.PIPE, stderr=log)

    watchers = {d.ca: watcher(d.ca) for d in devs}
    started = time.monotonic()
    deadline = started + duration
    next_chaos = started + rng.uniform(0.5, 2.0)
    try:
        while True:
            now = time.monotonic()
            for d in devs:
                _tend(d, report)
            if all(d.done for d in devs):
                break
            if now > deadline + 120:
                report.anomalies.append("devices did not finish within the duration + 120 s")
                break
            if bridge.proc is not None and bridge.proc.poll() is not None:  # died at an armed fault point
                if bridge.proc.returncode == -signal.SIGKILL and "killing the bridge" in bridge.logs()[-4000:]:
                    report.bridge_fault_points += 1
                else:
                    report.anomalies.append(f"bridge exited by itself with {bridge.proc.returncode}")
                bridge.proc = None
                bridge.env = {}
                bridge.start()
            if now >= next_chaos and now < deadline:
                next_chaos = now + rng.uniform(0.3, 2.0)
                action = rng.random()
                if report.bridge_kills < first_bridge_kills:
                    action = 0.5  # a bridge kill
                if action < 0.35:
                    victim = rng.choice(devs)
                    if victim.proc is not None and victim.proc.poll() is None:
                        victim.proc.kill()
                        victim.killed += 1
                        report.device_kills += 1
                elif action < 0.6:
                    bridge.kill()
                    report.bridge_kills += 1
                    time.sleep(rng.uniform(0.0, 0.5))
                    bridge.env = {"CA_BRIDGE_FAULTS": f"{rng.choice(FAULT_POINTS)}={rng.randint(1, 25)}"} \
                        if rng.random() < 0.5 else {}
                    bridge.start()
                elif action < 0.75 and mosq is not None:
                    mosq.stop()
                    report.broker_restarts += 1
                    time.sleep(rng.uniform(0.1, 1.0))
                    mosq.start()
            time.sleep(0.05)
        report.duration = time.monotonic() - started
        bridge.env = {}
        if bridge.proc is None or bridge.proc.poll() is not None:
            bridge.proc = None
            bridge.start()
        _verify(devs, watchers, bridge, items, report)
    finally:
        for d in devs:
            if d.proc is not None:
                stop(d.proc, signal.SIGKILL)
        for w in watchers.values():
            stop(w, signal.SIGKILL)
        bridge.kill()
        if mosq is not None:
            mosq.stop()
    return report


def _tend(d: Device, report: Report) -> None:
    if d.done:
        return
    if d.proc is not None:
        code = d.proc.poll()
        if code is None:
            return
        out = d.proc.stdout.read() if d.proc.stdout else ""
        d.output.append(out[-2000:])
        d.proc = None
        if code == 0:
            d.done = True
            return
        if code > 0:
            report.device_self_crashes += 1
    d.runs += 1
    report.device_runs += 1
    env = {**d.env, "RUN": str(d.runs)}
    d.proc = subprocess.Popen([*d.interpreter, str(ROOT / "examples/hellopersistent/device.py")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _verify(devs: list[Device], watchers: dict[str, subprocess.Popen], bridge: BridgeProcess, items: int,
            report: Report) -> None:
    expected_items = [f"item{i:03d}" for i in range(items)]
    states = stored_states(bridge.db)  # the SQLite file and its redo log, as `ca-bridge inspect` reads them
    for d in devs:
        state = states.get(d.ca)
        counters = codec.loads(state)["counters"] if state else {}
        wrong = {k: v for k, v in counters.items() if v != 1}
        missing = [k for k in expected_items if k not in counters]
        if wrong or missing or len(counters) != items:
            report.anomalies.append(f"{d.ca}: counts off {wrong} missing {missing[:5]}")
        report.purchases += sum(counters.values())
    for ca, w in watchers.items():
        lines = _read_lines(w, items, timeout=30)
        seqs = [x["seq"] for x in lines]
        got = [tuple(x["args"]) for x in lines]
        want = [(i, f"item{i:03d}") for i in range(items)]
        report.notifications += len(lines)
        if got != want:
            dup = len(got) - len(set(got))
            first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                         min(len(got), len(want)))
            report.anomalies.append(f"{ca}: watcher saw {len(got)} notifications ({dup} duplicates), "
                                    f"first difference at {first}")
        elif seqs != list(range(1, items + 1)):
            report.anomalies.append(f"{ca}: sequence numbers not 1..{items}")
    problems = SQLiteStore(bridge.db).integrity_check()
    report.anomalies += [f"store: {p}" for p in problems]


def _read_lines(proc: subprocess.Popen, count: int, timeout: float) -> list[dict]:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    lines: list[dict] = []
    buf = b""
    deadline = time.monotonic() + timeout
    while len(lines) < count and time.monotonic() < deadline:
        chunk = proc.stdout.read() or b""
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                lines.append(json.loads(line))
        if not chunk:
            time.sleep(0.05)
    time.sleep(0.5)  # anything beyond the expected count is a duplicate: give it a chance to show
    buf += proc.stdout.read() or b""
    lines += [json.loads(x) for x in buf.split(b"\n") if x.strip()]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--duration", type=float, default=60, help="seconds of chaos (devices then finish)")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--items", type=int, default=0, help="items each device buys (default: 25 per second of chaos)")
    p.add_argument("--broker", choices=["mosquitto", "amqtt"], default="mosquitto")
    p.add_argument("--no-micropython", action="store_true")
    p.add_argument("--json", action="store_true", help="print the report as JSON too")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs, store) for a post-mortem")
    a = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    try:
        items = a.items or max(30, int(a.duration * 25))
        report = run(a.seed, a.duration, a.devices, items, a.broker, workdir, not a.no_micropython)
    finally:
        if a.keep:
            print("chaos: kept", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report.line())
    for anomaly in report.anomalies:
        print("ANOMALY:", anomaly)
    if a.json:
        print(json.dumps(report.__dict__))
    return 1 if report.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
