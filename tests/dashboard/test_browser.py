"""The dashboard page in a real headless Chromium: Debian's package, driven by Playwright (no browser download).

Skipped when /usr/bin/chromium or playwright is missing on a developer machine; a failure on CI (tests/skips.py),
where .ci/run installs both. The full-page screenshot is kept in tests/artifacts/ and in the test's tmp dir.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.dashboard.conftest import XSS
from tests.skips import missing

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "tests" / "artifacts"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        missing("Debian's chromium is not installed", "apt-get install chromium")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed", "pip install -e '.[test]'")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900}, color_scheme="light")
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.problems = problems
    try:
        yield page
    finally:
        context.close()


def test_dashboard_in_chromium(workload, page, tmp_path):
    page.goto(f"http://127.0.0.1:{workload.http_port}/?token={workload.token}")
    page.wait_for_function("n => document.querySelectorAll('#cas tbody tr[data-name]').length === n",
                           arg=len(workload.calls))
    names = page.eval_on_selector_all("#cas tbody tr[data-name]", "rows => rows.map(r => r.dataset.name)")
    assert sorted(names) == sorted(workload.calls)
    assert "token" not in page.url  # taken out of the address bar (kept in sessionStorage)
    assert page.text_content("#app") == "Counter"
    assert "broker connected" in page.text_content("#status-text")

    # the rate chart has drawn: a polyline with points, and the peak is not zero
    page.wait_for_function("""() => {
        const line = document.querySelector('#chart-calls polyline');
        return line !== null && line.getAttribute('points').trim().split(' ').length >= 2;
    }""")
    assert page.text_content("#calls-peak") != "peak 0/s"

    # one CA's detail: its state, sessions and recent calls, refreshed by the poll loop
    page.get_by_role("link", name="thermo-1", exact=True).click()
    page.wait_for_function("() => document.getElementById('detail-state').textContent.includes('\"n\": 3')")
    assert page.text_content("#detail-name") == "thermo-1"
    assert page.url.endswith("#ca=thermo-1")
    recent = page.text_content("#detail-recent tbody")
    assert recent.count("incr") == 3 and recent.count("record_notify") == 2
    sessions = page.text_content("#detail-sessions tbody")
    assert "online" in sessions and "watch" in sessions and "pinned" in sessions
    pending = page.text_content("#detail-pending tbody")
    assert '["a"]' in pending and '["b"]' in pending
    page.wait_for_selector("#cas tbody tr.selected[data-name='thermo-1']")
    page.wait_for_timeout(1200)  # let one more refresh happen before the picture

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, tmp_path / "dashboard.png")
    assert shot.stat().st_size > 10_000
    assert page.problems == []


def test_filter_and_device_data_shown_as_text(workload, page):
    page.goto(f"http://127.0.0.1:{workload.http_port}/?token={workload.token}#ca=thermo-2")
    page.wait_for_function("() => document.getElementById('detail-state').textContent.includes('onerror')")
    assert json.dumps(XSS) in page.text_content("#detail-state")  # shown as JSON text, not parsed as HTML
    assert page.evaluate("() => window.__xss") is None
    assert page.query_selector("#detail img") is None

    page.fill("#filter", "thermo")
    page.wait_for_function("() => document.querySelectorAll('#cas tbody tr[data-name]').length === 3")
    assert "3 of 5 loaded" in page.text_content("#cas-count")
    page.fill("#filter", "")
    page.wait_for_function("n => document.querySelectorAll('#cas tbody tr[data-name]').length === n",
                           arg=len(workload.calls))
    assert page.problems == []


def test_a_missing_token_is_asked_for(workload, page):
    page.goto(f"http://127.0.0.1:{workload.http_port}/")
    page.wait_for_selector("#auth:not([hidden])")
    assert "401" in page.text_content("#auth-text")
    assert page.text_content("#status-text") == "unauthorized"
    page.fill("#auth-token", workload.token)
    page.click("#auth button")
    page.wait_for_selector("#auth", state="hidden")
    page.wait_for_selector("#cas tbody tr[data-name='thermo-1']")
    # the browser logs the refused API call itself; nothing else may fail
    assert all("401" in problem for problem in page.problems)
