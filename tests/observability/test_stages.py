"""Where calls spend their time: the per-stage latency histograms (``ca_bridge_stage_seconds{stage=...}``).

A scripted workload goes through the real ingress and runtime (the Harness, SQLite), and each stage's count is
checked exactly against it: ``ingress_decode`` counts every inbound message that decoded, the four call stages
every call that ran (the ones ``ca_bridge_calls_total`` counts). The four call stages are contiguous, so their sums
add up to the calls' admission-to-reply latency. Then a real bridge process shows them on /metrics (with HELP text)
and on the dashboard, and docs/OBSERVABILITY.md lists them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.errors import AppError, CallError
from bridge.metrics import STAGES, Metrics, exposition
from bridge.testing import Harness
from tests.apps import Counter
from tests.conftest import free_port, wait_port
from tests.device import Device

ROOT = Path(__file__).resolve().parents[2]
NAMES = [name for name, _ in STAGES]
CALL_STAGES = NAMES[1:]
TOKEN = "stage-token-4b7a"
SLEEP = 0.05  # what the slow method awaits: its stage can be no shorter


def _counts(m: Metrics) -> dict[str, int]:
    return {name: hist.count for name, hist in m.stages.items()}


async def test_each_stage_counts_a_scripted_workload_exactly(tmp_path):
    async with Harness(Counter, db=tmp_path / "stages.db") as h:
        assert h.runtime is not None
        m = h.runtime.metrics
        assert list(m.stages) == NAMES == ["ingress_decode", "mailbox_wait", "method", "commit_wait", "publish"]
        for _ in range(4):
            await h.call("st", "default", "incr")
        with pytest.raises(AppError):
            await h.call("st", "default", "fail_after_write", "app")
        with pytest.raises(CallError):
            await h.call("st", "default", "fail_after_write", "internal")
        with pytest.raises(CallError):  # refused at admission: decoded, never run
            await h.call("st", "default", "no_such_method")
        await h.call("st", "default", "incr", request_id="again")
        assert await h.call("st", "default", "incr", request_id="again") == 5  # a dedup hit: not run again
        await h.call("st", "default", "notify_to", "w", 1)
        await h.ack("st", "w", 1)
        await h.sync("st", "w", 1)
        await h.presence("st", "w", True)
        await h.send("st", b"\xff not cbor")  # does not decode: answered, not counted
        # a slow call, and one queued behind it on the same CA
        await asyncio.gather(h.call("st", "default", "sleep", SLEEP), h.call("st", "default", "incr"))
        await h.settle()

        ran = 4 + 2 + 1 + 1 + 2  # incr x4, the two failures, the first "again", notify_to, sleep + incr
        inbound = ran + 1 + 1 + 3  # + the unknown method, the dedup hit, ack, sync, presence
        assert _counts(m) == {"ingress_decode": inbound, **{name: ran for name in CALL_STAGES}}
        assert sum(m.calls.values()) == ran
        for name, hist in m.stages.items():
            assert sum(hist.counts) == hist.count, name
            assert 0 < hist.total < 60, name  # seconds: every stage took some time, none took forever
        # contiguous: the call stages add up to the calls' admission-to-reply latency
        latency = sum(hist.total for hist in m.latency.values())
        assert math.isclose(sum(m.stages[name].total for name in CALL_STAGES), latency, rel_tol=1e-9)
        assert m.stage_method.total >= SLEEP  # the slow method ran in the method stage ...
        assert m.stage_mailbox.total >= SLEEP * 0.9  # ... while the call behind it waited in the mailbox
        assert m.stage_commit.count == ran and m.commit_seconds.count >= 1


def test_stages_are_one_family_with_help_and_every_stage():
    m = Metrics()
    m.stage_method.observe(0.003)
    m.stage_method.observe(0.00003)
    text = exposition(m).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families["ca_bridge_stage_seconds"]
    assert family.type == "histogram"
    for name in NAMES:
        assert name in family.documentation
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
    for name in NAMES:
        count = 2 if name == "method" else 0
        assert samples[("ca_bridge_stage_seconds_count", (("stage", name),))] == count
        assert samples[("ca_bridge_stage_seconds_bucket", (("le", "+Inf"), ("stage", name)))] == count
    assert samples[("ca_bridge_stage_seconds_bucket", (("le", "5e-05"), ("stage", "method")))] == 1
    assert samples[("ca_bridge_stage_seconds_sum", (("stage", "method"),))] == pytest.approx(0.00303)
    assert "# HELP ca_bridge_stage_seconds Where calls spend their time" in text


def _metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _overview(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/overview", headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def test_a_bridge_shows_the_stages_on_metrics_and_the_dashboard(bridge_factory):
    port = free_port()  # /metrics and the dashboard on one port
    bridge = bridge_factory("tests/apps.py:Counter",
                            extra=["--metrics", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{port}",
                                   "--http-token", TOKEN])
    bridge.start()
    wait_port(port)
    dev = Device(bridge.port, "staged")
    try:
        for i in range(6):
            assert dev.call("incr") == i + 1
        dev.ack(0)  # an inbound message that is no call
        dev.call("get")  # the ack is decoded before this call (one session, in order)
        samples = _metrics(port)
        for name in CALL_STAGES:
            assert samples[("ca_bridge_stage_seconds_count", (("stage", name),))] == 7, name
            assert samples[("ca_bridge_stage_seconds_sum", (("stage", name),))] > 0, name
        decoded = samples[("ca_bridge_stage_seconds_count", (("stage", "ingress_decode"),))]
        assert decoded >= 8  # the 7 calls and the ack (more only if the client resent one)
        ov = _overview(port)
        rows = {row["stage"]: row for row in ov["stages"]}
        assert list(rows) == NAMES
        for name in CALL_STAGES:
            row = rows[name]
            assert row["count"] == 7, name
            assert 0 < row["mean"] <= row["p99"] and row["p50"] <= row["p99"] < 60, name
        assert rows["ingress_decode"]["count"] == decoded
    finally:
        dev.close()


def test_the_dashboard_page_renders_the_stage_table():
    page = (ROOT / "bridge" / "dashboard.html").read_text()
    assert 'id="stages"' in page and "renderStages(ov)" in page
    for key in ("s.stage", "s.count", "s.mean", "s.p50", "s.p99"):
        assert key in page, key


def test_observability_doc_lists_every_stage():
    doc = (ROOT / "docs" / "OBSERVABILITY.md").read_text()
    assert "ca_bridge_stage_seconds" in doc
    for name in NAMES:
        assert f"`{name}`" in doc, name

