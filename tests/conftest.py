"""Shared fixtures: free ports, real mosquitto and bridge processes, and a paho device for integration tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import skips
from tests.procs import PYTHON, ROOT, BridgeProcess, Mosquitto, free_port, stop, stored_states, wait_port  # noqa: F401
# (the tests import these from here)


def pytest_configure(config: pytest.Config) -> None:
    skips.IN_PYTEST = True  # a missing dependency skips (or fails under CI) instead of exiting


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Always say how many tests were skipped (pytest's own line omits 0; -ra lists the reasons after it), and write
    the count to $CA_BRIDGE_SKIPPED_FILE when set (.ci/run checks it is 0)."""
    skipped = len(terminalreporter.stats.get("skipped", []))
    terminalreporter.write_line(f"skipped: {skipped}" + (" (why: the SKIPPED lines below)" if skipped else ""))
    out = os.environ.get("CA_BRIDGE_SKIPPED_FILE")
    if out:
        Path(out).write_text(f"{skipped}\n")


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` until it is true; TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting until {what}")
        time.sleep(0.02)


def committed_state(db: Path, ca: str) -> dict[str, Any]:
    """A CA's state as committed in a bridge's SQLite file, read beside the bridge ({} before its first commit)."""
    from bridge import codec

    state = stored_states(db, ca).get(ca)
    return codec.loads(state) if state else {}


@pytest.fixture
def mosquitto(tmp_path):
    m = Mosquitto(tmp_path)
    m.start()
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def bridge_factory(tmp_path):
    made: list[BridgeProcess] = []

    def make(app: str, **kwargs) -> BridgeProcess:
        b = BridgeProcess(app, tmp_path / f"bridge{len(made)}.db", **kwargs)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            b.kill()



class Live:
    def __init__(self, bridge, broker: Mosquitto | None) -> None:
        self.bridge = bridge
        self.broker = broker

    @property
    def port(self) -> int:
        return self.broker.port if self.broker else self.bridge.port


@pytest.fixture(params=["amqtt", "mosquitto"])
def live_factory(request, bridge_factory, tmp_path):
    brokers: list[Mosquitto] = []

    def make(app: str = "tests/apps.py:Counter", extra: list[str] | None = None) -> Live:
        if request.param == "mosquitto":
            broker = Mosquitto(tmp_path)
            broker.start()
            brokers.append(broker)
            bridge = bridge_factory(app, broker_port=broker.port, extra=extra)
        else:
            broker = None
            bridge = bridge_factory(app, extra=extra)
        bridge.start()
        return Live(bridge, broker)

    make.kind = request.param
    try:
        yield make
    finally:
        for b in brokers:
            b.stop()


@pytest.fixture
def live(live_factory):
    return live_factory()
