"""The one way requests come in, from any transport: the MQTT link, the embedded broker, the Harness in memory.

:meth:`Ingress.receive` takes a topic (or a CA name), the payload bytes as received and, optionally, a future to
tell the reply to; it finds the CA (forwarded topics included), routes requests for CAs owned by another bridge of
the cluster on undecoded, decodes and validates the rest, answers malformed ones (bridge.admission), and hands
the decoded request to the runtime. A transport adapter only turns its own events into that call.
"""

from __future__ import annotations

import asyncio
import logging
from time import perf_counter
from typing import Any

from bridge.errors import BadRequest
from bridge.metrics import FOLD_AT
from bridge.protocol import Topics, parse_request, valid_name
from bridge.runtime import Runtime

__all__ = ["Ingress"]

log = logging.getLogger("bridge")


class Ingress:
    """Decodes, validates, routes and submits inbound payloads for one runtime."""

    __slots__ = ("_admission", "_cas", "_decode", "_max_payload", "_metrics", "_router", "_submit", "topics")

    def __init__(self, runtime: Runtime, topics: Topics, max_payload: int) -> None:
        self.topics = topics
        self._cas = topics.cas  # inbound topic -> CA: the topics seen before (ca_of fills it)
        self._max_payload = max_payload
        self._submit = runtime.submit
        self._router = runtime.router
        self._admission = runtime.admission
        self._metrics = runtime.metrics
        self._decode = runtime.metrics.stage_decode

    def receive(self, target: str, payload: bytes, reply: asyncio.Future[Any] | None = None) -> None:
        """Take one inbound message. ``target``: the topic it came on (``<prefix>/<ca>/in``, or a cluster's
        forwarded-request topic), or a CA name (a transport that addresses CAs directly); ``reply``: a future
        told the reply of a call (or its rejection) when the caller is in this process."""
        began = perf_counter()
        hops = 0
        ca = self._cas.get(target)  # the usual case: an inbound topic seen before
        if ca is None:
            if "/" not in target:  # a CA name: no name has a '/'
                ca = target if valid_name(target) else None
            else:
                ca = self.topics.ca_of(target)
                if ca is None and self._router.cluster is not None \
                        and (fwd := self.topics.ca_of_forward(target)) is not None:
                    ca, hops = fwd
            if ca is None:
                self._dropped(target)
                return
        router = self._router
        if router.cluster is not None and len(payload) <= self._max_payload \
                and (node := router.elsewhere(ca, hops)) is not None:
            router.forward(node, ca, payload)  # owned by another live bridge: pass it on undecoded
            return
        try:
            req = parse_request(payload, self._max_payload)
        except BadRequest as exc:
            self._admission.refuse(ca, exc, reply)
            return
        req.at = now = perf_counter()
        times = self._decode.pending  # StageHistogram.observe, inlined
        times.append(now - began)
        if len(times) >= FOLD_AT:
            self._decode.fold()
        self._submit(ca, req, reply, hops=hops)

    def _dropped(self, target: str) -> None:
        metrics = self._metrics
        metrics.dropped_topics += 1
        if metrics.dropped_topics % 1000 == 1:
            log.warning("dropped a message on an invalid topic %r (%d so far)", target[:80], metrics.dropped_topics)
