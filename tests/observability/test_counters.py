"""Every counter has one owner (bridge.metrics.Metrics) and is exported on /metrics and the dashboard.

The MQTT link's and the ingress's counters are provoked on a real bridge process (an oversized packet, messages on
invalid topics) and read back exactly from both; the link's queue-full drop, which needs 100,000 publishes waiting,
is provoked on a link in this process with a small queue.
"""

from __future__ import annotations

import ast
import http.client
import json
import time
from pathlib import Path
from types import SimpleNamespace

import cbor2
from prometheus_client.parser import text_string_to_metric_families

from bridge.dashboard import overview
from bridge.metrics import Metrics, exposition
from bridge.mqtt import MAX_INBOUND, BrokerURL, MqttLink
from tests.apps import Counter
from tests.conftest import free_port, wait_port
from tests.device import Device
from tests.observability.test_metrics_and_logs import scrape, value

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "count-token-5e1d"


def samples_of(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def counters(m: Metrics) -> list[str]:
    """The plain int counters of a Metrics object (every one must be exported)."""
    return sorted(k for k, v in vars(m).items() if type(v) is int)


def dashboard_get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
        resp = conn.getresponse()
        assert resp.status == 200
        return json.loads(resp.read())
    finally:
        conn.close()


def wait_for(check, timeout: float = 30.0):
    """Poll ``check`` until it returns something truthy (the broker may reorder what one publisher sent)."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


def _settled(samples):
    done = value(samples, "ca_bridge_dropped_topics_total") >= 3 and value(samples, "ca_bridge_mqtt_oversized_total")
    return samples if done else None


def test_link_and_ingress_counters_reach_metrics_and_dashboard(bridge_factory):
    mport, hport = free_port(), free_port()
    bridge = bridge_factory("tests/apps.py:Counter",
                            extra=["--metrics", f"127.0.0.1:{mport}", "--http", f"127.0.0.1:{hport}",
                                   "--http-token", TOKEN])
    bridge.start()
    wait_port(hport)
    dev = Device(bridge.port, "counted")
    try:
        assert dev.call("incr") == 1
        before = scrape(mport)
        assert value(before, "ca_bridge_mqtt_connects_total") == 1
        for name in ("ca_bridge_mqtt_dropped_total", "ca_bridge_mqtt_oversized_total",
                     "ca_bridge_dropped_topics_total"):
            assert (name, ()) in before, name  # exported (as 0) before anything happened
            assert value(before, name) == 0
        # three messages on topics that match the bridge's subscription but name no valid CA, then one huge request:
        for bad in ("bad name", "semi;colon", "x" * 300):
            dev.publish(cbor2.dumps({"t": "call", "id": "x", "m": "incr", "a": []}), topic=f"ca/{bad}/in")
        dev.publish(b"\x00" * (MAX_INBOUND + 1))
        assert dev.call("incr", timeout=30) == 2  # the link skipped the huge packet and carried on
        first = wait_for(lambda: _settled(scrape(mport)))
        assert value(first, "ca_bridge_dropped_topics_total") == 3
        assert value(first, "ca_bridge_mqtt_oversized_total") == 1
        assert value(first, "ca_bridge_mqtt_dropped_total") == 0
        assert value(first, "ca_bridge_mqtt_connects_total") == 1
        second = scrape(mport)  # a request is counted once answered: this scrape sees the previous one
        assert value(second, "ca_bridge_http_requests_total") == value(first, "ca_bridge_http_requests_total") + 1
        totals = dashboard_get(hport, "/api/overview")["totals"]
        assert totals["dropped_topics"] == 3
        assert totals["mqtt_oversized"] == 1
        assert totals["mqtt_dropped"] == 0
        assert totals["mqtt_connects"] == 1
        assert totals["http_requests"] == value(second, "ca_bridge_http_requests_total") + 1
        assert "skipped an inbound message over" in bridge.logs()
    finally:
        dev.close()


async def test_a_full_link_queue_counts_its_drops_into_the_metrics_it_was_given():
    port = free_port()  # nothing listens: the link is never connected, so QoS 1 publishes wait in its queue
    metrics = Metrics()
    link = MqttLink(BrokerURL("127.0.0.1", port), client_id="drops", on_message=lambda _t, _p: None,
                    subscriptions=[], max_queued=2, metrics=metrics)
    for i in range(5):
        link.publish("ca/x/session/default", b"%d" % i)
    assert metrics.mqtt_dropped == 3
    assert value(samples_of(exposition(metrics)), "ca_bridge_mqtt_dropped_total") == 3
    alone = MqttLink(BrokerURL("127.0.0.1", port), client_id="alone", on_message=lambda _t, _p: None,
                     subscriptions=[], max_queued=0)  # standalone: counts into a Metrics of its own
    alone.publish("ca/x/session/default", b"0")
    assert alone.metrics.mqtt_dropped == 1 and alone.metrics is not metrics


def test_every_counter_is_exported_and_shown():
    m = Metrics()
    names = counters(m)
    assert {"mqtt_dropped", "mqtt_oversized", "mqtt_connects", "dropped_topics", "http_requests", "forwarded",
            "claims", "commit_failures"} <= set(names)
    for i, name in enumerate(names):
        setattr(m, name, 1000 + i)  # a distinct value each, so each must show up under some name
    text = exposition(m, gauges=lambda: {"cas": 7}, connected=lambda: True, cluster_nodes=lambda: 3)
    exported = set(samples_of(text).values())
    missing = [name for i, name in enumerate(names) if 1000 + i not in exported]
    assert not missing, f"counted but not on /metrics: {missing}"
    samples = samples_of(text)
    assert value(samples, "ca_bridge_cluster_nodes") == 3 and value(samples, "ca_bridge_cas_loaded") == 7
    assert value(samples, "ca_bridge_broker_connected") == 1
    alone = samples_of(exposition(Metrics()))  # not in a cluster: no cluster families
    assert ("ca_bridge_cluster_forwarded_total", ()) not in alone and ("ca_bridge_cluster_nodes", ()) not in alone

    runtime = SimpleNamespace(actors={}, metrics=m, snapshot_counts=lambda: {"cas": 0})
    bridge = SimpleNamespace(runtime=runtime, app=Counter, settings=SimpleNamespace(db="bridge.db", broker=None),
                             broker_url=BrokerURL("127.0.0.1", 1883), link=None,
                             cluster=SimpleNamespace(node="n1", live={"n1:t": "n1"}, healthy=True))
    ov = overview(bridge)
    shown = {v for v in (*ov["totals"].values(), *ov["cluster"].values()) if type(v) is int}
    missing = [name for i, name in enumerate(names) if 1000 + i not in shown]
    assert not missing, f"counted but not on the dashboard: {missing}"
    page = (ROOT / "bridge" / "dashboard.html").read_text()
    for key in ("mqtt_dropped", "mqtt_oversized", "mqtt_connects", "dropped_topics", "http_requests",
                "commit_failures", "presence_changes", "forwarded", "claims"):
        assert f".{key})" in page, f"the page does not show {key}"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any level (TYPE_CHECKING blocks and function bodies included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def test_metrics_and_the_dashboard_import_neither_the_runtime_nor_the_service():
    upward = {"bridge.runtime", "bridge.service", "bridge.cli"}
    for module in ("metrics", "dashboard", "mqtt", "http", "cluster", "committer"):
        found = _imports(ROOT / "bridge" / f"{module}.py") & upward
        assert not found, f"bridge/{module}.py imports {sorted(found)}"
    own = {m for m in _imports(ROOT / "bridge" / "metrics.py") if m == "bridge" or m.startswith("bridge.")}
    assert not own, f"bridge/metrics.py is a plain object and imports nothing of the bridge, not {sorted(own)}"
