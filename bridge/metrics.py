"""What the bridge counts, and its Prometheus exposition.

The hot path only touches plain ints and lists on the event loop thread (an increment, or a bisect for a
histogram): no locks, no label lookups in prometheus_client per call. A custom collector turns them into
Prometheus families when scraped, and asks its owner for the gauges (queues, mailboxes, online sessions) at that
moment, so they cost nothing between scrapes.

One :class:`Metrics` object per process, made by whoever owns the process (the service; a Runtime made without
one, as in the Harness, makes its own) and handed down to every part that counts: runtime, committer, cluster,
MQTT link, HTTP servers. Each counter lives here and nowhere else. This module imports nothing of the bridge: the
collector gets plain callables, never the runtime.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["GAUGES", "OUTCOMES", "STAGES", "Collector", "Histogram", "Metrics", "StageHistogram", "exposition"]

OUTCOMES = ("ok", "app", "internal", "bad_request", "busy", "unavailable", "not_found")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0)
STAGE_BUCKETS = (0.000005, 0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02,
                 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
FOLD_AT = 1024  # stage values kept as a list until this many, then sorted into their buckets at once
# Where a call spends its time, in order (the ``stage`` label of ca_bridge_stage_seconds; docs/OBSERVABILITY.md):
# the last four add up to ca_bridge_call_duration_seconds.
STAGES = (
    ("ingress_decode", "an inbound message of any kind, from its receipt by the ingress to its decoded request"),
    ("mailbox_wait", "a call, from admission to its CA starting it (the queue ahead of it; a new CA's on_init)"),
    ("method", "a call's run on its CA: the method, its reply and state encoded, the session changes"),
    ("commit_wait", "a call, from its effects handed to the group committer to their durable commit"),
    ("publish", "a call, from its durable commit to its reply and notifications handed to the MQTT link"),
)
DEVICE_COUNTERS = (  # (metric name, Metrics attribute, help): the device layer (docs/DEVICES.md)
    ("ca_bridge_device_syncs", "device_syncs", "Device syncs (dsync) received"),
    ("ca_bridge_device_deltas", "device_deltas", "to_cloud deltas (or whole maps) applied"),
    ("ca_bridge_device_resyncs", "device_resyncs", "Device syncs answered with a resync (a version gap)"),
    ("ca_bridge_bundles_sent", "bundles_sent", "Command bundles sent by CAs"),
    ("ca_bridge_bundles_run", "bundles_run", "Bundles the device reported done: every command ran on time"),
    ("ca_bridge_bundles_late", "bundles_late", "Bundles reported false: late, superseded, dropped or failed"),
    ("ca_bridge_device_hook_errors", "device_hook_errors", "on_device_sync / on_device_resume hooks that raised"),
)
GAUGES = (  # (key in the gauges mapping, metric name, help): the runtime's snapshot_counts() keys
    ("cas", "ca_bridge_cas_loaded", "CAs resident in memory (idle ones beyond --max-resident are evicted)"),
    ("sessions", "ca_bridge_sessions", "Sessions of the loaded CAs"),
    ("online", "ca_bridge_sessions_online", "Sessions whose device is connected (presence)"),
    ("queued", "ca_bridge_queued_notifications", "Unacknowledged notifications in all session queues"),
    ("queue_max", "ca_bridge_queue_depth_max", "The deepest session queue"),
    ("mailbox", "ca_bridge_mailbox_depth", "Requests waiting in CA mailboxes"),
    ("mailbox_max", "ca_bridge_mailbox_depth_max", "The fullest CA mailbox"),
    ("busy", "ca_bridge_busy_cas", "CAs with a call running or queued"),
    ("unapplied", "ca_bridge_store_unapplied_batches",
     "Committed batches in the SQLite store's redo log not applied to its file yet (it should stay small)"),
)


class Histogram:
    """Cumulative-on-export bucket counts with a sum, like a Prometheus histogram."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        """Prometheus buckets: cumulative counts per upper bound, ending with +Inf."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            out.append((_fmt(bound), float(running)))
        out.append(("+Inf", float(self.count)))
        return out

    def quantile(self, q: float) -> float | None:
        """An upper-bound estimate of quantile ``q`` (the bucket's bound), None when empty."""
        if not self.count:
            return None
        rank, running = q * self.count, 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            if running >= rank:
                return bound
        return float("inf")


