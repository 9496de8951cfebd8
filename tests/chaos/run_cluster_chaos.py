"""Seeded chaos run of a three-bridge cluster on one PostgreSQL and one mosquitto (the hellopersistent workload).

    .venv/bin/python tests/chaos/run_cluster_chaos.py --seed 1 --duration 60 --devices 4
    .venv/bin/python tests/chaos/run_cluster_chaos.py --seed 2 --duration 120 --keep   # logs kept for a post-mortem

Three bridges (nodes b0, b1, b2, `--node-ttl 3`) share a throwaway PostgreSQL (tests/pgserver.py) and subscribe
``$share/ca-bridge/ca/+/in`` on one mosquitto. The devices and watchers are run_chaos's: each device buys a list of
items through a persistent session, crashing by itself at random, and is SIGKILLed from outside; a watcher per CA
listens to the "watch" session. Meanwhile, at random (seeded):

* a bridge is SIGKILLed and restarted with the same --node name: at once (its CAs are freed by the rejoin), after
  a second or two, or only after the TTL has run out (the others take its CAs over);
* a bridge is restarted armed to kill itself at a fault point (CA_BRIDGE_FAULTS: in_commit, after_commit,
  after_publish, in_ack) and restarted again when it does;
* a bridge is frozen (SIGSTOP) for longer than the TTL and then resumed (SIGCONT): a zombie whose CAs were taken
  over while it still holds them in memory; its commits must be refused. Half the time the bridge that took its CAs
  is killed just before it resumes, so that they come back to the zombie (and its stale copies);
* every database connection of the bridges is cut (pg_terminate_backend);
* the broker is restarted (bridges and devices reconnect; requests in flight are lost and retried).
At least one bridge is always running (not killed, frozen or starting) when another is taken down.

At the end: every item bought exactly once (read from PostgreSQL), every watcher saw every purchase exactly once
and in order, the database is consistent (notifications without a session, the watch queue, owners), and no
bridge died other than at an armed fault point. Prints what it did and the anomalies (0 is the only good answer).
A spy MQTT client counts the requests forwarded between bridges (``ca/_fwd/#``); ownership moves are read from the
``epoch`` column (each claim by a new owner increments it); TTL takeovers are the CAs of a killed or frozen bridge
that another one owned when it came back.

Options worth knowing: ``--pulse 0.5`` runs the shop with a no-op pulse, so that the bridges also adopt orphaned
CAs in their membership loop (see repro_adopt_stale_actor.py); ``--spare-creation`` holds the chaos back until
every CA has committed its first state (see repro_sync_before_init.py); ``-v`` prints each action as it happens.
The bridges run this checkout's code, and a bridge restarted mid-run picks up whatever is on disk then: while
bridge/ is being edited, run a copy (e.g. ``tar`` the tree to /tmp and run the runner from there).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bridge import codec  # noqa: E402
from bridge.session import SessionData  # noqa: E402
from bridge.store.postgres import PostgresStore  # noqa: E402
from tests.chaos.run_chaos import MICROPYTHON, Device, _read_lines, _tend, use_micropython  # noqa: E402
from tests.procs import BridgeProcess, Mosquitto, stop  # noqa: E402
from tests.pgserver import PostgresServer  # noqa: E402

APP = "tests/chaos/app.py:ChaosShop"
PULSING_APP = "tests/chaos/cluster_app.py:PulsingChaosShop"  # with --pulse: the bridges adopt orphaned CAs
NODES = ("b0", "b1", "b2")
FAULT_POINTS = ["in_commit", "after_commit", "after_publish", "in_ack"]


@dataclass
class Node:
    """One bridge of the cluster and what the chaos did to it."""

    name: str
    bridge: BridgeProcess
    status: str = "down"  # up | starting | down | frozen
    restart_at: float | None = None  # down: when to start it again
    thaw_at: float | None = None  # frozen: when to SIGCONT it
    armed: str = ""  # CA_BRIDGE_FAULTS of the running incarnation
    arm_next: str = ""  # ... of the next one
    log_mark: int = 0  # log size at the last start: what the current incarnation wrote comes after it
    thread: threading.Thread | None = None
    start_error: str | None = None
    snapshot: dict[str, str] = field(default_factory=dict)  # CA -> owner token when it went away (takeover count)
    starts: int = 0

    def new_log(self) -> str:
        with open(self.bridge.log, "rb") as f:
            f.seek(self.log_mark)
            return f.read().decode(errors="replace")


@dataclass
class ClusterReport:
    seed: int
    duration: float = 0.0
    wall: float = 0.0
    devices: int = 0
    items_per_device: int = 0
    device_runs: int = 0
    device_self_crashes: int = 0
    device_kills: int = 0
    device_errors: dict[str, int] = field(default_factory=dict)  # "error: ..." lines of device runs, by kind
    bridge_kills: int = 0
    kills_immediate: int = 0
    kills_delayed: int = 0
    kills_ttl: int = 0
    bridge_fault_points: int = 0
    fault_points: dict[str, int] = field(default_factory=dict)
    bridge_freezes: int = 0
    kills_of_takers: int = 0  # a frozen bridge's takers killed just before it thaws (its CAs come back to it)
    bridge_start_failures: int = 0
    db_cuts: int = 0
    db_backends_cut: int = 0
    broker_restarts: int = 0
    ttl_takeovers: int = 0  # CAs of a dead or frozen bridge taken over by another before it came back
    ownership_moves: int = 0  # sum over CAs of (epoch - 1): claims and adoptions by a new owner
    requests: int = 0  # seen on ca/+/in by the spy (QoS 0: a lower bound)
    forwarded: int = 0  # seen on ca/_fwd/# by the spy
    forwarded_to_down: int = 0  # ... addressed to a bridge that was down or frozen at the time (lost)
    evictions: int = 0  # "CA X is now owned by Y; handing its queued requests on" (fenced commits, reclaims)
    commit_failures: int = 0  # "commit of N calls failed" in the bridge logs (database cuts)
    log_warnings: dict[str, int] = field(default_factory=dict)
    purchases: int = 0
    notifications: int = 0
    watcher_lost: int = 0
    watcher_recreated: int = 0
    anomalies: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"cluster chaos seed={self.seed}: {self.duration:.0f}s ({self.wall:.0f}s wall), 3 bridges, "
                f"{self.devices} devices x {self.items_per_device} items, {self.device_runs} device runs, "
                f"{self.device_self_crashes} device self-crashes, {self.device_kills} device kills, "
                f"{self.bridge_kills} bridge kills ({self.kills_immediate} at once, {self.kills_delayed} delayed, "
                f"{self.kills_ttl} past the TTL), {self.bridge_fault_points} bridge deaths at fault points, "
                f"{self.bridge_freezes} freezes ({self.kills_of_takers} takers killed), "
                f"{self.db_cuts} DB cuts ({self.db_backends_cut} backends), "
                f"{self.broker_restarts} broker restarts, {self.ttl_takeovers} TTL takeovers, "
                f"{self.ownership_moves} ownership moves, {self.forwarded} forwarded of {self.requests} requests "
                f"({self.forwarded_to_down} to a down bridge), {self.evictions} evictions, "
                f"{self.commit_failures} failed commits, {self.purchases} purchases, "
                f"{self.notifications} notifications, anomalies={len(self.anomalies)}")


class Spy:
    """Counts requests and forwards on the broker (QoS 0, reconnecting across broker restarts)."""

    def __init__(self, port: int, nodes: dict[str, Node]) -> None:
        import paho.mqtt.client as mqtt

        self.nodes = nodes
        self.requests = 0
        self.forwarded = 0
        self.to_down = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"chaos-spy-{os.getpid()}")
        self.client.on_connect = lambda c, *_: c.subscribe([("ca/+/in", 0), ("ca/_fwd/#", 0)])
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        parts = msg.topic.split("/")  # ca/_fwd/NODE/[HOPS/]CA (the hop count is newer)
        if len(parts) >= 4 and parts[1] == "_fwd":
            self.forwarded += 1
            node = self.nodes.get(parts[2])
            if node is None or node.status in ("down", "frozen"):
                self.to_down += 1
        else:
            self.requests += 1

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Db:
    """The runner's own connection (application_name chaos-runner: cut_connections spares it)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = None

    def query(self, sql: str, args: tuple = ()) -> list[tuple]:
        import psycopg

        for attempt in range(3):
            try:
                if self.conn is None or self.conn.closed:
                    self.conn = psycopg.connect(self.url, autocommit=True, application_name="chaos-runner",
                                                connect_timeout=5)
                with self.conn.cursor() as cur:
                    cur.execute(sql, args)
                    return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self.conn = None
                if attempt == 2:
                    raise
                time.sleep(0.2)
        return []

    def owned_by(self, node: str) -> dict[str, str]:
        """CAs owned by any incarnation of ``node`` (its node rows stay until it rejoins)."""
        rows = self.query("SELECT ca.name, ca.owner FROM ca JOIN node n ON n.token = ca.owner WHERE n.name = %s",
                          (node,))
        return dict(rows)

    def owners(self) -> dict[str, int]:
        """Node name -> CAs owned by its latest live incarnation."""
        rows = self.query("SELECT n.name, count(*) FROM ca JOIN node n ON n.token = ca.owner "
                          "WHERE n.expires > now() GROUP BY n.name")
        return {name: int(count) for name, count in rows}

    def current_owners(self, names: list[str]) -> dict[str, str]:
        """CA -> name of the node whose (live or dead) incarnation owns it, for the CAs that have an owner."""
        if not names:
            return {}
        rows = self.query("SELECT ca.name, n.name FROM ca JOIN node n ON n.token = ca.owner WHERE ca.name = ANY(%s)",
                          (names,))
        return dict(rows)

    def taken_over(self, snapshot: dict[str, str]) -> int:
        if not snapshot:
            return 0
        rows = self.query("SELECT name, owner FROM ca WHERE name = ANY(%s)", (list(snapshot),))
        return sum(1 for name, owner in rows if owner is not None and owner != snapshot[name])

    def states(self, names: list[str]) -> dict[str, dict | None]:
        """Committed state of each existing CA (None while it has none: created, never committed)."""
        rows = self.query("SELECT name, state FROM ca WHERE name = ANY(%s)", (names,))
        return {name: codec.loads(bytes(state)) if state else None for name, state in rows}

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def run(seed: int, duration: float, devices: int, items: int, workdir: Path, *, micropython: bool = True,
        node_ttl: float = 3.0, freezes: bool = True, broker_restarts: bool = True, db_cuts: bool = True,
        faults: bool = True, finish_timeout: float = 180.0, fsync: bool = True, spare_creation: bool = False,
        pulse: float = 0.0, first_bridge_kills: int = 0, log=None) -> ClusterReport:
    """``first_bridge_kills``: the first chaos events kill a bridge (a short run can be over before chance gets
    there); the rest are drawn at random."""
    rng = random.Random(seed)
    report = ClusterReport(seed, devices=devices, items_per_device=items)
    say = log or (lambda *a: None)
    wall_start = time.monotonic()
    pg = PostgresServer(fsync=fsync).start()
    mosq = Mosquitto(workdir)
    mosq.start()
    db = Db(pg.url)
    nodes = {
        name: Node(name, BridgeProcess(PULSING_APP if pulse else APP, workdir / f"{name}.db", broker_port=mosq.port,
                                       store=pg.url, extra=["--pulse", str(pulse), "--node", name,
                                                            "--node-ttl", str(node_ttl)]))
        for name in NODES
    }
    spy = Spy(mosq.port, nodes)
    devs: list[Device] = []
    watchers: dict[str, subprocess.Popen] = {}
    try:
        for node in nodes.values():  # the first one creates the schema; then they start together
            _start(node, wait=True)
        use_mp = use_micropython(micropython)
        for i in range(devices):
            ca = f"cluster-{seed}-{i}"
            env = {**os.environ, "CA_NAME": ca, "CA_PORT": str(mosq.port), "ITEMS": str(items), "CRASH": "20",
                   "CRASH_MID": "12", "SEED": str(seed * 100 + i), "PYTHONPATH": str(ROOT)}
            if use_mp and i % 2 == 1:
                env["MICROPYPATH"] = f".frozen:{ROOT}"
                interp = [str(MICROPYTHON), "-X", "heapsize=256k"]
            else:
                interp = [sys.executable]
            devs.append(Device(ca, interp, env))
        watcher = [sys.executable, str(ROOT / "tests/chaos/watcher.py")]
        watchers = {
            d.ca: subprocess.Popen([*watcher, d.ca, "watch", str(mosq.port)], cwd=ROOT,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                                   stderr=open(workdir / f"{d.ca}.watcher.log", "wb"))  # noqa: SIM115
            for d in devs
        }
        started = time.monotonic()
        deadline = started + duration
        first_chaos = rng.uniform(0.5, 2.0)
        next_chaos = started + first_chaos if not spare_creation else float("inf")
        next_check = started + 1.0
        calm = False  # past the deadline: no more chaos, everything back up
        while True:
            now = time.monotonic()
            for d in devs:
                _tend(d, report)
            if all(d.done for d in devs):
                break
            if now >= next_check:
                next_check = now + 1.0
                states = db.states([d.ca for d in devs])
                broken = [ca for ca, st in states.items() if st is not None and "counters" not in st]
                if broken:  # on_init never ran: the devices cannot finish (see repro_sync_before_init.py)
                    report.anomalies.append(f"CAs committed without on_init (state without counters): {broken}")
                    break
                if next_chaos == float("inf") and len(states) == len(devs) and None not in states.values():
                    next_chaos = now + first_chaos
                    say(f"[{now - started:6.1f}] every CA initialised: chaos starts")
            if now > deadline + finish_timeout:
                report.anomalies.append(f"devices did not finish within the duration + {finish_timeout:.0f} s: "
                                        + ", ".join(f"{d.ca} ({d.runs} runs)" for d in devs if not d.done))
                break
            for node in nodes.values():
                _tend_node(node, now, nodes, report, db, rng if not calm else None, say, node_ttl)
            if not calm and now >= deadline:
                calm = True
                say(f"[{now - started:6.1f}] chaos over: thawing, restarting, disarming")
                for node in nodes.values():
                    node.arm_next = ""
                    if node.status == "frozen":
                        _thaw(node, report, db)
                    elif node.status == "down":
                        node.restart_at = now
                    elif node.status == "up" and node.armed:  # would die later on: disarm it now
                        _kill(node, report, db, now, "immediate")
            if not calm and now >= next_chaos:
                next_chaos = now + rng.uniform(0.3, 2.0)
                _chaos(rng, now - started, nodes, devs, report, db, pg, mosq, node_ttl,
                       kill=report.bridge_kills < first_bridge_kills, freezes=freezes,
                       broker_restarts=broker_restarts, db_cuts=db_cuts, faults=faults, say=say)
            time.sleep(0.05)
        report.duration = min(time.monotonic(), deadline) - started
        settle = time.monotonic() + 60
        while any(n.status != "up" for n in nodes.values()) and time.monotonic() < settle:
            for node in nodes.values():  # every bridge up for the verification (nothing armed)
                node.arm_next = ""
                if node.status == "frozen":
                    _thaw(node, report, db)
                if node.status == "down":
                    node.restart_at = time.monotonic()
                _tend_node(node, time.monotonic(), nodes, report, db, None, say)
            time.sleep(0.05)
        _verify(devs, watchers, pg, db, nodes, items, report, workdir)
        report.requests, report.forwarded, report.forwarded_to_down = spy.requests, spy.forwarded, spy.to_down
    finally:
        spy.close()
        for d in devs:
            if d.proc is not None:
                stop(d.proc, signal.SIGKILL)
        for w in watchers.values():
            stop(w, signal.SIGKILL)
        for node in nodes.values():
            if node.bridge.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    node.bridge.proc.send_signal(signal.SIGCONT)
            if node.thread is not None:
                node.thread.join(30)
            node.bridge.kill()
        mosq.stop()
        db.close()
        pg.cleanup()
    report.wall = time.monotonic() - wall_start
    return report


