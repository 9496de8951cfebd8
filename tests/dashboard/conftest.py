"""A bridge with the dashboard on, a scripted workload run against it once, and a small HTTP client.

The workload's numbers are computed here, so the API and browser tests compare what the dashboard shows with
what was done. Tests only read from the bridge: they may run in any order.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BridgeProcess, free_port, wait_port
from tests.device import CallFailed, Device

APP = "tests/apps.py:Counter"
TOKEN = "dash-token-7f3a"
XSS = '<img src=x onerror="window.__xss=1">'


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(port: int, path: str, *, token: str | None = None, method: str = "GET") -> Response:
    """One HTTP request to the dashboard (``token``: sent as a bearer header)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def wait_for(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.1)


@dataclass
class Workload:
    """What the scripted workload did, and where the dashboard is."""

    bridge: BridgeProcess
    http_port: int
    token: str
    calls: dict[str, list[str]] = field(default_factory=dict)  # CA -> methods called, in order
    errors: int = 0
    online: dict[str, int] = field(default_factory=dict)  # CA -> sessions kept online
    devices: list[Device] = field(default_factory=list)

    @property
    def total_calls(self) -> int:
        return sum(len(m) for m in self.calls.values())

    def get(self, path: str, token: str | None = "default") -> Response:
        return request(self.http_port, path, token=self.token if token == "default" else token)


def _run_workload(w: Workload) -> None:
    port = w.bridge.port

    def call(dev: Device, method: str, *args: Any) -> None:
        w.calls.setdefault(dev.ca, []).append(method)
        try:
            dev.call(method, *args)
        except CallFailed:
            w.errors += 1

    thermo1 = Device(port, "thermo-1")
    w.devices.append(thermo1)
    others = {name: Device(port, name) for name in ("thermo-2", "thermo-3", "door-front", "lamp-kitchen")}
    w.devices.extend(others.values())
    for _ in range(3):
        call(thermo1, "incr")
    # presence for a CA that is not loaded yet is dropped, so the device announces itself after its first call
    thermo1.publish(thermo1.encode({"t": "presence", "session": "default", "online": True}))
    w.online["thermo-1"] = 1
    call(thermo1, "record_notify", "a")
    call(thermo1, "record_notify", "b")
    call(others["thermo-2"], "record", XSS)  # device data that looks like HTML: must be shown as text
    time.sleep(1.2)  # a second burst, so the rate chart has a shape
    for i in range(6):
        call(others["door-front"], "incr")
        call(others["thermo-3"], "record", f"t{i}")
    time.sleep(1.2)
    call(others["lamp-kitchen"], "incr")
    call(others["lamp-kitchen"], "fail_after_write", "app")  # the last call: lamp-kitchen is the most recent


@pytest.fixture(scope="package")
def workload(tmp_path_factory):
    """One bridge for every dashboard test (``--http`` with ``--http-token``), after the scripted workload."""
    tmp = tmp_path_factory.mktemp("dashboard")
    http_port = free_port()
    bridge = BridgeProcess(APP, tmp / "bridge.db", extra=["--http", f"127.0.0.1:{http_port}", "--http-token", TOKEN])
    w = Workload(bridge, http_port, TOKEN)
    bridge.start()
    try:
        wait_port(http_port)
        _run_workload(w)
        wait_for(lambda: w.get("/api/overview").json()["totals"]["calls"] == w.total_calls, what="the calls")
        yield w
    finally:
        for dev in w.devices:
            dev.close()
        bridge.stop()


def make_auth_dir(path: Path) -> Path:
    """An auth directory made with the CLI, as an operator would."""
    from tests.security.conftest import add_device

    add_device(path, "alice")
    return path
