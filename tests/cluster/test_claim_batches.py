"""Batched claims on a real PostgreSQL: Membership.claim_many gives each CA of a batch the outcome a claim of it
alone gets, two bridges claiming overlapping batches at once end with one owner per CA (and no deadlock), and
Cluster.claim coalesces concurrent claims into few batches, each waiter getting its own outcome or the error."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Any


from bridge.cluster import CLAIM_BATCH, Cluster
from bridge.errors import StoreError
from bridge.store import CARecord, Change, SessionRecord, SessionWrite
from bridge.store.membership import Claim
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_membership import PostgresMembership




class Counting:
    """A Membership that records the size of each claim_many it passes on."""

    def __init__(self, inner: PostgresMembership) -> None:
        self.inner = inner
        self.batches: list[int] = []

    async def claim_many(self, names: Mapping[str, bool], token: str) -> dict[str, Claim]:
        self.batches.append(len(names))
        return await self.inner.claim_many(names, token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def owners(psql) -> dict[str, str]:
    out = psql("SELECT name, coalesce(owner, '-') || '/' || epoch FROM ca ORDER BY name")
    return dict(line.split("|") for line in out.splitlines()) if out else {}


async def test_claim_many_gives_each_ca_what_a_single_claim_gives(pg, psql):
    m = PostgresMembership(pg)
    for token, node in (("A", "node-a"), ("B", "node-b"), ("D", "node-d")):
        await m.join(token, node, 30)
    for name, token in (("mine", "A"), ("other", "B"), ("dead", "D")):
        assert (await m.claim(name, token, create=True)).outcome == "mine"
    for name in ("free", "free-create"):
        await pg.register(name)
    pg.owner = None  # unfenced, as tools write: states and sessions to be loaded by the claims
    await pg.commit([Change(n, f"state-{n}".encode(), {"s": SessionWrite(b"m", [(1, n.encode())])},
                            [(1, "s", "r", b"p")]) for n in ("mine", "dead", "free")])
    psql("UPDATE node SET expires = now() - interval '1 second' WHERE token = 'D'")  # D is presumed dead
    before = owners(psql)
    assert before == {"dead": "D/1", "free": "-/0", "free-create": "-/0", "mine": "A/1", "other": "B/1"}

    asked = {"new": True, "absent": False, "free": False, "free-create": True, "mine": False, "other": False,
             "other-create": True, "dead": False}
    psql("INSERT INTO ca (name, state, owner, epoch) SELECT 'other-create', '', 'B', 4")
    got = await m.claim_many(asked, "A")

    assert set(got) == set(asked)

    def loaded(name: str, epoch: int) -> CARecord:
        return CARecord(name, f"state-{name}".encode(), {"s": SessionRecord(b"m", [(1, name.encode())])},
                        [(1, "s", "r", b"p")], epoch=epoch)

    assert got["new"] == Claim("mine", CARecord("new", b"", epoch=1))  # created, owned, epoch 1, empty
    assert got["absent"] == Claim("missing")  # not created without create
    assert got["free"] == Claim("mine", loaded("free", 1))  # unowned: taken, epoch + 1
    assert got["free-create"] == Claim("mine", CARecord("free-create", b"", epoch=1))  # exists: taken, not made
    assert got["mine"] == Claim("mine", loaded("mine", 1))  # ours already: loaded, epoch unchanged
    assert got["other"] == Claim("other", node="node-b", token="B")  # a live other's
    assert got["other-create"] == Claim("other", node="node-b", token="B")
    assert got["dead"] == Claim("mine", loaded("dead", 2))  # a dead node's: taken over, epoch + 1
    assert owners(psql) == {"dead": "A/2", "free": "A/1", "free-create": "A/1", "mine": "A/1", "new": "A/1",
                            "other": "B/1", "other-create": "B/4"}
    assert await m.claim_many({}, "A") == {}

    # the single claim is the same operation (a batch of one): B asks for what A just took
    assert await m.claim("dead", "B", create=False) == Claim("other", node="node-a", token="A")
    assert await m.claim("absent", "B", create=False) == Claim("missing")


async def test_two_bridges_claiming_overlapping_batches_end_with_one_owner_each(pg_empty_url, psql):
    stores = [PostgresStore(pg_empty_url, pool_size=4) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        ms = [PostgresMembership(s) for s in stores]
        await ms[0].join("A", "node-a", 30)
        await ms[1].join("B", "node-b", 30)
        names = [f"ca{i:04d}" for i in range(1200)]
        for n in names[::7]:  # some exist already, unowned: claimed through the locking path
            await stores[0].register(n)
        rnd = random.Random(7)
        jobs = []
        for k in range(6):  # per bridge, 3 batches at once, each overlapping the other bridge's and its own
            part = names[k * 150:k * 150 + 450]
            rnd.shuffle(part)
            jobs.append((k % 2, {n: rnd.random() < 0.9 for n in part}))
        results = await asyncio.gather(*[ms[b].claim_many(asked, "AB"[b]) for b, asked in jobs])
    finally:
        for s in stores:
            await s.close()

    final = owners(psql)
    seen: dict[str, list[tuple[str, bool, Claim]]] = {}
    for (b, asked), got in zip(jobs, results, strict=True):
        assert set(got) == set(asked)
        for name, claim in got.items():
            seen.setdefault(name, []).append(("AB"[b], asked[name], claim))
    for name, claims in seen.items():
        for _, create, c in claims:  # missing: only without create, when no batch had made it yet
            assert c.outcome != "missing" or not create, (name, c)
        if name not in final:  # nobody asked to create it, and it did not exist
            assert all(c.outcome == "missing" for _, _, c in claims), name
            continue
        owner = final[name].split("/")[0]
        assert owner in ("A", "B"), (name, final[name])
        for token, _, c in claims:
            if c.outcome == "missing":
                continue
            if token == owner:
                assert c.outcome == "mine" and c.record is not None and c.record.name == name, (name, c)
            else:
                assert (c.outcome, c.token, c.node) == ("other", owner, {"A": "node-a", "B": "node-b"}[owner])
    assert any(c.outcome == "other" for cs in seen.values() for _, _, c in cs)  # the batches did overlap
    assert {v.split("/")[0] for v in final.values()} == {"A", "B"}


async def test_cluster_coalesces_concurrent_claims_into_few_batches(pg, psql):
    counting = Counting(PostgresMembership(pg))
    cluster = Cluster(counting, "node-a")  # type: ignore[arg-type]
    await cluster.join()
    names = [f"n{i}" for i in range(1300)]
    claims = await asyncio.gather(*[cluster.claim(n, create=True) for n in names])
    assert all(c.outcome == "mine" and c.record == CARecord(n, b"", epoch=1)
               for n, c in zip(names, claims, strict=True))
    assert sum(counting.batches) == len(names)
    assert max(counting.batches) <= CLAIM_BATCH
    assert len(counting.batches) <= 2 * -(-len(names) // CLAIM_BATCH)  # far fewer than one per claim
    assert psql(f"SELECT count(*) FROM ca WHERE owner = '{cluster.token}'") == str(len(names))
    assert cluster.metrics.claims == len(names)

    # claims of one CA in one turn, alternating create: each as if alone, in the order they came
    counting.batches.clear()
    same = await asyncio.gather(cluster.claim("late", create=False), cluster.claim("late", create=False),
                                cluster.claim("late", create=True), cluster.claim("late", create=False))
    assert [c.outcome for c in same] == ["missing", "missing", "mine", "mine"]
    assert counting.batches == [1, 1, 1]
    twice = await asyncio.gather(cluster.claim("n7", create=False), cluster.claim("n7", create=False))
    assert twice[0] == twice[1] and twice[0].record is not twice[1].record  # one outcome, a record each
    assert counting.batches == [1, 1, 1, 1]


async def test_a_failed_batch_reaches_every_waiter_and_the_next_claims_run(pg_empty_url, psql):
    store = PostgresStore(pg_empty_url)
    await store.open()
    cluster = Cluster(PostgresMembership(store), "node-a")
    try:
        await cluster.join()
        await store.close()  # the database is gone for this bridge: the batch fails
        outcomes = await asyncio.gather(*[cluster.claim(f"f{i}", create=True) for i in range(50)],
                                        return_exceptions=True)
        assert len(outcomes) == 50 and all(isinstance(o, StoreError) for o in outcomes), outcomes[:3]
        await store.open()
        again = await asyncio.gather(*[cluster.claim(f"f{i}", create=True) for i in range(50)])
        assert [c.outcome for c in again] == ["mine"] * 50
    finally:
        await store.close()


async def test_a_cancelled_waiter_leaves_the_others_their_outcomes(pg):
    cluster = Cluster(PostgresMembership(pg), "node-a")
    await cluster.join()
    tasks = [asyncio.ensure_future(cluster.claim(f"k{i}", create=True)) for i in range(20)]
    await asyncio.sleep(0)  # every claim is queued
    tasks[3].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(c, Claim) and c.outcome == "mine" for i, c in enumerate(done) if i != 3)
