"""Sustained load with a reconnect storm, short enough for every CI run (the soak runs on demand)."""

from __future__ import annotations

import logging

import pytest

from tests.load.run_load import run


@pytest.mark.parametrize("broker,devices,cas,restart", [("mosquitto", 100, 1000, True), ("amqtt", 50, 500, False)])
def test_load_loses_and_repeats_nothing(broker, devices, cas, restart, tmp_path):
    logging.getLogger("bridge.mqtt").setLevel(logging.ERROR)
    res = run(devices=devices, cas=cas, duration=12, broker=broker, seed=5, restart_broker=restart, workdir=tmp_path)
    print(res.line())
    assert res.anomalies == []
    assert res.calls > devices * 5 and res.notifications == res.calls
    assert res.broker_restarts == (1 if restart else 0)
