"""Where the bridge's calls spent their time: the ``ca_bridge_stage_seconds`` histograms of a running bridge's
``/metrics`` (docs/OBSERVABILITY.md), scraped before and after a measured window and subtracted, so the breakdown
covers that window only. Used by bench.py (``--profile``, ``--fanout``).

    .venv/bin/python benchmarks/stages.py PORT      # the breakdown since the bridge started
"""

from __future__ import annotations

import math
import sys
import urllib.request
from typing import Any

FAMILY = "ca_bridge_stage_seconds"
Snapshot = dict[str, tuple[list[tuple[float, float]], float]]  # stage -> ([(upper bound, cumulative count)], sum)


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> Snapshot:
    """The stage histograms from ``http://HOST:PORT/metrics`` (empty if the bridge has none, or is unreachable)."""
    return _stages(_families(port, host, timeout))


def scrape_with_commits(port: int, host: str = "127.0.0.1",
                        timeout: float = 10.0) -> tuple[Snapshot, tuple[float, float, float]]:
    """One fetch of ``/metrics``: the stage histograms, and the commit totals so far (batches, calls in them, and
    seconds from a batch's start to its durability; zeros if unreachable)."""
    families = _families(port, host, timeout)
    found = {}
    for family in families:
        if family.name in ("ca_bridge_commit_batch_calls", "ca_bridge_commit_duration_seconds"):
            for s in family.samples:
                found[s.name] = s.value
    return _stages(families), (found.get("ca_bridge_commit_batch_calls_count", 0.0),
                               found.get("ca_bridge_commit_batch_calls_sum", 0.0),
                               found.get("ca_bridge_commit_duration_seconds_sum", 0.0))


def _stages(families: list[Any]) -> Snapshot:
    out: Snapshot = {}
    for family in families:
        if family.name != FAMILY:
            continue
        for s in family.samples:
            stage = s.labels.get("stage", "")
            buckets, total = out.get(stage, ([], 0.0))
            if s.name.endswith("_bucket"):
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_sum"):
                total = s.value
            out[stage] = (buckets, total)
    return out


def _families(port: int, host: str, timeout: float) -> list[Any]:
    """The metric families of ``http://HOST:PORT/metrics`` (none if the bridge is unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as resp:
            return list(text_string_to_metric_families(resp.read().decode()))
    except OSError:
        return []


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The upper bound of the bucket holding quantile ``q`` (cumulative counts, +Inf last)."""
    count = buckets[-1][1] if buckets else 0
    if count <= 0:
        return None
    for bound, running in buckets:
        if running >= q * count:
            return bound
    return math.inf


def breakdown(before: Snapshot, after: Snapshot) -> list[dict[str, Any]]:
    """Per stage (in the bridge's order): the count, mean, p50 and p99 (bucket upper bounds) of ``after - before``."""
    rows = []
    for stage, (buckets, total) in after.items():
        old, old_total = before.get(stage, ([], 0.0))
        old_counts = dict(old)
        diff = sorted((bound, n - old_counts.get(bound, 0.0)) for bound, n in buckets)
        count = diff[-1][1] if diff else 0.0
        seconds = total - old_total
        rows.append({"stage": stage, "count": int(count), "seconds": seconds,
                     "mean": seconds / count if count else None,
                     "p50": _quantile(diff, 0.5), "p99": _quantile(diff, 0.99)})
    return rows


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value * 1e6:,.0f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The breakdown as text (p50/p99: the upper bound of the histogram bucket they fall in)."""
    if not rows:
        return "stage breakdown: none (this bridge exports no ca_bridge_stage_seconds)"
    calls = sum(r["seconds"] for r in rows if r["stage"] != "ingress_decode")
    lines = [f"{'stage':16} {'count':>9} {'mean us':>9} {'p50 us <=':>10} {'p99 us <=':>10} {'share':>6}"]
    for r in rows:
        share = f"{100 * r['seconds'] / calls:5.1f}%" if calls and r["stage"] != "ingress_decode" else ""
        lines.append(f"{r['stage']:16} {r['count']:>9,} {_us(r['mean']):>9} {_us(r['p50']):>10} {_us(r['p99']):>10} "
                     f"{share:>6}")
    lines.append("share: of a call's time from admission to its reply handed to the MQTT link (the four call stages "
                 "add up to it); ingress_decode counts every inbound message")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(breakdown({}, scrape(int(sys.argv[1])))))