# -- the bridges ------------------------------------------------------------------------------------------------------


def _start(node: Node, *, wait: bool) -> None:
    """Start the node's bridge (in a thread unless ``wait``: BridgeProcess.start blocks until it listens)."""
    node.armed, node.arm_next = node.arm_next, ""
    node.bridge.env = {"CA_BRIDGE_FAULTS": node.armed} if node.armed else {}
    node.bridge.proc = None
    node.log_mark = node.bridge.log.stat().st_size if node.bridge.log.exists() else 0
    node.start_error = None
    node.restart_at = None
    node.starts += 1
    node.status = "starting"

    def target() -> None:
        try:
            node.bridge.start()
        except Exception as exc:
            node.start_error = f"{type(exc).__name__}: {str(exc)[-300:]}"

    if wait:
        target()
        if node.start_error is not None:
            raise RuntimeError(f"bridge {node.name} did not start: {node.start_error}")
        node.status = "up"
    else:
        node.thread = threading.Thread(target=target, name=f"start-{node.name}", daemon=True)
        node.thread.start()


def _tend_node(node: Node, now: float, nodes: dict[str, Node], report: ClusterReport, db: Db,
               rng: random.Random | None, say, node_ttl: float = 3.0) -> None:
    if node.status == "starting" and node.thread is not None and not node.thread.is_alive():
        node.thread = None
        if node.start_error is None:
            node.status = "up"
        else:
            node.status = "down"
            node.bridge.proc = None
            if "killing the bridge" in node.new_log():
                _died_at_fault_point(node, report)
            else:
                report.bridge_start_failures += 1
                say(f"bridge {node.name} failed to start: {node.start_error}")
            node.restart_at = now + 0.2
    if node.status == "up" and node.bridge.proc is not None and node.bridge.proc.poll() is not None:
        code = node.bridge.proc.returncode
        if code == -signal.SIGKILL and "killing the bridge" in node.new_log():
            _died_at_fault_point(node, report)
            say(f"bridge {node.name} died at its fault point ({node.armed})")
        else:
            report.anomalies.append(f"bridge {node.name} exited by itself with {code} (armed: {node.armed or 'no'})")
        node.bridge.proc = None
        node.status = "down"
        node.snapshot = db.owned_by(node.name)
        others_up = any(n.status == "up" for n in nodes.values() if n is not node)
        if rng is not None and others_up and rng.random() < 0.5:  # sometimes it stays down past the TTL
            node.restart_at = now + rng.uniform(0.0, 6.0)
            if faults_on(rng):
                node.arm_next = _arm(rng)
        else:
            node.restart_at = now
    if node.status == "down" and node.restart_at is not None and now >= node.restart_at:
        report.ttl_takeovers += db.taken_over(node.snapshot)
        node.snapshot = {}
        _start(node, wait=False)
    if node.status == "frozen" and node.thaw_at is not None and now >= node.thaw_at:
        if rng is not None and rng.random() < 0.5:  # kill the bridge that took its CAs: they come back to a zombie
            takers = {n for n in db.current_owners(list(node.snapshot)).values() if n != node.name}
            up = [nodes[n] for n in sorted(takers) if n in nodes and nodes[n].status == "up"]
            if up:
                taker = rng.choice(up)
                _kill(taker, report, db, now, "ttl", rng, node_ttl)
                report.kills_of_takers += 1
                say(f"kill {taker.name} (it took {node.name}'s CAs; back in {taker.restart_at - now:.1f}s), "
                    f"then thaw {node.name}")
        _thaw(node, report, db)