class StageHistogram:
    """A :class:`Histogram` for values counted on every call (the stages, the calls' latency): observing appends to a
    list, and the list is sorted into the buckets in bulk (at FOLD_AT values, and before anything reads the histogram),
    which costs a fraction of a bucket search per value. Reads like a Histogram."""

    __slots__ = ("_hist", "pending")

    def __init__(self, bounds: tuple[float, ...] = STAGE_BUCKETS) -> None:
        self._hist = Histogram(bounds)
        self.pending: list[float] = []  # observed, not yet in the buckets

    def observe(self, value: float) -> None:
        """Count one value."""
        pending = self.pending
        pending.append(value)
        if len(pending) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move the pending values into the buckets."""
        pending = self.pending
        if not pending:
            return
        pending.sort()
        hist = self._hist
        counts, below = hist.counts, 0
        for i, bound in enumerate(hist.bounds):  # a bucket holds the values <= its bound, as Histogram.observe
            upto = bisect.bisect_right(pending, bound)
            counts[i] += upto - below
            below = upto
        counts[-1] += len(pending) - below
        hist.count += len(pending)
        hist.total += sum(pending)
        pending.clear()

    @property
    def bounds(self) -> tuple[float, ...]:
        return self._hist.bounds

    @property
    def counts(self) -> list[int]:
        self.fold()
        return self._hist.counts

    @property
    def count(self) -> int:
        self.fold()
        return self._hist.count

    @property
    def total(self) -> float:
        self.fold()
        return self._hist.total

    def buckets(self) -> list[tuple[str, float]]:
        """As :meth:`Histogram.buckets`."""
        self.fold()
        return self._hist.buckets()

    def quantile(self, q: float) -> float | None:
        """As :meth:`Histogram.quantile`."""
        self.fold()
        return self._hist.quantile(q)


def _fmt(bound: float) -> str:
    return repr(float(bound))


class Metrics:
    """Counters of one bridge process. Made by the process's owner and handed down; read by the exporter and the
    dashboard."""

    def __init__(self) -> None:
        self.started = time.time()
        self.calls: dict[tuple[str, str], int] = {}  # (method, outcome) -> count
        self.latency: dict[str, StageHistogram] = {}  # method -> admission-to-durable-reply seconds
        self.rejected: dict[str, int] = {}  # reason -> count (answered without running)
        self.notes_published = 0
        self.notes_acked = 0
        self.dedup_hits = 0
        self.commit_batch = Histogram(BATCH_BUCKETS)
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.commit_failures = 0
        # the stage histograms (STAGES), one attribute each for the hot path; ``stages`` names them for export
        self.stage_decode = StageHistogram()
        self.stage_mailbox = StageHistogram()
        self.stage_method = StageHistogram()
        self.stage_commit = StageHistogram()
        self.stage_publish = StageHistogram()
        # the pending lists of the call stages, appended to directly (call_stages) as StageHistogram.observe would
        self._call_stages = (self.stage_mailbox.pending, self.stage_method.pending, self.stage_commit.pending,
                             self.stage_publish.pending)
        # time.time() - time.perf_counter(), so that a call's delivery reads one clock (call_finished); renewed
        # every FOLD_AT calls, so a step of the wall clock shows in the dashboard's times within that many calls
        self.wall_offset = time.time() - time.perf_counter()
        self.stages = dict(zip((name for name, _ in STAGES), (
            self.stage_decode, self.stage_mailbox, self.stage_method, self.stage_commit, self.stage_publish),
            strict=True))
        self.presence_changes = 0
        self.mqtt_connects = 0  # MQTT link: connections made (the first one and every reconnect)
        self.mqtt_dropped = 0  # MQTT link: QoS 1 publishes refused because its outbound queue was full
        self.mqtt_oversized = 0  # MQTT link: inbound packets over its size limit, acknowledged and skipped
        self.dropped_topics = 0  # ingress: messages on a topic that names no CA, dropped unanswered
        self.http_requests = 0  # requests answered by the metrics and dashboard HTTP servers
        self.forwarded = 0  # cluster: requests forwarded to the owning bridge
        self.claims = 0  # cluster: ownership lookups and claims in the database
        # lazy loading (bridge.runtime): CAs loaded from the store when asked for, and idle CAs evicted (LRU)
        self.cas_loaded = 0
        self.cas_evicted = 0
        # the device layer (bridge.device): dsync requests, to_cloud deltas applied, resyncs asked, bundles sent by
        # CAs, bundles finished with result True (run) or False (late, superseded or failed), failed device hooks
        self.device_syncs = 0
        self.device_deltas = 0
        self.device_resyncs = 0
        self.bundles_sent = 0
        self.bundles_run = 0
        self.bundles_late = 0
        self.device_hook_errors = 0
        self.history: deque[tuple[float, int, int]] = deque(maxlen=600)  # (time, calls, errors): the rate charts
        self.recent_errors: deque[tuple[float, str, str, str, str]] = deque(maxlen=50)  # (time, ca, method, kind, name)

    # -- the hot path ----------------------------------------------------------------------------------------

    def call_done(self, method: str, outcome: str, seconds: float) -> None:
        """One call answered after running (outcome: ok, app, internal)."""
        key = (method, outcome)
        self.calls[key] = self.calls.get(key, 0) + 1
        hist = self.latency.get(method)
        if hist is None:
            hist = self.latency[method] = StageHistogram(LATENCY_BUCKETS)
        hist.observe(seconds)

    def call_stages(self, admitted: float, started: float, submitted: float, durable: float, sent: float) -> None:
        """The stage times of one call answered after running (time.perf_counter values; see :data:`STAGES`)."""
        mailbox, method, commit, publish = self._call_stages
        mailbox.append(started - admitted)
        method.append(submitted - started)
        commit.append(durable - submitted)
        publish.append(sent - durable)
        if len(publish) >= FOLD_AT:
            self._fold_stages()

    def call_finished(self, method: str, outcome: str, admitted: float, started: float, submitted: float,
                      durable: float, sent: float) -> float:
        """:meth:`call_done` and :meth:`call_stages` in one (the delivery of every call); returns the wall clock
        (Unix time) at ``sent``, from :attr:`wall_offset`, for the dashboard."""
        key = (method, outcome)
        calls = self.calls
        calls[key] = calls.get(key, 0) + 1
        hist = self.latency.get(method)
        if hist is None:
            hist = self.latency[method] = StageHistogram(LATENCY_BUCKETS)
        pending = hist.pending
        pending.append(sent - admitted)
        if len(pending) >= FOLD_AT:
            hist.fold()
        self.call_stages(admitted, started, submitted, durable, sent)
        return sent + self.wall_offset

    def _fold_stages(self) -> None:
        for hist in (self.stage_mailbox, self.stage_method, self.stage_commit, self.stage_publish):
            hist.fold()
        self.wall_offset = time.time() - time.perf_counter()

    def reject(self, reason: str) -> None:
        """One request answered without running (busy, rate, bad_request, not_found, unavailable, shutdown)."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def error(self, ca: str, method: str, kind: str, name: str) -> None:
        """Remember a failed call for the dashboard's recent-errors list."""
        self.recent_errors.append((time.time(), ca, method, kind, name))

    # -- summaries --------------------------------------------------------------------------------------------

    def totals(self) -> tuple[int, int]:
        """(calls answered, of which errors) so far, rejections included."""
        calls = errors = 0
        for (_, outcome), n in self.calls.items():
            calls += n
            if outcome != "ok":
                errors += n
        rejected = sum(self.rejected.values())
        return calls + rejected, errors + rejected

    def sample(self) -> None:
        """Append (now, calls, errors) to the history (the dashboard samples once a second)."""
        calls, errors = self.totals()
        self.history.append((time.time(), calls, errors))

    def rates(self) -> list[tuple[float, float, float]]:
        """Per-second (time, calls/s, errors/s) from the history."""
        points = list(self.history)
        out = []
        for (t0, c0, e0), (t1, c1, e1) in itertools.pairwise(points):
            dt = max(t1 - t0, 1e-6)
            out.append((t1, (c1 - c0) / dt, (e1 - e0) / dt))
        return out


