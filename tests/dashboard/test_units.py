"""The dashboard in this process: its documents over a real runtime (Harness), clipping, and its lifecycle."""

from __future__ import annotations

import asyncio
import json
import math
from types import SimpleNamespace

import pytest

from bridge import dashboard
from bridge.dashboard import Dashboard, ca_detail, clip, overview
from bridge.mqtt import BrokerURL
from bridge.service import Settings
from bridge.testing import Harness
from tests.apps import Counter


def fake_bridge(runtime, db="bridge.db"):
    """What the dashboard reads of a bridge.service.Bridge."""
    return SimpleNamespace(runtime=runtime, app=Counter, settings=Settings(db=db),
                           broker_url=BrokerURL("127.0.0.1", 1883, username="bridge", password="secret"),
                           link=None, cluster=None)


@pytest.fixture
async def h():
    async with Harness(Counter) as harness:
        yield harness


async def get(port: int, path: str, token: str | None = None) -> tuple[int, dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body) if body.startswith(b"{") else {}


async def test_overview_caps_the_list_most_recent_first(h):
    for i in range(dashboard.MAX_CAS + 5):
        await h.call(f"ca-{i:03d}", "default", "incr")
    ov = overview(fake_bridge(h.runtime))
    assert ov["cas_total"] == ov["cas_matched"] == dashboard.MAX_CAS + 5
    assert len(ov["cas"]) == dashboard.MAX_CAS
    assert ov["cas"][0]["name"] == f"ca-{dashboard.MAX_CAS + 4:03d}"
    assert [c["last_active"] for c in ov["cas"]] == sorted((c["last_active"] for c in ov["cas"]), reverse=True)
    assert ov["broker"] == {"connected": False, "host": "127.0.0.1", "port": 1883, "tls": False, "embedded": True}
    assert "secret" not in json.dumps(ov)
    filtered = overview(fake_bridge(h.runtime), "  CA-00 ")
    assert filtered["query"] == "CA-00"
    assert sorted(c["name"] for c in filtered["cas"]) == [f"ca-{i:03d}" for i in range(10)]
    assert len(overview(fake_bridge(h.runtime), "x" * 1000)["query"]) == dashboard.MAX_QUERY


def test_the_store_url_never_shows_a_password():
    facts = dashboard._store_facts(fake_bridge(None, db="postgresql://ops:hunter2@db.example:5432/cas"))
    assert facts["kind"] == "postgresql"
    assert "hunter2" not in facts["where"] and "db.example" in facts["where"]


async def test_ca_detail_caps_pending_notifications(h):
    await h.call("busy", "default", "spam", "deaf", dashboard.MAX_PENDING + 50, 10, True)
    detail = ca_detail(fake_bridge(h.runtime), h.runtime.actors["busy"])
    assert detail["pending_total"] == dashboard.MAX_PENDING + 50
    assert len(detail["pending"]) == dashboard.MAX_PENDING
    assert detail["pending"][0] == {"session": "deaf", "seq": 1, "args": [0, "x" * 10]}


async def test_a_huge_state_is_not_decoded(h, monkeypatch):
    await h.call("big", "default", "record", "y" * 500)
    monkeypatch.setattr(dashboard, "MAX_STATE_BYTES", 100)
    detail = ca_detail(fake_bridge(h.runtime), h.runtime.actors["big"])
    assert detail["state_truncated"] is True
    assert "too large" in detail["state"]["$truncated"]


def test_clip_makes_values_json_safe():
    value, truncated = clip({"b": b"\x00\xff", "f": 1.5, "nan": math.nan, "inf": -math.inf, 1: (1, 2), "s": {3}})
    assert value == {"b": {"$bytes": "00ff"}, "f": 1.5, "nan": "nan", "inf": "-inf", "1": [1, 2], "s": "{3}"}
    assert truncated is False
    json.dumps(value, allow_nan=False)


def test_clip_bounds_strings_bytes_collections_and_depth():
    text, cut = clip("x" * 5000, text=100)
    assert cut and text.startswith("x" * 100) and "4900 more characters" in text
    data, cut = clip(b"\x01" * 1000, text=10)
    assert cut and data == {"$bytes": "01" * 5, "$length": 1000}
    items, cut = clip(list(range(1000)), items=10)
    assert cut and items[:10] == list(range(10)) and items[10] == "… 990 more items"
    mapping, cut = clip({str(i): i for i in range(50)}, items=5)
    assert cut and len(mapping) == 6 and mapping["…"] == "45 more entries"
    deep: list = []
    node = deep
    for _ in range(100):
        node.append([])
        node = node[0]
    nested, cut = clip(deep, depth=3)
    assert cut and nested == [[[["…"]]]]


def test_clip_has_a_total_budget():
    """A wide and deep value costs at most ``nodes`` visits, whatever the per-level limits."""
    wide = [[list(range(100)) for _ in range(100)] for _ in range(100)]
    value, cut = clip(wide, nodes=500)
    assert cut
    assert len(json.dumps(value)) < 20_000


async def test_the_dashboard_serves_samples_and_stops(h, monkeypatch):
    monkeypatch.setattr(dashboard, "SAMPLE_INTERVAL", 0.01)
    await h.call("one", "default", "incr")
    metrics = h.runtime.metrics
    async with Dashboard(fake_bridge(h.runtime), "127.0.0.1", 0, token="t0k") as dash:
        port = dash.server.port
        assert port > 0
        assert (await get(port, "/api/overview"))[0] == 401
        status, ov = await get(port, "/api/overview", token="t0k")
        assert status == 200 and [c["name"] for c in ov["cas"]] == ["one"]
        status, ca = await get(port, "/api/ca/one", token="t0k")
        assert status == 200 and ca["state"]["n"] == 1
        await asyncio.sleep(0.1)
        assert len(metrics.history) >= 3  # sampled while it runs
        sampler = dash._sampler
    assert sampler is not None and sampler.cancelled()
    seen = len(metrics.history)
    await asyncio.sleep(0.05)
    assert len(metrics.history) == seen  # and not after
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_extra_routes_share_the_server_and_the_token(h):
    from bridge.http import Response

    extra = {"/metrics": lambda _req: Response(b"# metrics\n")}
    async with Dashboard(fake_bridge(h.runtime), "127.0.0.1", 0, token="t0k", extra=extra) as dash:
        assert (await get(dash.server.port, "/metrics"))[0] == 401
        assert (await get(dash.server.port, "/metrics", token="t0k"))[0] == 200
