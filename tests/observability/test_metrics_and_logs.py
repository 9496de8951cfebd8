"""Prometheus metrics scraped after a scripted workload, and JSON logs, from a real bridge process."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port
from tests.device import CallFailed, Device


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_a_scripted_workload(bridge_factory):
    mport = free_port()
    bridge = bridge_factory("tests/apps.py:Counter", extra=["--metrics", f"127.0.0.1:{mport}", "--mailbox", "2"])
    bridge.start()
    dev = Device(bridge.port, "metered")
    try:
        for _ in range(7):
            dev.call("incr")
        for _ in range(2):
            with pytest.raises(CallFailed) as failed:
                dev.call("fail_after_write", "app")
            assert failed.value.err["kind"] == "app"
        with pytest.raises(CallFailed) as failed:
            dev.call("fail_after_write", "internal")
        assert failed.value.err["kind"] == "internal"
        with pytest.raises(CallFailed) as failed:
            dev.call("no_such_method")
        assert failed.value.err["name"] == "NoSuchMethod"
        rid = dev.send_call("incr")
        dev.wait_reply(rid)
        dev.send_call("incr", rid=rid)  # a retry: answered from the dedup record
        with dev._cond:
            dev.replies.pop(rid)
        dev.wait_reply(rid)
        watcher = Device(bridge.port, "metered", "w")
        for i in range(3):
            dev.call("notify_to", "w", i)
        notes = watcher.wait_notes(3)
        watcher.ack(notes[-1]["seq"])
        # the ack commits asynchronously: wait for it before the flood below, which would refuse it (mailbox full)
        deadline = time.monotonic() + 15
        while value(scrape(mport), "ca_bridge_notifications_acked_total") < 3:
            assert time.monotonic() < deadline, "the ack was never counted"
            time.sleep(0.1)
        # flood a slow CA past its mailbox of 2: some calls are answered busy without running
        rids = [dev.send_call("sleep", 0.3) for _ in range(8)]
        busy = 0
        for r in rids:
            reply = dev.wait_reply(r, 15)
            busy += "err" in reply and reply["err"]["name"] == "Busy"
        assert busy >= 1
        samples = scrape(mport)
        assert value(samples, "ca_bridge_calls_total", method="incr", outcome="ok") == 8  # 7 + 1 (the retry: no)
        assert value(samples, "ca_bridge_calls_total", method="fail_after_write", outcome="app") == 2
        assert value(samples, "ca_bridge_calls_total", method="fail_after_write", outcome="internal") == 1
        assert value(samples, "ca_bridge_calls_total", method="sleep", outcome="ok") == 8 - busy
        assert value(samples, "ca_bridge_rejected_total", reason="NoSuchMethod") == 1
        assert value(samples, "ca_bridge_rejected_total", reason="Busy") == busy
        assert value(samples, "ca_bridge_dedup_hits_total") == 1
        assert value(samples, "ca_bridge_notifications_published_total") >= 3
        assert value(samples, "ca_bridge_notifications_acked_total") == 3
        assert value(samples, "ca_bridge_call_duration_seconds_count", method="incr") == 8
        assert value(samples, "ca_bridge_call_duration_seconds_bucket", method="incr", le="+Inf") == 8
        assert value(samples, "ca_bridge_call_duration_seconds_sum", method="incr") > 0
        batches = value(samples, "ca_bridge_commit_batch_calls_count")
        assert 1 <= batches <= value(samples, "ca_bridge_commit_batch_calls_sum")
        assert value(samples, "ca_bridge_commit_duration_seconds_count") == batches
        assert value(samples, "ca_bridge_cas_loaded") == 1
        assert value(samples, "ca_bridge_sessions") == 2
        assert value(samples, "ca_bridge_queued_notifications") == 0
        assert value(samples, "ca_bridge_broker_connected") == 1
        deadline = time.monotonic() + 15  # the store's redo log is applied to the SQLite file within 50 ms
        while value(scrape(mport), "ca_bridge_store_unapplied_batches") != 0:
            assert time.monotonic() < deadline, "the redo log was never applied"
            time.sleep(0.05)
        # only /metrics is served there, and read-only
        with pytest.raises(urllib.error.HTTPError) as not_found:
            urllib.request.urlopen(f"http://127.0.0.1:{mport}/", timeout=5)
        assert not_found.value.code == 404
        watcher.close()
    finally:
        dev.close()


def test_json_logs_carry_ca_session_and_request(bridge_factory):
    bridge = bridge_factory("tests/apps.py:Counter", options=["--log-format", "json"])
    bridge.start()
    dev = Device(bridge.port, "logged", "s1")
    try:
        rid = dev.send_call("fail_after_write", "internal")
        assert dev.wait_reply(rid)["err"]["kind"] == "internal"
        deadline = time.monotonic() + 5
        found = None
        while found is None and time.monotonic() < deadline:
            records = [json.loads(line) for line in bridge.logs().splitlines() if line.startswith("{")]
            found = next((r for r in records if r.get("request") == rid), None)
            time.sleep(0.1)
        assert found is not None, bridge.logs()[-2000:]
        assert found["ca"] == "logged" and found["session"] == "s1" and found["level"] == "ERROR"
        assert "RuntimeError" in found["exc"] and found["logger"] == "bridge.ca"
        lines = [line for line in bridge.logs().splitlines() if line.strip()]
        assert lines and all(line.startswith("{") for line in lines), [x for x in lines if x[:1] != "{"][:3]
    finally:
        dev.close()