def faults_on(rng: random.Random) -> bool:
    return rng.random() < 0.4


def _arm(rng: random.Random) -> str:
    return f"{rng.choice(FAULT_POINTS)}={rng.randint(1, 40)}"


def _died_at_fault_point(node: Node, report: ClusterReport) -> None:
    report.bridge_fault_points += 1
    point = node.armed.partition("=")[0] or "?"
    report.fault_points[point] = report.fault_points.get(point, 0) + 1


def _kill(node: Node, report: ClusterReport, db: Db, now: float, mode: str, rng: random.Random | None = None,
          node_ttl: float = 3.0) -> None:
    node.bridge.kill()
    node.status = "down"
    report.bridge_kills += 1
    if mode == "immediate":
        report.kills_immediate += 1
        node.restart_at = now + (rng.uniform(0.0, 0.3) if rng else 0.0)
    elif mode == "delayed":
        report.kills_delayed += 1
        node.restart_at = now + rng.uniform(0.8, node_ttl * 0.8)
    else:
        report.kills_ttl += 1
        node.restart_at = now + rng.uniform(node_ttl + 1.0, node_ttl + 9.0)  # often past the devices' 10 s
    node.snapshot = db.owned_by(node.name) if mode != "immediate" else {}


def _victim(rng: random.Random, up: list[Node], db: Db) -> Node:
    """A running bridge, the more likely the more CAs it owns (killing a bridge that owns nothing tests little)."""
    owned = db.owners()
    return rng.choices(up, [1 + 3 * owned.get(n.name, 0) for n in up])[0]


