"""Routing: whether a request for a CA runs on this bridge or on the bridge of its cluster that owns the CA.

Without a cluster everything runs here. In a cluster (bridge.cluster) the decisions are: before decoding, pass a
request on undecoded when another live bridge is known to own its CA (:meth:`Router.elsewhere`); when the CA is
claimed and found owned elsewhere, pass it on one more hop if it may still travel (:meth:`Router.pass_on`).
The ingress asks the first, the runtime (placing a CA, or reclaiming one whose commit was refused) the second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Container
from typing import TYPE_CHECKING, Any, Final

from bridge.admission import Sink
from bridge.protocol import Inbound

if TYPE_CHECKING:
    from bridge.cluster import Cluster
    from bridge.store import Claim

__all__ = ["MAX_HOPS", "Router"]

MAX_HOPS: Final = 2  # a request is passed on between the bridges of a cluster at most this many times

log = logging.getLogger("bridge.runtime")


class Router:
    """Where requests for a CA go. ``local``: the CAs loaded here (the runtime's registry)."""

    __slots__ = ("cluster", "local", "sink")

    def __init__(self, cluster: Cluster | None, sink: Sink, local: Container[str]) -> None:
        self.cluster = cluster
        self.sink = sink
        self.local = local

    def elsewhere(self, ca: str, hops: int) -> str | None:
        """The node to pass a request for ``ca`` on to, undecoded, or None to run it here. Only a request that
        reached this bridge first (``hops`` 0) for a CA not loaded here, and only on cached knowledge: a CA whose
        owner is unknown is claimed (bridge.runtime) once the request is decoded."""
        cluster = self.cluster
        if cluster is None or hops or ca in self.local:
            return None
        return cluster.route(ca)

    def forward(self, node: str, ca: str, payload: bytes, hops: int = 1) -> None:
        """Pass a raw request on to ``node``."""
        self.sink.forward(node, ca, payload, hops)

    async def claim(self, ca: str, *, create: bool) -> Claim | None:
        """Ask the cluster for ``ca`` (claiming it if free); None if the database could not be asked."""
        try:
            return await self.owner(ca, create=create)
        except Exception as exc:
            log.warning("claiming CA %s failed: %s", ca, exc)
            return None

    async def owner(self, ca: str, *, create: bool = False) -> Claim:
        """Ask the cluster for ``ca`` (claiming it if free); raises when the database cannot be asked."""
        assert self.cluster is not None
        return await self.cluster.claim(ca, create=create)

    def pass_on(self, node: str | None, ca: str, req: Inbound, future: asyncio.Future[Any] | None, hops: int) -> bool:
        """``ca`` is owned by ``node``: pass ``req`` on one more hop, on fresh information; False if it may not
        travel (too many hops, someone waits for it here, or no raw payload) and must be answered here."""
        if hops >= MAX_HOPS or future is not None or not req.raw or node is None:
            return False
        self.sink.forward(node, ca, req.raw, hops + 1)
        return True
