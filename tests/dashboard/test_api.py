"""The dashboard's JSON API and routes, against a real bridge process (no browser)."""

from __future__ import annotations

import re

from tests.conftest import free_port
from tests.dashboard.conftest import XSS, make_auth_dir, request, wait_for


def test_overview_lists_the_cas_of_the_workload(workload):
    ov = workload.get("/api/overview").json()
    assert ov["app"] == "Counter"
    assert ov["store"] == {"kind": "sqlite", "where": str(workload.bridge.db)}
    assert ov["broker"]["connected"] is True and ov["broker"]["embedded"] is True
    assert ov["uptime"] > 0
    assert ov["cas_total"] == ov["cas_matched"] == len(workload.calls) == 5
    names = [ca["name"] for ca in ov["cas"]]
    # most recently active first: the workload's last calls went to these, in this order (newest first)
    assert names == ["lamp-kitchen", "thermo-3", "door-front", "thermo-2", "thermo-1"]
    rows = {ca["name"]: ca for ca in ov["cas"]}
    assert rows["thermo-1"]["sessions"] == 2  # default, and "watch" which record_notify fills
    assert rows["thermo-1"]["queued"] == 2
    assert all(ca["mailbox"] == 0 and ca["last_active"] > 0 for ca in ov["cas"])
    assert rows["thermo-2"]["queued"] == 0 and rows["thermo-2"]["online"] == 0


def test_overview_counts_match_the_workload(workload):
    ov = wait_for(lambda: (o := workload.get("/api/overview").json())["gauges"]["online"] == 1 and o,
                  what="thermo-1's presence")
    assert ov["cas"][-1]["online"] == 1  # thermo-1: its device announced itself and is still connected
    assert ov["totals"]["calls"] == workload.total_calls == 20
    assert ov["totals"]["errors"] == workload.errors == 1
    assert ov["totals"]["notes_published"] == 2
    ov = wait_for(lambda: (o := workload.get("/api/overview").json())["gauges"]["unapplied"] == 0 and o,
                  what="the SQLite store's redo log applied (every 50 ms)")
    assert ov["gauges"] == {"cas": 5, "sessions": 6, "online": 1, "queued": 2, "queue_max": 2, "mailbox": 0,
                            "mailbox_max": 0, "busy": 0, "unapplied": 0}
    methods = {m["method"]: m for m in ov["methods"]}
    assert methods["incr"]["calls"] == 10 and methods["incr"]["errors"] == 0
    assert methods["fail_after_write"] == {**methods["fail_after_write"], "calls": 1, "errors": 1}
    assert methods["incr"]["p50"] is not None
    [error] = ov["errors"]
    assert (error["ca"], error["method"], error["kind"], error["name"]) == (
        "lamp-kitchen", "fail_after_write", "app", "AppError")


def test_overview_rates_feed_the_charts(workload):
    """The dashboard samples once a second: the calls show up as a rate, the failed one as an error rate."""
    ov = wait_for(lambda: (o := workload.get("/api/overview").json()) and len(o["rates"]) >= 3 and o,
                  what="rate samples")
    assert all(len(point) == 3 for point in ov["rates"])
    times = [t for t, _, _ in ov["rates"]]
    assert times == sorted(times) and times[-1] <= ov["now"]
    assert max(calls for _, calls, _ in ov["rates"]) > 0
    assert max(errors for _, _, errors in ov["rates"]) > 0


def test_overview_filters_by_name(workload):
    ov = workload.get("/api/overview?q=THERMO").json()
    assert ov["query"] == "THERMO"
    assert sorted(ca["name"] for ca in ov["cas"]) == ["thermo-1", "thermo-2", "thermo-3"]
    assert (ov["cas_matched"], ov["cas_total"]) == (3, 5)
    assert workload.get("/api/overview?q=nothing-like-this").json()["cas"] == []


