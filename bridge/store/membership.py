"""Cluster ownership behind one small interface: who is alive, who owns which CA, and the fence on commits.

bridge.cluster (the node's policy: heartbeat timing, route cache, fair share of orphans) uses only this interface;
the PostgreSQL implementation is bridge.store.postgres_membership. Another coordination backend (etcd, Redis, ...)
satisfies it by providing the same operations with the same guarantees, listed on :class:`Membership`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from bridge.store.base import CARecord

__all__ = ["Claim", "Membership"]


@dataclass(slots=True)
class Claim:
    """The outcome of asking for a CA: ``mine`` (with its record: empty, epoch 1, if just created), ``other``
    (owned by a live bridge, named by ``node``, its incarnation ``token``), or ``missing`` (no such CA)."""

    outcome: Literal["mine", "other", "missing"]
    record: CARecord | None = None
    node: str | None = None
    token: str | None = None


class Membership(Protocol):
    """What a cluster needs from its coordination backend.

    A *token* names one incarnation of a bridge (node name + a random part, new at every start); a *node* is the
    bridge's name. A member stays alive while it renews its membership within its TTL. Every CA has at most one
    owner token and an *epoch* that grows by one each time the CA changes hands; a CA may be claimed when it has no
    owner or its owner is not alive.

    The fence. A bridge presumed dead may still be running, so ownership alone cannot keep two bridges from writing
    one CA: every commit must be refused for a CA this bridge no longer owns, or owns under a later epoch than the
    copy the changes were computed on (``Change.epoch``). That check must be atomic with the write (checked in
    one transaction, holding the CA's row, or a takeover can slip in between), so it is enforced by the *store's*
    commit, not here: :meth:`fence` only tells the store which token to check from now on, and the store's commit
    returns the CAs it refused. A Membership whose backend is not the store's own database (etcd beside SQLite,
    say) must therefore come with an equivalent fenced commit, for instance the store keeping the owner and epoch
    in the rows it writes and checking them in the same transaction.

    Claims come in batches (:meth:`claim_many`): a bridge meeting many new CAs at once (a fleet reconnecting) asks
    for all of them in one round of the backend, not one each. Each CA of a batch gets exactly the outcome a claim
    of it alone would get; the batch is atomic (all or nothing, an error fails every CA of it), and two members
    claiming overlapping batches at the same time must neither deadlock nor both own a CA.
    """

    def fence(self, token: str | None) -> None:
        """Fence every later commit of the store on ``token`` (None: unfenced, as tools commit)."""

    async def join(self, token: str, node: str, ttl: float) -> None:
        """Register this incarnation, alive for ``ttl`` seconds; earlier incarnations of ``node`` are gone at once
        (their CAs are free)."""

    async def heartbeat(self, token: str, node: str, ttl: float) -> tuple[bool, dict[str, str]]:
        """Renew the membership for ``ttl`` seconds (making it again if it had lapsed); returns whether it was still
        there, and the live members (token -> node name)."""

    async def leave(self, token: str) -> int:
        """Give up every CA of ``token`` and the membership (a clean shutdown); returns how many CAs were released."""

    async def claim_many(self, names: Mapping[str, bool], token: str) -> dict[str, Claim]:
        """Claim each CA of ``names`` (name -> whether to create it when missing), in one round: own it if it is
        unowned, its owner is not alive, or it is ours already, and load it (taking it raises its epoch by one; a
        created CA is owned, with epoch 1 and an empty state); else say which live member owns it (node name and
        token), or that it is missing. Returns a Claim for every name."""

    async def claim(self, name: str, token: str, *, create: bool) -> Claim:
        """One CA: ``claim_many({name: create}, token)[name]`` (the same operation, for tools and tests)."""

    async def adopt(self, token: str, *, limit: int) -> list[CARecord]:
        """Claim up to ``limit`` CAs without a live owner, with their records (pulses need an owner)."""

    async def orphans(self) -> int:
        """How many CAs have no live owner."""

    async def owners(self) -> dict[str, int]:
        """Live node name -> how many CAs it owns (for tools, the dashboard and tests)."""
