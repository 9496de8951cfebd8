"""The short chaos run, every time: devices (CPython and MicroPython), bridge and broker killed at random."""

from __future__ import annotations

import pytest

from tests.chaos.run_chaos import run


@pytest.mark.parametrize("broker,seed", [("mosquitto", 11), ("amqtt", 12)])
def test_short_chaos_run_has_no_anomalies(broker, seed, tmp_path):
    report = run(seed=seed, duration=15, devices=4, items=300, broker=broker, workdir=tmp_path, first_bridge_kills=3)
    print(report.line())
    assert report.anomalies == []
    assert report.purchases == 4 * 300 and report.notifications == 4 * 300
    assert report.device_self_crashes >= 50
    assert report.bridge_kills + report.bridge_fault_points >= 3