def _thaw(node: Node, report: ClusterReport, db: Db) -> None:
    report.ttl_takeovers += db.taken_over(node.snapshot)
    node.snapshot = {}
    if node.bridge.proc is not None:
        node.bridge.proc.send_signal(signal.SIGCONT)
    node.status = "up"
    node.thaw_at = None


def _chaos(rng: random.Random, t: float, nodes: dict[str, Node], devs: list[Device], report: ClusterReport, db: Db,
           pg: PostgresServer, mosq: Mosquitto, node_ttl: float, *, kill: bool, freezes: bool, broker_restarts: bool,
           db_cuts: bool, faults: bool, say) -> None:
    now = time.monotonic()
    up = [n for n in nodes.values() if n.status == "up"]
    action = rng.random()
    if kill:
        action = 0.5  # a bridge kill (drawn all the same: the rest of the run's draws stay as they were)
    if action < 0.30:
        victim = rng.choice(devs)
        if victim.proc is not None and victim.proc.poll() is None:
            victim.proc.kill()
            victim.killed += 1
            report.device_kills += 1
    elif action < 0.62:
        if len(up) < 2:  # never take the last running bridge down
            return
        node = _victim(rng, up, db)
        mode = rng.choices(["immediate", "delayed", "ttl"], [0.4, 0.25, 0.35])[0]
        _kill(node, report, db, now, mode, rng, node_ttl)
        if faults and faults_on(rng):
            node.arm_next = _arm(rng)
        say(f"[{t:6.1f}] kill {node.name} ({mode}, back in {node.restart_at - now:.1f}s"
            f"{', armed ' + node.arm_next if node.arm_next else ''})")
    elif action < 0.76:
        if not freezes or len(up) < 2:
            return
        node = _victim(rng, up, db)
        node.snapshot = db.owned_by(node.name)
        node.bridge.proc.send_signal(signal.SIGSTOP)
        node.status = "frozen"
        node.thaw_at = now + rng.uniform(node_ttl + 0.5, node_ttl + 9.0)  # often past the devices' 10 s timeout
        report.bridge_freezes += 1
        say(f"[{t:6.1f}] freeze {node.name} for {node.thaw_at - now:.1f}s (owns {len(node.snapshot)} CAs)")
    elif action < 0.90:
        if not db_cuts:
            return
        cut = pg.cut_connections()
        report.db_cuts += 1
        report.db_backends_cut += cut
        say(f"[{t:6.1f}] cut {cut} database connections")
    elif action < 0.95:
        if not broker_restarts:
            return
        mosq.stop()
        report.broker_restarts += 1
        time.sleep(rng.uniform(0.1, 1.0))
        mosq.start()
        say(f"[{t:6.1f}] broker restarted")