def test_ca_detail_shows_state_sessions_pending_and_recent_calls(workload):
    ca = workload.get("/api/ca/thermo-1").json()
    assert ca["name"] == "thermo-1"
    assert ca["state"] == {"seen": {"a": 1, "b": 1}, "resumes": 0, "n": 3}
    assert ca["state_truncated"] is False and ca["state_bytes"] > 0
    sessions = {s["id"]: s for s in ca["sessions"]}
    assert sessions["default"]["online"] is True
    assert sessions["watch"] == {
        "id": "watch", "online": False, "queued": 2, "first_seq": 1, "next_seq": 3, "limit": 0, "pinned": True,
        "has_nonce": False, "has_memento": False, "memento": None, "codec": "cbor"}
    assert ca["pending_total"] == 2
    assert ca["pending"] == [{"session": "watch", "seq": 1, "args": ["a"]},
                             {"session": "watch", "seq": 2, "args": ["b"]}]
    assert [c["method"] for c in ca["recent"]] == ["record_notify", "record_notify", "incr", "incr", "incr"]
    assert {c["outcome"] for c in ca["recent"]} == {"ok"}
    assert all(c["session"] == "default" and c["seconds"] >= 0 and c["id"] for c in ca["recent"])
    assert ca["errors"] == []


def test_ca_detail_of_a_failed_call(workload):
    ca = workload.get("/api/ca/lamp-kitchen").json()
    assert ca["state"] == {"seen": {}, "resumes": 0, "n": 1}  # the failed call's write was rolled back
    assert [(c["method"], c["outcome"]) for c in ca["recent"]] == [("fail_after_write", "app"), ("incr", "ok")]
    assert [(e["method"], e["name"]) for e in ca["errors"]] == [("fail_after_write", "AppError")]


def test_ca_detail_keeps_device_data_as_data(workload):
    assert workload.get("/api/ca/thermo-2").json()["state"]["seen"] == {XSS: 1}


def test_unknown_paths_and_cas_are_404(workload):
    resp = workload.get("/api/ca/no-such-ca")
    assert resp.status == 404
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"] == "not_found"
    for path in ("/api/ca/", "/api/ca/thermo-1/more", "/api/nothing", "/favicon.ico", "/index.html"):
        assert workload.get(path).status == 404, path


def test_the_dashboard_is_read_only(workload):
    for path in ("/", "/api/overview", "/api/ca/thermo-1"):
        for method in ("POST", "PUT", "DELETE"):
            resp = request(workload.http_port, path, token=workload.token, method=method)
            assert resp.status == 405, (method, path)
            assert resp.headers["allow"] == "GET, HEAD"
    head = request(workload.http_port, "/api/overview", token=workload.token, method="HEAD")
    assert head.status == 200 and head.body == b""


def test_the_api_needs_the_token(workload):
    for path in ("/api/overview", "/api/ca/thermo-1"):
        resp = workload.get(path, token=None)
        assert resp.status == 401, path
        assert resp.headers["www-authenticate"] == "Bearer"
        assert b"thermo" not in resp.body
        assert workload.get(path, token="wrong").status == 401
        assert workload.get(path).status == 200  # Authorization: Bearer
        assert workload.get(f"{path}?token={workload.token}", token=None).status == 200


def test_the_page_is_public_static_and_locked_down(workload):
    """The page holds no data (it fetches the API with the token), so it loads without one and can ask for it."""
    resp = workload.get("/", token=None)
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    csp = resp.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self' 'unsafe-inline'" in csp
    assert resp.headers["x-frame-options"] == "DENY"
    assert resp.headers["referrer-policy"] == "no-referrer"
    page = resp.body.decode()
    assert workload.token not in page and "thermo" not in page
    assert not re.search(r"""(src|href|action)\s*=\s*["']?(https?:)?//""", page), "no external resources"
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "document.write" not in page


def test_auth_dir_makes_the_token_mandatory(bridge_factory, tmp_path):
    auth = make_auth_dir(tmp_path / "devices.auth")
    port = free_port()
    bridge = bridge_factory("tests/apps.py:Counter", extra=[
        "--auth", str(auth), "--http", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{port}"])
    bridge.start()
    token = (auth / "dashboard.token").read_text().strip()
    assert len(token) >= 20
    for path in ("/api/overview", "/metrics"):
        assert request(port, path).status == 401, path
        assert request(port, path, token=token).status == 200, path
    assert request(port, "/").status == 200


def test_metrics_share_the_dashboard_port(bridge_factory):
    port = free_port()
    bridge = bridge_factory("tests/apps.py:Counter", extra=[
        "--http", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{port}"])
    bridge.start()
    metrics = request(port, "/metrics")  # no token configured, no --auth: open
    assert metrics.status == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    assert b"ca_bridge_cas_loaded" in metrics.body
    assert request(port, "/api/overview").json()["cas_total"] == 0