class Collector:
    """A prometheus_client collector over one Metrics object and a few live values read at scrape time.

    ``gauges`` returns the :data:`GAUGES` values by key (missing keys are not exported), ``connected`` whether the
    MQTT link is up, ``cluster_nodes`` the live bridges of a cluster (given only in a cluster: the cluster
    families are exported only then).
    """

    def __init__(self, metrics: Metrics, *, gauges: Callable[[], Mapping[str, int]] | None = None,
                 connected: Callable[[], bool] | None = None,
                 cluster_nodes: Callable[[], int] | None = None) -> None:
        self.metrics = metrics
        self.gauges = gauges
        self.connected = connected
        self.cluster_nodes = cluster_nodes

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families are produced at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self.metrics
        calls = CounterMetricFamily("ca_bridge_calls", "Calls run, by method and outcome (ok, app, internal)",
                                    labels=["method", "outcome"])
        for (method, outcome), n in sorted(m.calls.items()):
            calls.add_metric([method, outcome], n)
        yield calls
        latency = HistogramMetricFamily("ca_bridge_call_duration_seconds",
                                        "From admission to the durable reply, by method", labels=["method"])
        for method, hist in sorted(m.latency.items()):
            latency.add_metric([method], hist.buckets(), hist.total)
        yield latency
        rejected = CounterMetricFamily("ca_bridge_rejected", "Requests answered without running, by reason",
                                       labels=["reason"])
        for reason, n in sorted(m.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        yield CounterMetricFamily("ca_bridge_notifications_published", "Notifications handed to the broker",
                                  value=m.notes_published)
        yield CounterMetricFamily("ca_bridge_notifications_acked", "Notifications acknowledged by devices",
                                  value=m.notes_acked)
        yield CounterMetricFamily("ca_bridge_dedup_hits", "Retried calls answered from their dedup record",
                                  value=m.dedup_hits)
        yield CounterMetricFamily("ca_bridge_presence_changes", "Sessions that went online or offline",
                                  value=m.presence_changes)
        batch = HistogramMetricFamily("ca_bridge_commit_batch_calls", "Calls per group commit")
        batch.add_metric([], m.commit_batch.buckets(), m.commit_batch.total)
        yield batch
        seconds = HistogramMetricFamily("ca_bridge_commit_duration_seconds", "Durable store commit time")
        seconds.add_metric([], m.commit_seconds.buckets(), m.commit_seconds.total)
        yield seconds
        stages = HistogramMetricFamily("ca_bridge_stage_seconds", "Where calls spend their time, by stage: "
                                       + "; ".join(f"{name}: {doc}" for name, doc in STAGES), labels=["stage"])
        for name, stage in m.stages.items():
            stages.add_metric([name], stage.buckets(), stage.total)
        yield stages
        yield CounterMetricFamily("ca_bridge_commit_failures", "Group commits that failed (calls answered "
                                  "unavailable, CAs reloaded)", value=m.commit_failures)
        yield CounterMetricFamily("ca_bridge_mqtt_connects", "Connections to the broker made (the first and every "
                                  "reconnect)", value=m.mqtt_connects)
        yield CounterMetricFamily("ca_bridge_mqtt_dropped", "Outbound QoS 1 publishes dropped because the MQTT "
                                  "link's queue was full (devices recover by retry or sync)", value=m.mqtt_dropped)
        yield CounterMetricFamily("ca_bridge_mqtt_oversized", "Inbound MQTT packets over the size limit, "
                                  "acknowledged and skipped", value=m.mqtt_oversized)
        yield CounterMetricFamily("ca_bridge_dropped_topics", "Inbound messages on a topic that names no CA, "
                                  "dropped unanswered", value=m.dropped_topics)
        yield CounterMetricFamily("ca_bridge_cas_loads", "CAs loaded from the store when a request asked for them "
                                  "(first use since start, or after eviction)", value=m.cas_loaded)
        yield CounterMetricFamily("ca_bridge_cas_evicted", "Idle CAs evicted from memory (least recently used, "
                                  "beyond --max-resident)", value=m.cas_evicted)
        for name, attr, doc in DEVICE_COUNTERS:
            yield CounterMetricFamily(name, doc, value=getattr(m, attr))
        yield CounterMetricFamily("ca_bridge_http_requests", "Requests answered by the metrics and dashboard "
                                  "HTTP servers", value=m.http_requests)
        view = self.gauges() if self.gauges is not None else {}
        for key, name, doc in GAUGES:
            if key in view:
                yield GaugeMetricFamily(name, doc, value=view[key])
        if self.connected is not None:
            yield GaugeMetricFamily("ca_bridge_broker_connected", "1 while connected to the broker",
                                    value=1.0 if self.connected() else 0.0)
        yield GaugeMetricFamily("ca_bridge_start_time_seconds", "Unix time the bridge started", value=m.started)
        if self.cluster_nodes is not None:
            yield CounterMetricFamily("ca_bridge_cluster_forwarded", "Requests forwarded to the owning bridge",
                                      value=m.forwarded)
            yield CounterMetricFamily("ca_bridge_cluster_claims", "Ownership lookups and claims in the database",
                                      value=m.claims)
            yield GaugeMetricFamily("ca_bridge_cluster_nodes", "Live bridges in the cluster",
                                    value=self.cluster_nodes())


def exposition(metrics: Metrics, *, gauges: Callable[[], Mapping[str, int]] | None = None,
               connected: Callable[[], bool] | None = None, cluster_nodes: Callable[[], int] | None = None) -> bytes:
    """The Prometheus text format for one scrape (the arguments as for :class:`Collector`)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(metrics, gauges=gauges, connected=connected, cluster_nodes=cluster_nodes))
    return bytes(generate_latest(registry))
