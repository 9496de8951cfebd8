"""Several bridges on one shared store: this node's membership, CA ownership and request routing (the policy).

The coordination itself (who is alive, who owns which CA, the commit fence) stands behind
bridge.store.membership.Membership; on PostgreSQL that is bridge.store.postgres_membership.

The design, in short (docs/SCALING.md has the long form):

- Each running bridge is a *node* with a unique *token* (node name + a random part, new at every start), kept
  alive by heartbeats (on PostgreSQL: a row in the database). A node whose membership has expired is presumed dead.
- Every CA has at most one owner (on PostgreSQL: the ``owner`` column of its row). A bridge runs a CA's calls only
  after claiming it (allowed when the CA is unowned or its owner is dead), and every commit is fenced on ownership
  (see Membership). So one call at a time per CA holds cluster-wide even when a presumed-dead bridge is still
  running: its commits are refused and nothing it computed leaves.
- Requests reach an arbitrary bridge (a ``$share`` subscription). A bridge that does not own the CA forwards the
  raw payload to the owner's private topic; a bridge that finds the CA unowned claims it. Exactly-once follows
  from the dedup records committed with each call: whichever bridge owns the CA next loads them.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import secrets
import socket
import time
from collections import deque

from bridge.metrics import Metrics
from bridge.store.base import CARecord
from bridge.store.membership import Claim, Membership

__all__ = ["Cluster", "default_node_name"]

log = logging.getLogger("bridge.cluster")

_ROUTE_CACHE_MAX = 200_000
ROUTE_TTL = 30.0  # seconds a learned owner is trusted before the database is asked again (a moved CA costs one
# more hop meanwhile: the old owner forwards on fresh information)
CLAIM_BATCH = 500  # CAs per Membership.claim_many: one transaction, a few statements over arrays this long


def default_node_name() -> str:
    """host-pid: unique per process. Give a stable name (``--node``) to make a restarted bridge free its CAs at
    once instead of after the membership TTL."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Cluster:
    """This bridge's membership and its view of who owns which CA."""

    def __init__(self, membership: Membership, node: str | None = None, *, ttl: float = 5.0,
                 heartbeat: float = 1.0, metrics: Metrics | None = None) -> None:
        if heartbeat <= 0 or ttl <= 2 * heartbeat:
            raise ValueError("the membership TTL must exceed two heartbeats")
        self.membership = membership
        self.node = node or default_node_name()
        self.token = f"{self.node}:{secrets.token_hex(6)}"
        self.ttl = ttl
        self.heartbeat_interval = heartbeat
        self.live: dict[str, str] = {}  # token -> node name, as of the last heartbeat
        self._owners: dict[str, tuple[str, float]] = {}  # CA -> (owner token, good until): a routing cache
        self.metrics = metrics if metrics is not None else Metrics()  # counts claims (forwards: the service)
        self.healthy = False
        self._queue: deque[tuple[str, bool, asyncio.Future[Claim]]] = deque()  # claims waiting for a batch
        self._drainer: asyncio.Future[None] | None = None  # the task running batches, while there are any

    async def join(self) -> None:
        """Register (fencing every commit on this incarnation's token)."""
        self.membership.fence(self.token)
        await self.membership.join(self.token, self.node, self.ttl)
        await self.beat()

    async def beat(self) -> None:
        """Renew membership and refresh the live nodes. Raises StoreError when the database is unreachable."""
        try:
            present, live = await self.membership.heartbeat(self.token, self.node, self.ttl)
        except Exception:
            self.healthy = False
            raise
        if not present:
            log.warning("node %s: membership had lapsed (database outage, or another bridge runs with the same "
                        "--node name); CAs taken over meanwhile are refused at commit", self.node)
        self.live = live
        self.healthy = True

    async def leave(self) -> None:
        """Release every CA and the membership, so the other bridges take over at once."""
        released = await self.membership.leave(self.token)
        log.info("node %s left the cluster, releasing %d CAs", self.node, released)

    def route(self, ca: str) -> str | None:
        """The node name to forward a request for ``ca`` to, if another live bridge is known to own it."""
        entry = self._owners.get(ca)
        if entry is None:
            return None
        token, until = entry
        node = self.live.get(token)
        if node is None or token == self.token or time.monotonic() > until:
            del self._owners[ca]
            return None
        return node

    async def claim(self, ca: str, *, create: bool) -> Claim:
        """Ask the database for ``ca``: ours (claimed now if it was free), another live bridge's, or missing.

        Claims are coalesced: the calls made while a batch is in the database wait for the next one, and each batch
        is one Membership.claim_many (one transaction), so a bridge meeting thousands of new CAs at once pays a
        round of the database per batch, not per CA. The outcome is the one a claim of ``ca`` alone would get."""
        future: asyncio.Future[Claim] = asyncio.get_running_loop().create_future()
        self._queue.append((ca, create, future))
        if self._drainer is None:
            self._drainer = asyncio.ensure_future(self._drain())
        claim = await future
        self.metrics.claims += 1
        if claim.outcome == "other" and claim.token is not None:
            if len(self._owners) >= _ROUTE_CACHE_MAX:
                self._owners.clear()
            self._owners[ca] = (claim.token, time.monotonic() + ROUTE_TTL)
        else:
            self._owners.pop(ca, None)
        return claim

    async def _drain(self) -> None:
        """Run the queued claims, one batch in flight at a time, until none is left."""
        batch: dict[str, tuple[bool, list[asyncio.Future[Claim]]]] = {}
        try:
            while self._queue:
                batch = self._next_batch()
                try:
                    claims = await self.membership.claim_many({ca: create for ca, (create, _) in batch.items()},
                                                              self.token)
                    results = [(futures, claims[ca]) for ca, (_, futures) in batch.items()]
                except Exception as exc:  # every waiter of the batch gets it
                    for _, futures in batch.values():
                        for f in futures:
                            if not f.done():  # (a waiter cancelled meanwhile gets nothing)
                                f.set_exception(exc)
                    continue
                for futures, claim in results:
                    for i, f in enumerate(futures):  # several claims of one CA: each gets its own copy
                        if not f.done():
                            f.set_result(copy.deepcopy(claim) if i else claim)
        finally:  # left early only when cancelled (the loop is closing): so are the claims still waiting
            self._drainer = None
            for _, futures in batch.values():
                for f in futures:
                    f.cancel()
            while self._queue:
                self._queue.popleft()[2].cancel()

    def _next_batch(self) -> dict[str, tuple[bool, list[asyncio.Future[Claim]]]]:
        """Up to CLAIM_BATCH CAs from the queue, in arrival order. Several claims of one CA share one outcome;
        a later claim of a CA in the batch with the other ``create`` flag waits for the next batch, and so do
        the claims of that CA after it (so that each gets what it would get alone, in the order they came)."""
        batch: dict[str, tuple[bool, list[asyncio.Future[Claim]]]] = {}
        later: list[tuple[str, bool, asyncio.Future[Claim]]] = []
        deferred: set[str] = set()
        queue = self._queue
        while queue and len(batch) < CLAIM_BATCH:
            ca, create, future = queue.popleft()
            entry = batch.get(ca)
            if entry is None:
                batch[ca] = (create, [future])
            elif entry[0] == create and ca not in deferred:
                entry[1].append(future)
            else:
                deferred.add(ca)
                later.append((ca, create, future))
        queue.extendleft(reversed(later))
        return batch

    async def adopt(self) -> list[CARecord]:
        """Claim a fair share of the CAs nobody alive owns (so that their pulses keep running)."""
        orphans = await self.membership.orphans()
        if not orphans:
            return []
        share = -(-orphans // max(1, len(self.live)))
        return await self.membership.adopt(self.token, limit=min(share, 5000))