# -- the verification -----------------------------------------------------------------------------------------------


_EXPECTED_LOG = (
    "commit of ", "cluster heartbeat failed", "claiming CA ", "lost the broker connection", "broker ",
    "not connected to the broker yet", "CA_BRIDGE_FAULTS", "could not release",
)


_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (\w+) ([\w.]+): (.*)$")


def _records(text: str):
    """(level, logger, message, last line of the traceback or '') for each log record of a bridge log."""
    record = None
    tail = ""
    for line in text.splitlines():
        m = _RECORD.match(line)
        if m:
            if record is not None:
                yield (*record, tail)
            record, tail = m.groups(), ""
        elif record is not None and line.strip() and not line.startswith((" ", "Traceback", "ca-bridge:",
                                                                          "CA_BRIDGE_FAULTS")):
            tail = line.strip()
    if record is not None:
        yield (*record, tail)


def _template(message: str) -> str:
    message = re.sub(r"cluster-\d+-\d+", "CA", message)
    message = re.sub(r"\b[0-9a-f]{12}\b", "TOKEN", message)
    message = re.sub(r"0x[0-9a-f]+", "ADDR", message)
    message = re.sub(r"\d+(\.\d+)?", "N", message)
    return message[:110]


def _verify(devs: list[Device], watchers: dict[str, subprocess.Popen], pg: PostgresServer, db: Db,
            nodes: dict[str, Node], items: int, report: ClusterReport, workdir: Path) -> None:
    expected_items = [f"item{i:03d}" for i in range(items)]
    records = asyncio.run(_load(pg.url, [d.ca for d in devs]))
    for d in devs:
        record = records.get(d.ca)
        counters = codec.loads(record.state).get("counters", {}) if record is not None and record.state else {}
        wrong = {k: v for k, v in counters.items() if v != 1}
        missing = [k for k in expected_items if k not in counters]
        if wrong or missing or len(counters) != items:
            report.anomalies.append(f"{d.ca}: counts off {wrong} missing {missing[:5]}")
        report.purchases += sum(counters.values())
        if record is not None and "watch" in record.sessions:
            notes = record.sessions["watch"].notes
            # the row's next_seq, or the newest note's successor when notes are queued (SessionData.from_record)
            next_seq = SessionData.from_record(codec.loads(record.sessions["watch"].meta), notes).next_seq
            if next_seq != items + 1:
                report.anomalies.append(f"{d.ca}: watch session next_seq {next_seq}, expected {items + 1}")
            seqs = [s for s, _ in notes]
            if seqs and (seqs != list(range(seqs[0], seqs[0] + len(seqs))) or seqs[-1] >= next_seq):
                report.anomalies.append(f"{d.ca}: stored watch queue not contiguous below next_seq: {seqs[:10]}...")
            for seq, blob in notes:
                if list(codec.loads(blob)) != [seq - 1, f"item{seq - 1:03d}"]:
                    report.anomalies.append(f"{d.ca}: stored notification {seq} is {codec.loads(blob)}")
                    break
        else:
            report.anomalies.append(f"{d.ca}: no watch session in the store")
    for ca, w in watchers.items():
        lines = _read_lines(w, items, timeout=30 if all(d.done for d in devs) else 3)
        seqs = [x["seq"] for x in lines]
        got = [tuple(x["args"]) for x in lines]
        want = [(i, f"item{i:03d}") for i in range(items)]
        report.notifications += len(lines)
        if got != want:
            dup = len(got) - len(set(got))
            first = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
                         min(len(got), len(want)))
            report.anomalies.append(f"{ca}: watcher saw {len(got)} notifications ({dup} duplicates), first difference "
                                    f"at {first}: {got[first:first + 3]} instead of {want[first:first + 3]}")
        elif seqs != list(range(1, items + 1)):
            report.anomalies.append(f"{ca}: sequence numbers not 1..{items}")
        stats = re.findall(r"lost=(\d+) recreated=(\d+)", (workdir / f"{ca}.watcher.log").read_text(errors="replace"))
        if stats:
            lost, recreated = map(int, stats[-1])
            report.watcher_lost += lost
            report.watcher_recreated += recreated
            if lost or recreated:
                report.anomalies.append(f"{ca}: watcher lost={lost} recreated={recreated}")
    orphans = db.query("SELECT count(*) FROM note n WHERE NOT EXISTS "
                       "(SELECT 1 FROM session s WHERE s.ca = n.ca AND s.sid = n.sid)")[0][0]
    if orphans:
        report.anomalies.append(f"store: {orphans} notifications without a session")
    # membership: one live row per running bridge. (A CA may still name a dead or rejoined incarnation as its
    # owner, with no node row left: that is how a restart frees CAs; the next request for it claims it.)
    live = sorted(r[0] for r in db.query("SELECT name FROM node WHERE expires > now()"))
    if live != sorted(nodes):
        report.anomalies.append(f"store: live node rows {live}, expected one each for {sorted(nodes)}")
    report.ownership_moves = int(db.query("SELECT coalesce(sum(epoch - 1), 0) FROM ca")[0][0])
    errors: Counter[str] = Counter()
    for d in devs:
        for out in d.output:
            for line in out.splitlines():
                if line.startswith("error:"):
                    errors[_template(line[len("error: "):])[:70]] += 1
    report.device_errors = dict(errors.most_common())
    warnings: Counter[str] = Counter()
    for node in nodes.values():
        for level, logger, message, exc in _records(node.bridge.logs()):
            if "is now owned by" in message:
                report.evictions += 1
            if level not in ("WARNING", "ERROR", "CRITICAL"):
                continue
            if message.startswith("commit of "):
                report.commit_failures += 1
            key = f"{level} {logger}: {_template(message)}" + (f" [{_template(exc)[:60]}]" if exc else "")
            warnings[key] += 1
            expected = message.startswith(_EXPECTED_LOG) or exc.startswith("bridge.errors.StoreError")
            if level != "WARNING" and not expected:
                report.anomalies.append(f"bridge {node.name} logged: {level} {logger}: {message[:200]} {exc[:200]}")
    report.log_warnings = dict(warnings.most_common())


