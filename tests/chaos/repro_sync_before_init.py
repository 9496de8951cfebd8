"""Reproduction: a sync (or ack) that reaches a CA which exists but was never initialised makes the CA durable with
an empty state, so on_init never runs for it (found by run_cluster_chaos.py, seed 1).

    .venv/bin/python tests/chaos/repro_sync_before_init.py            # all scenarios; exit 1 if the bug shows

* "new" (a cluster of one bridge on PostgreSQL, no fault at all): a brand-new CA, a stock firmware device: connect
  (the client syncs its session on connect), begin, buy. The sync and the begin wait together for the claim, which
  creates the row (the begin is a call) with an empty state; Runtime._claim installs the actor without RESUME and
  submits the waiting requests in order, the sync first, so the sync commits state {} before on_init could run.
  (With several bridges behind a $share subscription it happens whenever a device's sync and first call reach the
  same bridge.)
* "create" (cluster, no fault at all): `ca-bridge create shop-create` (a row with an empty state, no owner), then the
  device connects: the firmware client syncs its session on connect, so the bridge's first request for the CA is
  a sync, and the CA is committed as {} before the device's `begin` runs, on_resume instead of on_init.
* "crash" (cluster): a bridge is killed inside the first commit of a new CA (CA_BRIDGE_FAULTS=in_commit=1; the claim
  had already inserted the row with an empty state) and restarted; a watcher's sync arrives before the device retries.
* "single" (one bridge, no PostgreSQL: bridge.testing.Harness): the first commit of a new CA fails once (a
  StoreError, as a full disk or a database cut would give), then a sync arrives before the device retries.

In each, the next `buy` runs on state {} and raises KeyError 'counters' (InternalError) for ever, and the store
holds state {}: the CA never gets initialised.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bridge import codec  # noqa: E402
from bridge.store.postgres import PostgresStore  # noqa: E402
from firmware_client import CAError, Client, PersistentSession  # noqa: E402
from tests.conftest import BridgeProcess, Mosquitto  # noqa: E402
from tests.pgserver import PostgresServer  # noqa: E402

APP = "tests/chaos/app.py:ChaosShop"


def stored_state(url: str, ca: str):
    async def load():
        store = PostgresStore(url, application_name="repro")
        await store.open()
        try:
            return await store.load(ca)
        finally:
            await store.close()

    record = asyncio.run(load())
    return None if record is None or not record.state else codec.loads(record.state)


def watcher_syncs(port: int, ca: str) -> None:
    w = Client(ca, "watch", port=port, timeout=5)
    w.connect(timeout=5)  # sends {"t": "sync", "session": "watch", "seq": 0}
    w.poll(1.0)
    w.close()


def buy_once(port: int, ca: str) -> str:
    c = Client(ca, "default", port=port, timeout=5)
    c.connect(timeout=5)
    try:
        ps = PersistentSession(c)
        return f"buy -> {c.call('buy', ps.nonce, 0, 'item000')!r}"
    except CAError as exc:
        return f"buy -> CAError({exc.kind}, {exc.name}, {exc.message!r})"
    finally:
        c.close()


def scenario(kind: str, workdir: Path, pg: PostgresServer, mosq: Mosquitto) -> bool:
    db = pg.url.rsplit("/", 1)[0] + "/db_" + kind
    pg.psql(f"CREATE DATABASE db_{kind}")
    ca = f"shop-{kind}"
    bridge = BridgeProcess(APP, workdir / f"{kind}.db", broker_port=mosq.port, store=db,
                           extra=["--pulse", "0", "--node", "b0", "--node-ttl", "3"])
    try:
        if kind == "new":  # a brand-new CA, one bridge: the device's connect-sync and its begin reach the same bridge
            bridge.start()
            print(f"[{kind}] {buy_once(mosq.port, ca)}  (the device's client synced on connect, then begin, buy)")
        elif kind == "create":
            subprocess.run([sys.executable, "-m", "bridge", "create", ca, "--db", db], cwd=ROOT, check=True,
                           capture_output=True)
            bridge.start()
            print(f"[{kind}] stored after `ca-bridge create`: {stored_state(db, ca)!r} (row exists, state empty)")
            print(f"[{kind}] {buy_once(mosq.port, ca)}  (the device's client synced on connect, then begin, buy)")
        else:
            bridge.env = {"CA_BRIDGE_FAULTS": "in_commit=1"}
            bridge.start()
            c = Client(ca, "default", port=mosq.port, timeout=2)
            c.connect(timeout=5)
            deadline = time.monotonic() + 20
            while bridge.proc.poll() is None and time.monotonic() < deadline:
                try:  # the first call claims (inserting the row, state empty), then dies committing on_init + begin
                    c.call("begin")
                except Exception as exc:
                    print(f"[{kind}] first begin: {type(exc).__name__} (the bridge died in the commit)")
            c.mqtt.close()
            bridge.proc.wait(10)
            bridge.proc = None
            print(f"[{kind}] stored after the crash: {stored_state(db, ca)!r} (row exists, state empty)")
            bridge.env = {}
            bridge.start()
            watcher_syncs(mosq.port, ca)
            print(f"[{kind}] stored after the watcher's sync: {stored_state(db, ca)!r}")
            print(f"[{kind}] {buy_once(mosq.port, ca)}")
        state = stored_state(db, ca)
        print(f"[{kind}] stored at the end: {state!r}")
        broken = not (isinstance(state, dict) and "counters" in state)
        if broken:
            tail = [line for line in bridge.logs().splitlines() if "KeyError" in line or "raised" in line][:2]
            print(f"[{kind}] BUG: on_init never ran; bridge log: {tail}")
        return broken
    finally:
        bridge.kill()


def single() -> bool:
    """The same on one bridge without a cluster: the first commit of a new CA fails once, then a sync comes."""
    from bridge.cli import load_app
    from bridge.errors import CallError, StoreError
    from bridge.protocol import Call
    from bridge.testing import Harness

    async def go() -> bool:
        async with Harness(load_app(f"{ROOT}/{APP}")) as h:
            real, failures = h.store.commit, [StoreError("disk full (simulated)")]

            async def flaky(changes):
                if failures:
                    raise failures.pop()
                return await real(changes)

            h.store.commit = flaky
            reply = await h.send("shop1", Call("default", "cbor", "r1", "begin", []))
            print(f"[single] first begin (its commit fails): {reply.get('err', {}).get('name')}")
            await h.sync("shop1", "watch", 0)
            print(f"[single] state after a sync: {h.state('shop1')!r}")
            try:
                nonce = (await h.call("shop1", "default", "begin"))["nonce"]
                print(f"[single] buy -> {await h.call('shop1', 'default', 'buy', nonce, 0, 'item000')!r}")
            except CallError as exc:
                print(f"[single] buy -> CallError({exc})")
            broken = "counters" not in h.state("shop1")
            if broken:
                print("[single] BUG: on_init never ran")
            return broken

    return asyncio.run(go())


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="repro-sync-init-"))
    pg = PostgresServer(fsync=False).start()
    mosq = Mosquitto(workdir)
    mosq.start()
    try:
        results = {kind: scenario(kind, workdir, pg, mosq) for kind in ("new", "create", "crash")}
        results["single"] = single()
    finally:
        mosq.stop()
        pg.cleanup()
    print("bug reproduced in:", [k for k, v in results.items() if v] or "none")
    return 1 if any(results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
