"""The device record in the stores (SQLite schema 4 and its migration, memory, merge), in `ca-bridge inspect` and
on the dashboard, and the device options on the command line (issue 18)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys

import pytest

from bridge.cli import _parser
from bridge.dashboard import ca_detail
from bridge.device import DeviceLimits, DeviceRecord
from bridge.store import Change, MemoryStore, merge
from bridge.store.sqlite import SCHEMA_VERSION, SQLiteStore
from bridge.testing import Harness
from tests.bridge.test_device_layer import CMDS, Greenhouse
from tests.conftest import ROOT
from tests.dashboard.test_units import fake_bridge


def record(**kw) -> bytes:
    return DeviceRecord(**kw).encode()


def test_merge_keeps_the_last_device_record():
    merged = merge([Change("a", device=record(tv=1)), Change("a", b"\xa0"), Change("a", device=record(tv=2)),
                    Change("b", b"\xa0")])
    assert merged["a"].device == record(tv=2) and merged["b"].device is None
    assert not Change("a", device=b"x").empty()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_the_store_keeps_the_device_record_and_only_cas_with_one_have_it(kind, tmp_path):
    store = MemoryStore() if kind == "memory" else SQLiteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.commit([Change("a", b"\xa0", device=record(tv=1)), Change("b", b"\xa0")])
        await store.commit([Change("a", None, device=record(tv=2))])
        await store.commit([Change("a", b"\xa1")])  # no device change: the record stays
        a, b = await store.load("a"), await store.load("b")
        assert a.device == record(tv=2) and a.state == b"\xa1" and b.device is None
        assert {r.name: r.device for r in await store.load_all()} == {"a": record(tv=2), "b": None}
    finally:
        await store.close()
    if kind == "sqlite":
        db = sqlite3.connect(tmp_path / "s.db")
        assert db.execute("SELECT ca FROM device").fetchall() == [("a",)]
        db.close()


async def test_a_schema_3_store_is_upgraded_to_4_keeping_everything(tmp_path):
    path = tmp_path / "old.db"
    s = SQLiteStore(path)
    await s.open()
    await s.commit([Change("a", b"\xa0", dedup=[(1, "s", "r1", b"p")])])
    await s.close()
    db = sqlite3.connect(path)  # as a bridge from before the device layer left it: schema 3, no device table
    db.executescript("DROP TABLE device; PRAGMA user_version = 3;")
    db.close()
    ro = SQLiteStore(path, read_only=True)  # inspect reads an old store as it is
    await ro.open()
    assert (await ro.load("a")).device is None
    await ro.close()
    s = SQLiteStore(path)
    await s.open()
    try:
        assert (await s.load("a")).dedup == [(1, "s", "r1", b"p")]
        await s.commit([Change("a", None, device=record(boot=1))])
        assert (await s.load("a")).device == record(boot=1)
    finally:
        await s.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()


async def _greenhouse(db):
    async with Harness(Greenhouse, db=db) as h:
        await h.device_start("gh", CMDS)
        await h.device_sync("gh", {"temp": 21})
        await h.call("gh", "default", "put", "target", 19)
        index = await h.call("gh", "default", "send", [[0, "beep", []], [100, "heater", [True]]])
        await h.call("gh", "default", "apply", "beep", [])
        first = h.device("gh").bundles[0].index
        await h.device_sync("gh", br=[(first, True)])
        detail = ca_detail(fake_bridge(h.runtime), h.runtime.actors["gh"])
    return index, first, detail


async def test_the_dashboard_shows_both_maps_versions_boot_pending_bundle_and_results(tmp_path):
    _, first, detail = await _greenhouse(None)
    dev = detail["device"]
    assert dev["boot"] == 1 and dev["commands"] == CMDS
    assert (dev["to_cloud"], dev["tv"], dev["from_cloud"], dev["fv"]) == ({"temp": 21}, 1, {"target": 19}, 1)
    assert dev["pending"]["index"] == first + 1 and dev["pending"]["mode"] == "now"
    assert dev["results"] == [[first, True]] and dev["unfinished"] == 1
    json.dumps(detail)  # what /api/ca/<name> serves
    page = (ROOT / "bridge" / "dashboard.html").read_text()
    assert "renderDevice(ca.device)" in page and 'id="detail-device"' in page
    async with Harness(Greenhouse) as h:
        await h.call("plain", "default", "plain")
        assert ca_detail(fake_bridge(h.runtime), h.runtime.actors["plain"])["device"] is None


async def test_inspect_shows_the_device(tmp_path):
    db = tmp_path / "i.db"
    _, first, _ = await _greenhouse(db)

    def inspect(*args):
        done = subprocess.run([sys.executable, "-m", "bridge", "inspect", "--db", str(db), "gh", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    dev = json.loads(inspect("--json"))["device"]
    assert (dev["boot"], dev["tv"], dev["fv"], dev["to_cloud"], dev["from_cloud"]) == (1, 1, 1, {"temp": 21},
                                                                                      {"target": 19})
    assert dev["pending"]["index"] == first + 1 and dev["results"] == [[first, True]]
    text = inspect()
    assert "device: boot 1" in text and 'to_cloud (version 1): {"temp": 21}' in text
    assert 'from_cloud (version 1): {"target": 19}' in text
    assert f"pending bundle {first + 1} (now" in text and f"recent results: {first}: true" in text


def test_the_device_options_reach_the_settings():
    args = _parser().parse_args(["run", "x.py:A", "--bundle-margin", "500", "--device-map-max", "4096",
                                 "--max-bundles", "3"])
    assert DeviceLimits(args.bundle_margin, args.device_map_max, args.max_bundles) == DeviceLimits(500, 4096, 3)
    defaults = _parser().parse_args(["run", "x.py:A"])
    assert DeviceLimits(defaults.bundle_margin, defaults.device_map_max, defaults.max_bundles) == DeviceLimits()
    for bad in (["--max-bundles", "0"], ["--device-map-max", "10"], ["--bundle-margin", "-1"]):
        done = subprocess.run([sys.executable, "-m", "bridge", "run", "x.py:A", *bad], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "Traceback" not in done.stderr and bad[0] in done.stderr
