"""Reproduction: a bridge that lost a CA (presumed dead, taken over) still answers syncs for it from its stale copy,
and a listener then delivers notifications twice.

    .venv/bin/python tests/chaos/repro_stale_sync.py          # exit 1 if the bug shows

Two bridges a and b (--node-ttl 3, no pulse). Requests are published straight to one bridge's forward topic, so the
test decides which bridge gets each (as the $share subscription may):

1. via a: the device begins and buys 0..4; the watcher gets notifications 1..5 and acks them (a's queue is empty);
2. a is frozen (SIGSTOP) until its membership expires; via b the device buys 5..9: b claims the CA, notifications
   6..10 reach the watcher, whose acks go to a (frozen) and so never reach b: b still queues 6..10;
3. a is resumed; it still holds the CA in memory (nothing evicted it: the ack it gets changes nothing, so nothing
   is committed and refused). The watcher syncs (seq 10; the client syncs on every reconnect and on a gap) and the
   sync reaches a. Actor._sync changes nothing either, so its answer goes out without a commit, hence without the
   ownership fence: "sync first=6 next=6" from the stale copy. The client concludes that the session was recreated
   and rewinds to seq 5;
4. the watcher's next sync reaches b (the owner), which resends 6..10: the watcher delivers them a second time.

Nearby, same cause: when the stale copy does commit something first (a presence message: the working tree's client
sends one on reconnect, and its will on a drop), the commit is refused and the sync queued behind it is dropped
without an answer (Committer._commit fails the sync's Pending, which has no on_fail); the client then does not sync
again until a gap has lasted its resync period.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bridge.protocol import Topics  # noqa: E402
from firmware_client import Client  # noqa: E402
from tests.conftest import BridgeProcess, Mosquitto  # noqa: E402
from tests.pgserver import PostgresServer  # noqa: E402

APP = "tests/chaos/app.py:ChaosShop"
CA = "shop1"


def node_expired(pg: PostgresServer, node: str) -> bool:
    return pg.psql(f"SELECT bool_and(expires < now()) FROM node WHERE name = '{node}'") == "t"


def sync(client: Client) -> None:
    """Make the client sync now, as it does on a gap in the sequence numbers and on every reconnect (a reconnect
    would also send presence messages, which take the other paths of the bug; see the module docstring)."""
    client._send_sync()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and client._syncs:
        client.poll(0.1)
    client.poll(0.5)


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="repro-stale-sync-"))
    pg = PostgresServer(fsync=False).start()
    mosq = Mosquitto(workdir)
    mosq.start()
    bridges = {
        name: BridgeProcess(APP, workdir / f"{name}.db", broker_port=mosq.port, store=pg.url,
                            extra=["--pulse", "0", "--node", name, "--node-ttl", "3"])
        for name in ("a", "b")
    }
    topics = Topics("ca")
    seen: list[int] = []
    try:
        for b in bridges.values():
            b.start()
        w = Client(CA, "watch", port=mosq.port, timeout=5, reconnect_max=0.5)
        w.on_notify = lambda args: seen.append(args[0])
        c = Client(CA, "default", port=mosq.port, timeout=5)
        for client in (w, c):  # connect-syncs to b, where the CA does not exist yet (see repro_sync_before_init)
            client.in_topic = topics.forward("b", CA)
            client.connect(timeout=5)
            client.poll(0.3)
            client.in_topic = topics.forward("a", CA)
        nonce = c.call("begin")["nonce"]
        for i in range(5):
            c.call("buy", nonce, i, f"item{i:03d}")
        w.poll(1.0)
        print(f"1. via a: watcher delivered {seen}, last_seq {w.last_seq}")

        bridges["a"].proc.send_signal(signal.SIGSTOP)
        while not node_expired(pg, "a"):
            time.sleep(0.2)
        c.in_topic = topics.forward("b", CA)
        for i in range(5, 10):
            c.call("buy", nonce, i, f"item{i:03d}")
        w.poll(1.0)  # its acks go to a, frozen
        print(f"2. a frozen past the TTL, via b: watcher delivered {seen}, last_seq {w.last_seq}")

        bridges["a"].proc.send_signal(signal.SIGCONT)
        time.sleep(2.0)  # a heartbeats again: alive, and still holding its copy of the CA
        sync(w)  # to a
        print(f"3. a resumed; the watcher synced with a: last_seq {w.last_seq}, "
              f"recreated {w.recreated}, lost {w.lost}")

        w.in_topic = topics.forward("b", CA)
        sync(w)  # to b, the owner
        print(f"4. the watcher synced with b: delivered {seen}, last_seq {w.last_seq}")
        w.close()
        c.close()
        dups = sorted({s for s in seen if seen.count(s) > 1})
        if dups or w.recreated:
            print(f"BUG: stale sync answer from a (recreated={w.recreated}); notifications delivered twice: {dups}")
            return 1
        print("no bug")
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
