"""Three bridges on one PostgreSQL database behind one mosquitto ($share subscriptions): the cluster guarantees.

Real processes throughout: PostgreSQL (Debian's binaries), mosquitto, three `python -m bridge run` processes and
paho devices. Each test checks one promise of docs/SCALING.md: one owner per CA, exactly-once across bridges,
gap-free notifications, takeover after a crash, fencing of a presumed-dead bridge, pulses once per interval.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from bridge import codec
from bridge.store.postgres import PostgresStore
from tests.conftest import BridgeProcess, Mosquitto, wait_until
from tests.device import Device

RETRYABLE = ("busy", "unavailable")


class Cluster:
    def __init__(self, tmp_path, url: str, app: str, n: int = 3, extra: list[str] | None = None) -> None:
        self.url = url
        self.broker = Mosquitto(tmp_path)
        self.broker.start()
        self.bridges = [
            BridgeProcess(app, tmp_path / f"b{i}.db", broker_port=self.broker.port, store=url,
                          extra=["--node", f"b{i}", *(extra or [])])
            for i in range(n)
        ]
        self.devices: list[Device] = []

    def start(self) -> Cluster:
        for b in self.bridges:
            b.start()
        return self

    def device(self, ca: str, session: str = "default") -> Device:
        d = Device(self.broker.port, ca, session)
        self.devices.append(d)
        return d

    def close(self) -> None:
        for d in self.devices:
            d.close()
        for b in self.bridges:
            b.kill()
        self.broker.stop()

    def owners(self) -> dict[str, str | None]:
        rows = self.psql("SELECT ca.name, n.name FROM ca LEFT JOIN node n ON n.token = ca.owner ORDER BY 1")
        return {line.split("|")[0]: line.split("|")[1] or None for line in rows.splitlines() if line}

    def psql(self, sql: str) -> str:
        import subprocess

        done = subprocess.run(["psql", "-X", "-A", "-t", self.url, "-c", sql], capture_output=True, text=True,
                              timeout=30, check=True)
        return done.stdout.strip()


@pytest.fixture
def cluster_factory(tmp_path, pg_url):
    made: list[Cluster] = []

    def make(app: str = "tests/apps.py:Counter", **kwargs) -> Cluster:
        c = Cluster(tmp_path, pg_url, app, **kwargs)
        made.append(c)
        return c.start()

    try:
        yield make
    finally:
        for c in made:
            c.close()


def call(dev: Device, method: str, *args, rid: str | None = None, timeout: float = 30.0):
    """Call until answered, resending the same request id on silence or a retryable error (as devices do)."""
    rid = rid or dev.new_id()
    deadline = time.monotonic() + timeout
    while True:
        with dev._cond:
            dev.replies.pop(rid, None)
        dev.send_call(method, *args, rid=rid)
        try:
            reply = dev.wait_reply(rid, 1.0)
        except TimeoutError:
            reply = None
        if reply is not None and not ("err" in reply and reply["err"]["kind"] in RETRYABLE):
            assert "err" not in reply, reply
            return reply["ok"]
        assert time.monotonic() < deadline, f"{method} on {dev.ca} unanswered for {timeout}s (last: {reply})"
        time.sleep(0.1)


def test_requests_spread_over_bridges_and_every_call_runs_once(cluster_factory):
    c = cluster_factory()
    # 10 CAs, not 9: mosquitto hands shared messages round robin, so with a multiple of 3 calls per round every
    # call of a CA would reach the same bridge and nothing would ever be forwarded
    devs = [c.device(f"ca{i}") for i in range(10)]
    for _ in range(10):
        for d in devs:
            call(d, "incr")
    assert [call(d, "get")["n"] for d in devs] == [10] * 10
    owners = c.owners()
    assert sorted(owners) == sorted(f"ca{i}" for i in range(10))
    assert len(set(owners.values())) >= 2, f"every CA on one bridge: {owners}"
    assert all(owner in ("b0", "b1", "b2") for owner in owners.values())
    # one owner per CA, and only the owner ever loaded it: each was claimed once (epoch 1) and never resumed
    # elsewhere, so the requests that reached another bridge were forwarded, not run there
    epochs = dict(line.split("|") for line in c.psql("SELECT name, epoch FROM ca").splitlines())
    assert epochs == {f"ca{i}": "1" for i in range(10)}, epochs
    assert [call(d, "get")["resumes"] for d in devs] == [0] * 10


def test_notifications_are_gap_free_across_bridges(cluster_factory):
    c = cluster_factory()
    watcher = c.device("shop", "watch")
    buyer = c.device("shop")
    tokens = [f"t{i}" for i in range(40)]
    for token in tokens:
        call(buyer, "record_notify", token)
    notes = watcher.wait_notes(40, timeout=20)
    seqs = [n["seq"] for n in notes]
    assert seqs == list(range(seqs[0], seqs[0] + 40)), seqs
    assert [n["args"][0] for n in notes] == tokens


def test_retry_after_the_owner_dies_after_commit_is_answered_from_the_dedup_record(cluster_factory, tmp_path):
    c = cluster_factory()
    dev = c.device("once")
    assert call(dev, "incr") == 1
    owner = c.owners()["once"]
    victim = next(b for b in c.bridges if b.db.stem == owner)
    victim.kill()  # restart it armed: it dies after its next commit, before publishing the reply
    victim.env = {"CA_BRIDGE_FAULTS": "after_commit=1"}
    victim.start()
    # the restarted b* freed its old CAs at once (same --node); whoever claims "once" next may be any bridge
    rid = dev.new_id()
    got = call(dev, "incr", rid=rid, timeout=40)
    again = call(dev, "incr", rid=rid, timeout=20)  # the same request id once more: never a second run
    assert got == again == 2
    assert call(dev, "get")["n"] == 2


def test_takeover_after_a_crash_within_the_ttl(cluster_factory):
    ttl = 3
    c = cluster_factory(extra=["--node-ttl", str(ttl)])
    devs = [c.device(f"k{i}") for i in range(6)]
    for d in devs:
        call(d, "incr")
    owners = c.owners()
    victim_name = owners["k0"]
    victim = next(b for b in c.bridges if b.db.stem == victim_name)
    victim.kill()  # no restart: the others must notice the silence
    started = time.monotonic()
    call(devs[0], "incr", timeout=30)
    took = time.monotonic() - started
    # once the TTL has run out a live bridge takes over (a bound from the TTL, with generous slack)
    assert took < ttl * 3 + 5, f"takeover took {took:.1f}s with a {ttl}s TTL"
    for d in devs[1:]:
        call(d, "incr")
    assert [call(d, "get")["n"] for d in devs] == [2, 2, 2, 2, 2, 2]
    assert victim_name not in set(c.owners().values())


def test_a_clean_shutdown_hands_its_cas_over_at_once(cluster_factory):
    ttl = 60  # takeover could only come from the release, not the TTL
    c = cluster_factory(extra=["--node-ttl", str(ttl)])
    dev = c.device("handed")
    call(dev, "incr")
    owner = c.owners()["handed"]
    next(b for b in c.bridges if b.db.stem == owner).stop()  # SIGTERM: drain, release, leave
    assert c.owners()["handed"] is None  # released as the bridge stopped
    assert c.psql(f"SELECT count(*) FROM node WHERE name = '{owner}'") == "0"  # and it left the membership
    assert call(dev, "incr", timeout=ttl / 2) == 2  # answered long before the stopped bridge's TTL could expire
    assert c.owners()["handed"] not in (None, owner)


def test_a_paused_bridge_is_fenced_out_and_nothing_runs_twice(cluster_factory):
    c = cluster_factory(extra=["--node-ttl", "2"])
    dev = c.device("fenced")
    assert call(dev, "incr") == 1
    owner = c.owners()["fenced"]
    zombie = next(b for b in c.bridges if b.db.stem == owner)
    os.kill(zombie.proc.pid, signal.SIGSTOP)  # alive but silent: presumed dead after the TTL
    try:
        for expected in range(2, 7):
            assert call(dev, "incr", timeout=30) == expected
        new_owner = c.owners()["fenced"]
        assert new_owner not in (None, owner)
    finally:
        os.kill(zombie.proc.pid, signal.SIGCONT)
    # the woken bridge still has the CA cached; whatever reaches it is refused at commit and handed on
    for expected in range(7, 17):
        assert call(dev, "incr", timeout=30) == expected
    assert call(dev, "get")["n"] == 16
    assert c.owners()["fenced"] in ("b0", "b1", "b2")


def test_cut_database_connections_lose_nothing(cluster_factory, pg_server):
    c = cluster_factory()
    devs = [c.device(f"cut{i}") for i in range(4)]
    for round_ in range(6):
        for d in devs:
            call(d, "incr", timeout=40)
        if round_ % 2 == 0:
            assert pg_server.cut_connections() >= 1
    assert [call(d, "get")["n"] for d in devs] == [6, 6, 6, 6]


def test_pulses_run_once_per_interval_cluster_wide_even_across_a_takeover(cluster_factory):
    interval = 0.5
    c = cluster_factory("tests/apps.py:PulseClock", extra=["--pulse", str(interval), "--node-ttl", "2"])
    devs = [c.device(f"p{i}") for i in range(3)]
    for d in devs:
        call(d, "touch")

    def pulses(ca: str, after: float = 0.0) -> list[float]:
        """The pulse times committed in the database (read there: a device's call would claim the CA itself)."""
        state = c.psql(f"SELECT encode(state, 'hex') FROM ca WHERE name = '{ca}'")
        return [t for t in codec.loads(bytes.fromhex(state))["times"] if t > after] if state else []

    wait_until(lambda: all(len(pulses(d.ca)) >= 2 for d in devs), "every CA pulses")
    victim_name = c.owners()["p0"]
    next(b for b in c.bridges if b.db.stem == victim_name).kill()
    killed_at = time.time()  # the victim committed nothing after this (SIGKILL, waited for)
    # with no request at all, p0 is taken over and every CA keeps pulsing
    wait_until(lambda: all(len(pulses(d.ca, killed_at)) >= 3 for d in devs), "every CA pulses after the kill",
               timeout=30)
    assert c.owners()["p0"] not in (None, victim_name)
    for d in devs:
        times = call(d, "times", timeout=30)
        assert len([t for t in times if t > killed_at]) >= 3, f"{d.ca} stopped pulsing at the kill: {times}"
        # once per interval cluster-wide: two bridges pulsing one CA would double the count. (Not a minimum gap: a
        # tick delayed by a busy machine may be followed closely by the next, on time, tick of the same bridge.)
        span = times[-1] - times[0]
        assert len(times) <= span / interval + 2, f"{d.ca}: {len(times)} pulses in {span:.2f}s: {times}"
        assert len(set(times)) == len(times), f"{d.ca}: one pulse committed twice: {times}"


def test_orphaned_cas_with_pulses_are_adopted_without_any_request(cluster_factory, pg_url):
    import asyncio

    async def register() -> None:
        store = PostgresStore(pg_url)
        await store.open()
        try:
            for i in range(30):
                await store.register(f"o{i}")
        finally:
            await store.close()

    asyncio.run(register())
    c = cluster_factory("tests/apps.py:PulseClock", extra=["--pulse", "0.5"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        owners = c.owners()
        if all(owners.get(f"o{i}") for i in range(30)):
            break
        time.sleep(0.3)
    owners = c.owners()
    assert all(owners.get(f"o{i}") for i in range(30)), owners
    time.sleep(1.5)
    dev = c.device("o7")
    assert len(call(dev, "times")) >= 1  # pulsed (so on_init ran) before any device asked for it