async def _load(url: str, names: list[str]) -> dict:
    store = PostgresStore(url, application_name="chaos-verify")
    await store.open()
    try:
        return {name: await store.load(name) for name in names}
    finally:
        await store.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    p.add_argument("--duration", type=float, default=60, help="seconds of chaos (devices then finish)")
    p.add_argument("--devices", type=int, default=4)
    p.add_argument("--items", type=int, default=0, help="items each device buys (default: 12 per second of chaos)")
    p.add_argument("--node-ttl", type=float, default=3.0, help="the bridges' --node-ttl (seconds)")
    p.add_argument("--pulse", type=float, default=0.0, metavar="SECONDS",
                   help="run the shop with a (no-op) pulse at this interval: the bridges then adopt orphaned CAs "
                        "(default 0: no pulse, as run_chaos)")
    p.add_argument("--no-micropython", action="store_true")
    p.add_argument("--no-freeze", action="store_true", help="no SIGSTOP/SIGCONT of bridges")
    p.add_argument("--no-broker-restarts", action="store_true")
    p.add_argument("--no-db-cuts", action="store_true")
    p.add_argument("--no-faults", action="store_true", help="never arm CA_BRIDGE_FAULTS")
    p.add_argument("--no-fsync", action="store_true", help="PostgreSQL with fsync off")
    p.add_argument("--spare-creation", action="store_true",
                   help="start the chaos only once every CA has committed its first state (for code with the "
                        "sync-before-on_init bug: tests/chaos/repro_sync_before_init.py)")
    p.add_argument("--finish-timeout", type=float, default=180,
                   help="seconds the devices get to finish after the chaos")
    p.add_argument("--json", action="store_true", help="print the report as JSON too")
    p.add_argument("--keep", action="store_true", help="keep the work directory (bridge and watcher logs)")
    p.add_argument("-v", "--verbose", action="store_true", help="print each chaos action and the bridges' warnings")
    a = p.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="cluster-chaos-"))
    say = (lambda msg: print(msg, flush=True)) if a.verbose else None
    try:
        items = a.items or max(30, int(a.duration * 12))
        report = run(a.seed, a.duration, a.devices, items, workdir, micropython=not a.no_micropython,
                     node_ttl=a.node_ttl, freezes=not a.no_freeze, broker_restarts=not a.no_broker_restarts,
                     db_cuts=not a.no_db_cuts, faults=not a.no_faults, finish_timeout=a.finish_timeout,
                     fsync=not a.no_fsync, spare_creation=a.spare_creation,
                     pulse=a.pulse, log=say)
    finally:
        if a.keep:
            print("cluster chaos: kept", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(report.line())
    if a.verbose:
        print("device errors:", json.dumps(report.device_errors, indent=1))
        print("fault points:", report.fault_points)
        print("bridge warnings:", json.dumps(report.log_warnings, indent=1))
    for anomaly in report.anomalies:
        print("ANOMALY:", anomaly)
    if a.json:
        print(json.dumps(report.__dict__))
    return 1 if report.anomalies else 0


if __name__ == "__main__":
    sys.exit(main())
