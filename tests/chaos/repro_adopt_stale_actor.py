"""Reproduction: a bridge that adopts an orphaned CA it still holds in memory keeps its stale copy, and commits on it.

    .venv/bin/python tests/chaos/repro_adopt_stale_actor.py          # exit 1 if the bug shows

Only with pulses (the membership loop adopts orphans only when the app has on_pulse and --pulse > 0). Two bridges
a and b (--node-ttl 3, --pulse 0.5), app PulsingChaosShop. The device's requests are published straight to one
bridge's forward topic, so the test decides which bridge gets them (as the $share subscription may):

1. via a: begin, buy 0..4 (a claims the CA and holds it in memory);
2. a is frozen (SIGSTOP) past the TTL: b adopts the CA (Runtime._membership_loop -> Cluster.adopt);
3. via b: buy 5..9;
4. b is killed (SIGKILL), a is resumed (SIGCONT): once b's membership expires, a adopts the CA again with the same
   token; runtime.py skips ``_install`` because the name is still in ``self.actors``, so a keeps its copy of step 1;
5. via a: buy 10. The commit is fenced on ``owner = a's token``, which holds again: it goes through, written over
   b's work. Purchases 5..9 are gone from the committed state (counters and memento go back to step 1's).
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bridge import codec  # noqa: E402
from bridge.protocol import Topics  # noqa: E402
from firmware_client import Client  # noqa: E402
from tests.conftest import BridgeProcess, Mosquitto  # noqa: E402
from tests.pgserver import PostgresServer  # noqa: E402

APP = "tests/chaos/cluster_app.py:PulsingChaosShop"
CA = "shop1"


def owner_and_state(pg: PostgresServer) -> tuple[str | None, dict | None]:
    import psycopg

    with psycopg.connect(pg.url, autocommit=True, application_name="repro") as conn:
        row = conn.execute("SELECT n.name, ca.state FROM ca LEFT JOIN node n ON n.token = ca.owner "
                           "WHERE ca.name = %s", (CA,)).fetchone()
    if row is None:
        return None, None
    return row[0], codec.loads(bytes(row[1])) if row[1] else None


def wait_owner(pg: PostgresServer, node: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if owner_and_state(pg)[0] == node:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{node} did not take {CA} over within {timeout}s: owner {owner_and_state(pg)[0]}")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="repro-adopt-"))
    pg = PostgresServer(fsync=False).start()
    mosq = Mosquitto(workdir)
    mosq.start()
    bridges = {
        name: BridgeProcess(APP, workdir / f"{name}.db", broker_port=mosq.port, store=pg.url,
                            extra=["--pulse", "0.5", "--node", name, "--node-ttl", "3"])
        for name in ("a", "b")
    }
    topics = Topics("ca")
    try:
        for b in bridges.values():
            b.start()
        c = Client(CA, "default", port=mosq.port, timeout=5)
        c.in_topic = topics.forward("b", CA)  # the sync sent on connect to b, where the CA does not exist yet (a
        c.connect(timeout=5)  # sync first on the bridge that creates the CA is the other bug, repro_sync_before_init)
        c.poll(0.5)
        c.in_topic = topics.forward("a", CA)  # every request to bridge a
        nonce = c.call("begin")["nonce"]
        for i in range(5):
            c.call("buy", nonce, i, f"item{i:03d}")
        print("1. owner", owner_and_state(pg)[0], "counters", sorted(owner_and_state(pg)[1]["counters"]))

        bridges["a"].proc.send_signal(signal.SIGSTOP)
        wait_owner(pg, "b")
        print("2. a frozen; b adopted the CA: owner", owner_and_state(pg)[0])

        c.in_topic = topics.forward("b", CA)
        for i in range(5, 10):
            c.call("buy", nonce, i, f"item{i:03d}")
        owner, state = owner_and_state(pg)
        print("3. via b: owner", owner, "counters", sorted(state["counters"]))

        bridges["b"].kill()
        bridges["a"].proc.send_signal(signal.SIGCONT)
        wait_owner(pg, "a")
        print("4. b killed, a resumed and adopted the CA again: owner", owner_and_state(pg)[0])

        c.in_topic = topics.forward("a", CA)
        try:
            print("5. via a: buy 10 ->", c.call("buy", nonce, 10, "item010"))
        except Exception as exc:
            print("5. via a: buy 10 ->", repr(exc))
        owner, state = owner_and_state(pg)
        counters = sorted(state["counters"])
        print("   committed counters:", counters)
        lost = [f"item{i:03d}" for i in range(5, 10) if f"item{i:03d}" not in state["counters"]]
        c.close()
        if lost:
            print(f"BUG: the stale copy in a was committed over b's work; lost purchases {lost}")
            return 1
        print("no bug: the purchases made through b survived")
        return 0
    finally:
        for b in bridges.values():
            if b.proc is not None:
                b.proc.send_signal(signal.SIGCONT)
            b.kill()
        mosq.stop()
        pg.cleanup()


if __name__ == "__main__":
    sys.exit(main())
