"""Shared fixtures: free ports, real mosquitto and bridge processes, and a paho device for integration tests."""

from __future__ import annotations

import pytest

from tests.procs import PYTHON, ROOT, BridgeProcess, Mosquitto, free_port, stop, wait_port  # noqa: F401
# (the tests import these from here)


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
